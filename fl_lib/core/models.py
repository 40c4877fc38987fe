"""The networks the experiments train: SqueezeNet 1.0/1.1, McMahan's MNIST CNN, 2NN and character LSTM, a small CIFAR CNN."""
import torch.nn as nn

from .config import MODELS
from .errors import ConfigError



def _squeezenet(name, num_classes, in_channels):
    """torchvision's SqueezeNet, untrained; the first conv is rebuilt when the input is not RGB."""
    import torchvision  # only SqueezeNet needs it; importing it costs every process ~1.5 s

    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    if in_channels != 3:
        old = model.features[0]
        new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding)
        nn.init.kaiming_uniform_(new.weight)  # same init torchvision gives its non-final convs
        nn.init.zeros_(new.bias)
        model.features[0] = new
    return model


def _mnist_cnn(num_classes, in_channels, image_size):
    """McMahan et al. (2017) CNN: two 5x5 conv + 2x2 max pool blocks (32, 64 channels), FC 512, softmax."""
    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * side * side, 512), nn.ReLU(), nn.Linear(512, num_classes))


def _mnist_2nn(num_classes, in_channels, image_size):
    """McMahan et al. (2017) 2NN: an MLP with two hidden layers of 200 ReLU units."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 200), nn.ReLU(),
        nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, num_classes))


def _cifar_cnn(num_classes, in_channels, image_size):
    """Three 3x3 conv + max pool blocks (32, 64, 64), a 64-unit head; no BatchNorm, so FedAvg stays plain."""
    side = image_size // 8
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * side * side, 64), nn.ReLU(), nn.Linear(64, num_classes))


class CharLSTM(nn.Module):
    """McMahan et al. (2017) Shakespeare model: 8-dim character embedding, 2 LSTM layers of 256, softmax.

    Takes (B, L) character ids and returns logits (B, V, L), the layout F.cross_entropy wants for
    (B, L) targets. With our V = 76 it has 818,860 parameters; the paper states 866,578, which
    (with PyTorch's two bias vectors per gate) would be V = 256.07: a vocabulary of about 256 symbols.
    """

    def __init__(self, vocab_size, embed_dim=8, hidden=256, layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab_size)

    def step(self, x, state=None):
        """Logits (B, L, V) and the LSTM state after x: for sampling one character at a time."""
        h, state = self.lstm(self.embed(x), state)
        return self.out(h), state

    def forward(self, x):
        return self.step(x)[0].transpose(1, 2)


def build_model(name, num_classes=10, in_channels=3, image_size=32):
    """A freshly initialized model; deterministic given torch's global seed."""
    if name in ("squeezenet1_0", "squeezenet1_1"):
        return _squeezenet(name, num_classes, in_channels)
    if name == "char_lstm":  # num_classes is the vocabulary size
        return CharLSTM(num_classes)
    builders = {"cnn": _mnist_cnn, "2nn": _mnist_2nn, "cifar_cnn": _cifar_cnn}
    if name not in builders:
        raise ConfigError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    return builders[name](num_classes, in_channels, image_size)


def count_parameters(model):
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
