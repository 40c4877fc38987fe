"""Leakage attacks kept in the results cache: a grid of attacks is computed once, then read back.

An attack run to convergence takes minutes, and lesson 07 runs a dozen, so like a federated run
a grid of them (`leakage.run_grid`) is stored under a key of everything that shapes its result:
the data (an .npz file by its content, not its path), the grid's settings and `leakage.defaults()`,
the attack's own constants and version, so a changed attack never reads back old results. Its
folder is <root>/leakage/<key> in the runs' cache, locked while it is computed (two kernels asking
for it take turns), and it counts as stored only once complete: the files are written aside and
moved in with reconstructions.npz last, so an interrupted grid is computed again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..privacy import leakage
from ..runtime import results
from .widgets import attack_key, load_attacks

DONE = "reconstructions.npz"  # the file run_grid writes last; moved in last, it marks a grid as stored
FILES = ("leakage_rows.json", "leakage_histories.json")  # moved in before it


def data_id(dataset: str) -> str:
    """The data's name in a key: an .npz file's content digest (the same file anywhere), else the dataset's name."""
    path = Path(dataset)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else str(dataset)


def grid_key(dataset: str, batch_sizes, bit_widths, noises, model: str, steps: int, seed: int) -> str:
    """The hash that names a grid's folder: its data, its settings and the attack's constants."""
    settings = dict(data=data_id(dataset), batch_sizes=list(batch_sizes), bits=list(bit_widths), noises=list(noises),
                    model=model, steps=steps, seed=seed, attack=leakage.defaults())
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def attack_grid(dataset: str, batch_sizes, bit_widths, noises, *, model: str, steps: int, seed: int,
                data=None, root=None) -> Path:
    """The folder of `leakage.run_grid`'s outputs for these settings, computed only if not stored yet.

    `dataset` (a name or an .npz path) names the data; `data` is that dataset already loaded,
    if the caller has it. `steps` is each attack's cap, part of the key. The folder is
    <root>/leakage/<grid_key>, with root the runs' cache (results.RUNS_ROOT) if None.
    """
    key = grid_key(dataset, batch_sizes, bit_widths, noises, model, steps, seed)
    folder = Path(root if root is not None else results.RUNS_ROOT) / "leakage" / key
    if (folder / DONE).exists():
        return folder
    with results.run_lock(folder):
        if not (folder / DONE).exists():  # another process may have finished it while we waited
            aside = folder / "partial"
            shutil.rmtree(aside, ignore_errors=True)  # what an interrupted grid left
            leakage.run_grid(dataset if data is None else data, tuple(batch_sizes), tuple(bit_widths), tuple(noises),
                             model, steps, seed, out=aside)
            for name in [p.name for p in aside.iterdir() if p.name != DONE] + [DONE]:
                os.replace(aside / name, folder / name)
            aside.rmdir()
    return folder


@dataclass
class Attacks:
    """Stored attack grids merged: rows (a DataFrame, one per attack), images and loss histories by key."""

    rows: "pandas.DataFrame"  # noqa: F821
    images: dict  # widgets.attack_key(...) -> uint8 (B, C, H, W); "<model>_B<b>_original" -> the originals
    histories: dict  # the same keys -> each attack's loss per step

    @classmethod
    def load(cls, *folders) -> "Attacks":
        """The grids in `folders` (from `attack_grid`), merged."""
        rows, images = load_attacks(*folders)
        histories = {}
        for folder in folders:
            histories.update(json.loads((Path(folder) / "leakage_histories.json").read_text()))
        return cls(rows, images, histories)

    def stored(self, batch_size: int = 1, bits: int = 32, noise: float = 0.0):
        """(reconstruction (B, C, H, W) uint8, its row) of one setting, or (None, None) if it was not attacked."""
        r = self.rows
        hit = r[(r.batch_size == batch_size) & (r.bits == bits) & (r.noise == noise)] if len(r) else r
        key = attack_key(hit.model.iloc[0], batch_size, bits, noise) if len(hit) else None
        return (self.images[key], hit.iloc[0]) if key in self.images else (None, None)
