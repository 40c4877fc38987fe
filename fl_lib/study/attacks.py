"""Leakage attacks kept in the results cache: a grid of attacks is computed once, then read back.

An attack run to convergence takes minutes, and lesson 07 runs a dozen, so like a federated run
a grid of them (`leakage.run_grid`) is stored under a key of everything that shapes its result:
the data (an .npz file by its content, not its path), the grid's settings and `leakage.defaults()`,
the attack's own constants and version, so a changed attack never reads back old results. Its
folder is <root>/leakage/<key> in the runs' cache, locked while it is computed (two kernels asking
for it take turns), and it counts as stored only once complete: the files are written aside and
moved in with reconstructions.npz last, so an interrupted grid is computed again.

Every attack runs on one torch thread (`leakage.attack`), so a grid's numbers do not depend on how
many grids `attack_grids` runs side by side: the missing grids of a lesson go to one process per
core, as `run_many` does with runs.
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
    folder = grid_folder(dataset, batch_sizes, bit_widths, noises, model, steps, seed, root)
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


def grid_folder(dataset: str, batch_sizes, bit_widths, noises, model: str, steps: int, seed: int, root=None) -> Path:
    """Where `attack_grid` stores these settings' grid (stored once it holds DONE)."""
    key = grid_key(dataset, batch_sizes, bit_widths, noises, model, steps, seed)
    return Path(root if root is not None else results.RUNS_ROOT) / "leakage" / key


def attack_grids(dataset: str, specs, *, model: str, steps: int, data_root=None, data=None, root=None,
                 workers: int = 0, log=print) -> list[Path]:
    """`attack_grid` for each spec (batch_sizes, bit_widths, noises, seed), the folders in order.

    The grids not stored yet are computed side by side on `workers` processes (0: one per usable
    core, never more than the grids to compute), each loading `dataset` from `data_root` itself;
    with one grid to compute, or workers=1, they run here on `data` (loaded if None). Each
    grid is locked and stored as `attack_grid` does, so a rerun reads them all back.
    """
    from ..simulator.pool import usable_cores

    specs = [(tuple(b), tuple(w), tuple(n), int(s)) for b, w, n, s in specs]
    folders = {spec: grid_folder(dataset, *spec[:3], model, steps, spec[3], root) for spec in specs}
    todo = [spec for spec, folder in folders.items() if not (folder / DONE).exists()]
    workers = min(workers or usable_cores(), len(todo))
    if todo and workers > 1:
        log(f"{len(todo)} attack grids to compute, {workers} at a time (one process and one thread each)")
        _grids_in_processes(dataset, todo, workers, model=model, steps=steps, data_root=data_root, root=root, log=log)
    elif todo:
        from ..core.data import load_dataset

        data = data if data is not None else load_dataset(dataset, data_root)
        for spec in todo:
            attack_grid(dataset, *spec[:3], model=model, steps=steps, seed=spec[3], data=data, root=root)
            log(f"attack grid done: {_describe(spec)}")
    return [folders[spec] for spec in specs]


def _describe(spec) -> str:
    b, w, n, s = spec
    return f"B = {', '.join(map(str, b))}; bits {', '.join(map(str, w))}; noise {', '.join(f'{x:g}' for x in n)}; seed {s}"


def _grid_process(dataset, spec, model, steps, data_root, root) -> str:
    """One grid in a worker process: the dataset is loaded here, not sent over a pipe."""
    from ..core.data import load_dataset

    data = load_dataset(dataset, data_root)
    return str(attack_grid(dataset, *spec[:3], model=model, steps=steps, seed=spec[3], data=data, root=root))


def _grids_in_processes(dataset, todo, workers, *, model, steps, data_root, root, log) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from ..simulator.pool import _main_hidden

    root = str(root if root is not None else results.RUNS_ROOT)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as executor:
        with _main_hidden():  # a notebook's __main__ is not importable in a spawned process
            spec_of = {executor.submit(_grid_process, dataset, spec, model, steps, data_root, root): spec
                       for spec in todo}
        for future in as_completed(spec_of):
            future.result()  # a failed attack raises here, once the others are done or cancelled
            log(f"attack grid done: {_describe(spec_of[future])}")


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
