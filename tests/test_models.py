"""Models: pinned parameter counts, forward shapes, determinism, unknown names."""
import pytest
import torch

from fl_lib.core.errors import ConfigError
from fl_lib.core.config import MODELS
from fl_lib.core.models import build_model, count_parameters


@pytest.mark.parametrize("name, in_channels, image_size, expected", [
    ("squeezenet1_0", 3, 32, 740_554),
    ("squeezenet1_1", 3, 32, 727_626),
    ("cnn", 1, 28, 1_663_370),  # McMahan et al. (2017)
    ("2nn", 1, 28, 199_210),
])
def test_pinned_parameter_counts(name, in_channels, image_size, expected):
    assert count_parameters(build_model(name, 10, in_channels, image_size)) == expected


def test_sizes_follow_input_shape():
    # SqueezeNet 1.0's first conv is 96 x C x 7 x 7: two fewer input channels drop 2 * 96 * 49 weights.
    assert count_parameters(build_model("squeezenet1_0", in_channels=1)) == 740_554 - 2 * 96 * 49
    # The CNN's flatten size grows with the image: 64 x 8 x 8 inputs to the 512-unit layer at 32x32.
    cnn32 = (3 * 32 * 25 + 32) + (32 * 64 * 25 + 64) + (64 * 8 * 8 * 512 + 512) + (512 * 10 + 10)
    assert count_parameters(build_model("cnn", in_channels=3, image_size=32)) == cnn32
    assert count_parameters(build_model("cifar_cnn")) < 500_000


@pytest.mark.parametrize("name", [m for m in MODELS if m != "char_lstm"])  # image models; text: test_shakespeare
@pytest.mark.parametrize("in_channels, image_size", [(3, 32), (1, 28)])
def test_forward_shape(name, in_channels, image_size):
    model = build_model(name, num_classes=7, in_channels=in_channels, image_size=image_size)
    assert model(torch.randn(2, in_channels, image_size, image_size)).shape == (2, 7)


@pytest.mark.parametrize("name", MODELS)
def test_deterministic_under_global_seed(name):
    torch.manual_seed(0)
    a = build_model(name).state_dict()
    torch.manual_seed(0)
    b = build_model(name).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_name_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match="unknown model 'resnet'; allowed: squeezenet1_0, .*cifar_cnn"):
        build_model("resnet")
