"""Data: synthetic sets, .npz loading and its errors, batches, augmentation, offline download failure."""
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fl_lib.core.data import augment_batch, get_batch, load_dataset
from fl_lib.core.errors import DataError
from fl_lib.core.models import build_model

SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def cifar_like():
    return load_dataset("synthetic", seed=0)


def test_synthetic_shapes_dtypes_and_determinism(cifar_like):
    ds = cifar_like
    assert ds.x_train.shape == (2000, 3, 32, 32) and ds.x_test.shape == (500, 3, 32, 32)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert (ds.num_classes, ds.in_channels, ds.image_size, ds.augment) == (10, 3, 32, True)
    assert torch.equal(load_dataset("synthetic", seed=0).x_train, ds.x_train)
    assert not torch.equal(load_dataset("synthetic", seed=1).x_train, ds.x_train)
    mnist = load_dataset("synthetic-mnist")
    assert mnist.x_train.shape == (2000, 1, 28, 28) and not mnist.augment


def test_channel_stats_against_float_reduction(cifar_like):
    x = cifar_like.x_train.double() / 255
    assert torch.allclose(cifar_like.mean.double(), x.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(cifar_like.std.double(), x.std((0, 2, 3), unbiased=False), atol=1e-6)
    assert cifar_like.mean.dtype == cifar_like.std.dtype == torch.float32


def test_synthetic_is_learnable(one_thread):
    ds = load_dataset("synthetic-mnist", seed=0)
    torch.manual_seed(0)
    model = build_model("2nn", ds.num_classes, ds.in_channels, ds.image_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for idx in torch.randperm(len(ds.y_train)).split(20):
        x, y = get_batch(ds, idx)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    x, y = get_batch(ds, torch.arange(len(ds.y_test)), train=False)
    assert (model(x).argmax(1) == y).float().mean() > 0.6  # chance is 0.1


def write_npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8), y_train=np.arange(20) % 4,
                  x_test=rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8), y_test=np.arange(6) % 5)
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


@pytest.mark.parametrize("channel_dim", [False, True])
def test_npz_round_trip(tmp_path, channel_dim):
    shape = (10, 1, 5, 5) if channel_dim else (10, 5, 5)
    x = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    arrays = write_npz(tmp_path / "tiny.npz", x_train=x, x_test=x[:3], y_train=np.arange(10, dtype=np.int32),
                       y_test=np.array([2, 0, 1], np.uint8))
    ds = load_dataset(str(tmp_path / "tiny.npz"))
    assert ds.name == "tiny" and ds.x_train.shape == (10, 1, 5, 5) and ds.x_train.dtype == torch.uint8
    assert np.array_equal(ds.x_train.numpy().reshape(x.shape), x)
    assert np.array_equal(ds.y_test.numpy(), arrays["y_test"]) and ds.y_train.dtype == torch.int64
    assert ds.num_classes == 10 and not ds.augment


@pytest.mark.parametrize("overrides, message", [
    (dict(x_test=None, y_test=None), "missing keys x_test, y_test; an .npz dataset needs"),
    (dict(x_train=np.zeros((20, 3, 8, 8), np.float32)), "x_train has dtype float32; images must be uint8"),
    (dict(y_test=np.zeros(6)), "y_test has dtype float64; labels must be integers"),
    (dict(x_train=np.zeros((20, 64), np.uint8)), "expected (N, H, W) or (N, C, H, W) images and (N,) labels"),
    (dict(y_train=np.arange(19)), "x_train holds 20 images but y_train holds 19 labels"),
    (dict(y_test=np.array([0, 1, -1, 2, 3, 4])), "y_test holds labels from -1 to 4"),
    (dict(y_train=np.arange(20) * 100), "labels must lie in [0, 1000)"),
    (dict(x_test=np.zeros((0, 3, 8, 8), np.uint8), y_test=np.zeros(0, np.int64)), "the test split is empty"),
    (dict(x_train=np.zeros((20, 8, 8, 3), np.uint8)), "images must be channel-first (N, C, H, W)"),
    (dict(x_test=np.zeros((6, 1, 8, 8), np.uint8)), "train images are (3, 8, 8) but test images are (1, 8"),
])
def test_bad_npz_gets_its_own_message(tmp_path, overrides, message):
    path = tmp_path / "bad.npz"
    write_npz(path, **overrides)
    with pytest.raises(DataError) as info:
        load_dataset(str(path))
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_unreadable_or_absent_npz(tmp_path):
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(DataError, match="not a readable .npz archive"):
        load_dataset(str(tmp_path / "text.npz"))
    np.savez(tmp_path / "pickled.npz", x_train=np.array([object()]))
    with pytest.raises(DataError, match="not a readable .npz archive"):
        load_dataset(str(tmp_path / "pickled.npz"))
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "absent.npz"))
    with pytest.raises(DataError, match="unknown dataset 'imagenet'; allowed: cifar10, mnist"):
        load_dataset("imagenet")


def test_augment_matches_a_per_sample_loop():
    x = torch.randn(16, 3, 32, 32)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    # The oracle: the same random numbers, applied one image at a time.
    g = torch.Generator().manual_seed(0)
    dy, dx = torch.randint(0, 9, (2, 16), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(16):
        crop = padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop)
    assert out.shape == x.shape
    assert flip.any() and not flip.all() and ((dy != 4) | (dx != 4)).any()  # both actually happened
    assert not torch.equal(out, x)


def test_augment_is_deterministic_per_seed():
    x = torch.randn(8, 1, 12, 12)
    a, b, c = (augment_batch(x, torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_get_batch_normalizes(cifar_like):
    ds = cifar_like
    idx = torch.arange(len(ds.y_train))
    x, y = get_batch(ds, idx, augment=False)
    expected = (ds.x_train.float() / 255 - ds.mean.view(3, 1, 1)) / ds.std.view(3, 1, 1)
    assert x.dtype == torch.float32 and torch.allclose(x, expected) and torch.equal(y, ds.y_train)
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=1e-3)
    xt, yt = get_batch(ds, torch.tensor([3, 1]), train=False)  # test split, never augmented
    expected = (ds.x_test[[3, 1]] / 255 - ds.mean.view(3, 1, 1)) / ds.std.view(3, 1, 1)
    assert torch.equal(yt, ds.y_test[[3, 1]]) and torch.allclose(xt, expected)
    a = get_batch(ds, idx[:64], generator=torch.Generator().manual_seed(0))[0]  # ds.augment is True
    assert not torch.allclose(a, x[:64])
    assert torch.equal(a, get_batch(ds, idx[:64], generator=torch.Generator().manual_seed(0))[0])


def test_to_returns_a_copy(cifar_like):
    moved = cifar_like.to("cpu")
    assert moved is not cifar_like and torch.equal(moved.x_test, cifar_like.x_test)
    assert moved.num_classes == cifar_like.num_classes


@pytest.mark.parametrize("name, where", [("cifar10", "cifar-10-python.tar.gz"), ("mnist", "MNIST/raw/")])
def test_offline_download_fails_with_one_clear_message(tmp_path, monkeypatch, name, where):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no internet")
    # Cut the network under torchvision's real download code, so the test is fast and offline everywhere.
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    root = tmp_path / "not-yet"
    with pytest.raises(DataError) as info:
        load_dataset(name, root=str(root))
    message = str(info.value)
    assert root.is_dir() and "\n" not in message
    for part in (where, str(root), "MD5", "--dataset path/to/file.npz", "x_train", "y_test"):
        assert part in message


@pytest.mark.parametrize("file, shape, augment", [
    ("mnist_subset.npz", (17435, 1, 28, 28), False),
    ("cifar10_subset.npz", (5085, 3, 32, 32), True),
])
@pytest.mark.slow
def test_shared_real_subsets(file, shape, augment):
    path = SHARED_DATA / file
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    ds = load_dataset(str(path))
    assert ds.x_train.shape == shape and ds.num_classes == 10 and ds.augment == augment
    assert ds.x_test.shape[1:] == shape[1:] and len(ds.y_test) == len(ds.x_test)
