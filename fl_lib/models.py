"""The networks the experiments train: SqueezeNet 1.0/1.1, McMahan's MNIST CNN and 2NN, a small CIFAR CNN."""
import torch.nn as nn
import torchvision

from .config import MODELS
from .errors import ConfigError



def _squeezenet(name, num_classes, in_channels):
    """torchvision's SqueezeNet, untrained; the first conv is rebuilt when the input is not RGB."""
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


def build_model(name, num_classes=10, in_channels=3, image_size=32):
    """A freshly initialized model; deterministic given torch's global seed."""
    if name in ("squeezenet1_0", "squeezenet1_1"):
        return _squeezenet(name, num_classes, in_channels)
    builders = {"cnn": _mnist_cnn, "2nn": _mnist_2nn, "cifar_cnn": _cifar_cnn}
    if name not in builders:
        raise ConfigError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    return builders[name](num_classes, in_channels, image_size)


def count_parameters(model):
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
