"""A dataset's name read once: where the data comes from, and which part of it a run uses.

A name is a source, optionally followed by options after its last colon:

    cifar10, mnist, synthetic, synthetic-mnist, shakespeare, path/to/file.npz   the whole set
    shakespeare:N                 a teaching slice of N of the plays' roles (core/shakespeare.py)
    SOURCE:train=N,test=M         a class-balanced subset of an image set (core/data.py's `balanced_subset`)

Config's `dataset` rule, `data.load_dataset` and `shakespeare.parse_name` all read names here, so
a name one of them accepts the others accept too. The name is part of the config, so a subset's
runs are cached apart from the whole set's.
"""
from __future__ import annotations

from typing import NamedTuple

IMAGE_SETS = ("cifar10", "mnist", "synthetic", "synthetic-mnist")  # the sets a subset can be taken of
TEXT_SET = "shakespeare"
SUBSET_FORM = "SOURCE:train=N,test=M (whole numbers N, M >= 1; either part may be left out)"
SUBSET_EXAMPLE = "cifar10:train=5000,test=1000"


class DatasetName(NamedTuple):
    """A parsed dataset name; train and test are None where the whole split is used."""
    source: str  # one of IMAGE_SETS, TEXT_SET, or a path to an .npz file
    roles: int | None = None  # shakespeare:N
    train: int | None = None
    test: int | None = None

    @property
    def subset(self) -> str:
        """The subset's options in one fixed order ('train=5000,test=1000'); '' for the whole set."""
        return ",".join(f"{k}={n}" for k, n in (("train", self.train), ("test", self.test)) if n is not None)


def _whole_number(text: str) -> int | None:
    """text as an int >= 1 if it is written in ASCII digits (no sign, no spaces), else None."""
    return int(text) if text.isascii() and text.isdigit() and int(text) >= 1 else None


def _subset(name: str, source: str, options: str, error) -> DatasetName:
    sizes = {}
    for part in options.split(","):
        key, _, n = part.partition("=")
        if key not in ("train", "test") or key in sizes or _whole_number(n) is None:
            what = f"gives {key} twice" if key in sizes else f"has {part!r}, not a subset option"
            raise error(f"dataset={name!r} {what}; write {SUBSET_FORM}, e.g. {SUBSET_EXAMPLE}")
        sizes[key] = int(n)
    return DatasetName(source, train=sizes.get("train"), test=sizes.get("test"))


def parse(name: str, error=ValueError) -> DatasetName | None:
    """The parts of `name`; None if its source is not a dataset at all (the caller names what is allowed).

    A known source with malformed options raises `error` (ConfigError or DataError) in one line
    that names the value and the form it should take.
    """
    if name in IMAGE_SETS or name == TEXT_SET or name.endswith(".npz"):
        return DatasetName(name)
    source, colon, options = name.rpartition(":")  # the last colon: a path may hold one
    if not colon:
        return None
    if source == TEXT_SET:
        if _whole_number(options) is None:
            raise error(f"dataset={name!r}: the Shakespeare datasets are 'shakespeare' or 'shakespeare:N' "
                        f"(N >= 1 roles)")
        return DatasetName(source, roles=int(options))
    if source in IMAGE_SETS or source.endswith(".npz"):
        return _subset(name, source, options, error)
    return None
