"""Run folders: run a config once, cache it by its hash, resume it, and load it back.

Names: accuracy is `test_acc` (per round) and `final_test_acc` / `best_test_acc`
(summary); upload is `upload_bytes` and `cum_upload_bytes` (per round) and
`total_upload_bytes`, `total_upload_mb`, `upload_mb_per_round` (summary, MB =
1e6 bytes). Notebook tables and plot labels use the same names.

A finished run folder holds
  config.json   the config that made it (with its key, the hash `Config.key()`),
  metrics.csv   one row per round; only numbers the config and seed decide, so two
                runs compare byte for byte,
  timings.csv   wall-clock seconds per round (these vary from run to run),
  summary.json  final numbers; written last, it marks the run as finished.
While a run is going, its state sits in checkpoints/ (see `checkpoint.py`); the
files above are replaced only when a run finishes, so an interrupted or failed
run never damages finished results.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from . import checkpoint
from ..core.config import Config
from ..core.errors import FLError
from ..core.metrics import COLUMNS, RoundMetrics

METRICS = COLUMNS  # 0.4's name for metrics.csv's columns (core/metrics.py: RoundMetrics documents each)
RUNS_ROOT = Path(os.environ.get("FL_LIB_RUNS", "data/runs"))  # where runs without --out go


@dataclass
class Run:
    """A finished run: its folder, config, per-round metrics (a DataFrame) and summary."""

    dir: Path
    config: Config
    metrics: "pandas.DataFrame"  # noqa: F821
    summary: dict


def run_dir(cfg: Config, root=None) -> Path:
    """The cache folder of `cfg`: <root>/<key>."""
    return Path(root if root is not None else RUNS_ROOT) / cfg.key()


def run(cfg: Config, out=None, *, force: bool = False, progress: bool = True, root=None,
        data=None, log=print, on_round=None) -> Run:
    """Run `cfg` into `out` (default: its cache folder), or return it at once if it is stored.

    A folder holds one run of its config at any length (the cache key leaves out
    `num_rounds`): asking for fewer rounds than stored returns the stored prefix,
    asking for more continues from the last stored round, and an unfinished run
    resumes from its last good checkpoint. Every round depends only on the config
    and the model it starts from, so a run extended from 3 to 5 rounds writes the
    same metrics.csv as 5 rounds in one go. `force` reruns from scratch; the old
    results stay in place until the new run has finished. Two processes asking for
    the same folder at once take turns (a file lock): the second one reads what
    the first one computed. `on_round(t)` is called after each computed round.
    """
    from ..simulator.build import check

    check(cfg)  # stages that cannot work together are refused before anything is locked or loaded
    out = Path(out) if out is not None else run_dir(cfg, root)
    key = cfg.key()
    return stored_or_computed(out, key, cfg.num_rounds, force, log, load_run,
                              lambda: _compute(cfg, out, key, force, progress, data, log, on_round))


def stored_or_computed(out: Path, key: str, num_rounds: int, force: bool, log, load, compute,
                       what: str = "finished run", advice: str = "choose another --out, or pass --force to replace it"):
    """Under the folder's lock: the stored run in `out` if it has `num_rounds` rounds, else `compute()`.

    A folder holding a finished run of another config (another `key`) is refused rather than mixed;
    `compute` extends a shorter stored run from its checkpoints. Shared by every cached kind of run.
    """
    with run_lock(out, log):
        if (out / "summary.json").exists() and not force:
            stored = _read_json(out / "summary.json")
            if stored.get("config_key") != key:
                raise FLError(f"{out} holds a {what} of another config (key {stored.get('config_key')}, this "
                              f"one {key}): {advice}")
            if stored["rounds"] >= num_rounds:
                return load(out, num_rounds=num_rounds)
        return compute()


def _compute(cfg, out, key, force, progress, data, log, on_round) -> Run:
    from ..simulator.federation import Federation  # heavy imports only when a run really starts

    fed = Federation(cfg, data=data)
    ckpt_dir = out / "checkpoints"
    state = None if force else resume(fed, out, key, log)
    rows, timings, start = ([], [], 1) if state is None else (state["metrics"], state["timings"], state["round"] + 1)
    bar = _progress(range(start, cfg.num_rounds + 1), cfg.num_rounds, start - 1, progress)
    try:
        for t in bar:
            row = fed.round(t)
            record_round(rows, timings, row)
            if hasattr(bar, "set_postfix"):
                last_acc = next((r["test_acc"] for r in reversed(rows) if r["test_acc"] is not None), None)
                bar.set_postfix(acc=f"{last_acc:.3f}" if last_acc is not None else "-",
                                up_MB=f"{rows[-1]['cum_upload_bytes'] / 1e6:.1f}")
            save_round(fed, ckpt_dir, key, t, rows, timings)
            if on_round is not None:
                on_round(t)
    finally:
        fed.close()
    write_run(out, cfg, rows, timings, fed.device)
    keep_last_checkpoint(ckpt_dir)
    return load_run(out)


def resume(fed, out: Path, key: str, log=print) -> dict | None:
    """Load run folder `out`'s newest checkpoint of `key` into `fed`; None when there is none to continue.

    The checkpoint's "metrics" and "timings" are the rows so far and "round" the last
    finished round. Used by `run` and by the Flower strategy alike: the run folder is
    the source of truth however the rounds were computed.
    """
    cfg = fed.cfg
    state = checkpoint.latest(out / "checkpoints", key)
    if state is None or state["round"] > cfg.num_rounds:  # none, or a longer unfinished run: begin again
        return None
    fed.load_resume_state(state["engine"], state["global"])  # "engine": the checkpoint key since 0.1
    last = state["metrics"][-1]
    if last["round"] % cfg.eval_every and state["round"] < cfg.num_rounds:
        # round `last` was evaluated only because it ended a shorter run; a run
        # made at full length does not evaluate it (evaluating changes nothing else)
        last["test_acc"] = last["test_loss"] = None
    if (out / "summary.json").exists():
        log(f"extending the stored {state['round']} rounds to {cfg.num_rounds}")
    else:
        log(f"resuming from round {state['round']} (checkpoint in {out / 'checkpoints'})")
    return state


def save_round(fed, ckpt_dir: Path, key: str, t: int, rows: list, timings: list, **extra) -> None:
    """Checkpoint round t when `checkpoint_every` asks for it, and always the run's last round.

    The last round's state always stays: it is where a longer run continues from.
    `extra` holds what a runtime adds (Flower: the bytes of its own messages).
    """
    cfg = fed.cfg
    if (cfg.checkpoint_every and t % cfg.checkpoint_every == 0) or t == cfg.num_rounds:
        checkpoint.save(ckpt_dir, t, {
            "config_key": key, "config": cfg.to_dict(), "round": t, "engine": fed.resume_state(),
            "global": {k: v.detach().cpu() for k, v in fed.global_state.items()},
            "metrics": rows, "timings": timings, **extra})


def keep_last_checkpoint(ckpt_dir: Path) -> None:
    """After a finished run only the last round's state stays: it is where a longer run continues from."""
    for p in checkpoint.list_checkpoints(ckpt_dir)[1:]:
        p.unlink(missing_ok=True)


def run_many(configs, *, workers: int = 0, root=None, progress: bool = True, log=print,
             return_errors: bool = False) -> list:
    """Run independent configs on a pool of processes and return their `Run`s in order.

    Stored runs are read back at once; configs that differ only in `num_rounds`
    are computed once, at the longest length. `workers` processes (0 = one per
    usable core, never more than the runs to compute) each run one config at a
    time with cores // workers threads and that many cores for its own
    engine=auto decision, so runs and clients never oversubscribe the CPU. With
    workers=0 the runs go to processes only where that pays, judged from the first
    run's first two rounds, timed here on all threads and on one (`_processes_pay`). One
    progress bar counts the rounds of all of them. Each run is cached and locked
    like `run`'s, so a notebook and a terminal asking for the same config share it.
    A run that fails (say it diverges) raises its FLError once the others have
    finished; with `return_errors` its place in the list holds the error instead.
    """
    from ..simulator.build import check
    from ..simulator.pool import usable_cores

    configs = list(configs)
    for cfg in configs:  # a grid with one impossible combination is refused before any run starts
        check(cfg)
    root = Path(root if root is not None else RUNS_ROOT).resolve()
    longest: dict[str, Config] = {}  # the runs to compute, by cache key
    for cfg in configs:
        if _stored_rounds(run_dir(cfg, root)) >= cfg.num_rounds:
            continue
        key = cfg.key()
        if key not in longest or cfg.num_rounds > longest[key].num_rounds:
            longest[key] = cfg
    todo = list(longest.values())
    cores = usable_cores()
    if not workers and len(todo) > 1 and cores > 1:
        workers = 1 if not _processes_pay(todo, min(cores, len(todo)), root, log) else 0
    workers = min(workers or cores, len(todo))
    failed: dict[str, FLError] = {}
    if todo and workers <= 1:
        for cfg in todo:
            try:
                run(cfg, root=root, progress=progress, log=log)
            except FLError as e:
                failed[cfg.key()] = e
    elif todo:
        failed = _run_in_processes(todo, workers, max(1, cores // workers), root, progress)
    if failed and not return_errors:
        raise next(iter(failed.values()))
    return [failed[cfg.key()] if cfg.key() in failed else load_run(run_dir(cfg, root), num_rounds=cfg.num_rounds)
            for cfg in configs]


PROCESS_START_SECONDS = 3.0  # a run process's own start: spawning Python and importing torch
PROCESS_EFFICIENCY = 0.8  # share of the ideal w / S speed-up that w one-thread processes reached (see below)
MIN_GAIN = 1.05  # processes are used only if they are predicted this much faster than one loop


def _processes_pay(todo: list, workers: int, root: Path, log) -> bool:
    """Whether spreading `todo` over `workers` one-thread processes beats one loop here, from a measurement.

    The loop runs with every core as torch threads, so what processes can gain is what
    threads lose: with S = (a round's time on 1 thread) / (on all threads), w processes
    of one thread are at best w / S times faster. The first run's first two rounds run
    here, one with all threads and one with a single thread (both are stored: the run
    later extends from them), and give S for this model on this machine. On a 2-core
    VM of this project (2026-12-05) the pool reached 0.78-0.82 of that bound (quick
    model: 0.97x against 1.18; paper model: 1.24x against 1.59): PROCESS_EFFICIENCY.
    Processes are used if the predicted gain is at least MIN_GAIN and the time it saves
    exceeds their start. Runs computed on one path or the other may differ in the last
    bits of their floats (threads split sums differently); workers=N pins the choice.
    """
    first = todo[0]
    if first.num_rounds < 2 or _stored_rounds(run_dir(first, root)) > 0:
        return True  # nothing to time without changing a stored run: keep the parallel default
    quiet = lambda msg: None  # noqa: E731
    threads = torch.get_num_threads()
    run(first.replace(num_rounds=1), root=root, progress=False, log=quiet)
    torch.set_num_threads(1)
    try:
        run(first.replace(num_rounds=2), root=root, progress=False, log=quiet)
    finally:
        torch.set_num_threads(threads)
    try:
        lines = (run_dir(first, root) / "timings.csv").read_text().splitlines()[1:3]
        t_all, t_one = (float(line.split(",")[1]) for line in lines)
    except (OSError, ValueError):
        return True
    gain = PROCESS_EFFICIENCY * workers * t_all / t_one  # w / S, discounted
    rounds = sum(cfg.num_rounds for cfg in todo) - 2
    saving = rounds * t_all * (1 - 1 / gain) if gain > 0 else 0.0
    cost = workers * PROCESS_START_SECONDS
    pays = gain >= MIN_GAIN and saving > cost
    if not pays:
        log(f"run_many: {len(todo)} runs in one loop (a round took {t_all:.2f} s on {threads} thread(s) and "
            f"{t_one:.2f} s on one: {workers} processes would be about {gain:.2f}x as fast, saving {saving:.0f} s "
            f"for {cost:.0f} s of start-up)")
    return pays


def _stored_rounds(folder: Path) -> int:
    """Rounds of the finished run in `folder` (0 if none)."""
    try:
        return int(_read_json(folder / "summary.json")["rounds"])
    except (FLError, OSError, KeyError, ValueError):
        return 0


def _run_in_processes(todo: list, workers: int, threads: int, root: Path, progress: bool) -> dict:
    """Compute `todo` on `workers` processes; returns {key: FLError} of the runs that failed."""
    import multiprocessing
    import queue
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from ..simulator.pool import _main_hidden

    ctx = multiprocessing.get_context("spawn")
    ticks = ctx.Queue()
    total = sum(cfg.num_rounds - _stored_rounds(run_dir(cfg, root)) for cfg in todo)
    bar = _progress(None, total, 0, progress) if progress else None
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_run_process_init,
                             initargs=(threads, ticks, os.getpid())) as executor:
        with _main_hidden():
            key_of = {executor.submit(_run_one, cfg, str(root)): cfg.key() for cfg in todo}
        pending, failed = set(key_of), {}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(ticks, bar, queue)
                for future in done:
                    try:
                        future.result()
                    except FLError as e:  # the run's own one-line message (a divergence, bad data)
                        failed[key_of[future]] = e
        except BrokenProcessPool as e:
            raise FLError(f"a run's process died ({e}); finished runs are stored: run again to compute the rest") \
                from None
        except BaseException:
            for future in pending:
                future.cancel()
            raise
        finally:
            _drain(ticks, bar, queue)
            if bar is not None:
                bar.close()
    return failed


def _drain(ticks, bar, queue) -> None:
    while True:
        try:
            ticks.get_nowait()
        except (queue.Empty, OSError, ValueError):
            return
        if bar is not None:
            bar.update(1)


_ticks = None  # in a run_many process: where each finished round is reported


def _run_process_init(threads: int, ticks, parent: int) -> None:
    global _ticks
    from ..simulator import pool

    pool.exit_with_parent(parent)
    torch.set_num_threads(threads)
    pool.CORE_BUDGET = threads  # the run's own engine=auto sees only its share of the cores
    _ticks = ticks


def _run_one(cfg: Config, root: str) -> None:
    run(cfg, root=root, progress=False, log=lambda msg: None, on_round=lambda t: _ticks.put(t))


def record_round(rows: list, timings: list, row: RoundMetrics, seconds: float | None = None) -> None:
    """Append round `row` (a `Federation.round` record) as a dict with its cumulative columns, and its wall time."""
    if isinstance(row, RoundMetrics):
        seconds = row.seconds if seconds is None else seconds
        row = row.as_dict()
    else:  # a row as a dict, the form before 0.5
        row = dict(row)
        seconds = row.pop("seconds", None) if seconds is None else seconds
    prev = rows[-1] if rows else {"cum_upload_bytes": 0, "cum_sim_seconds": 0.0}
    row["cum_upload_bytes"] = prev["cum_upload_bytes"] + row["upload_bytes"]
    if row["sim_seconds"] is not None:  # a run with a link model has a clock
        row["cum_sim_seconds"] = (prev["cum_sim_seconds"] or 0.0) + row["sim_seconds"]
    else:
        row["cum_sim_seconds"] = None
    rows.append(row)
    timings.append({"round": row["round"], "seconds": seconds})


class run_lock:
    """An exclusive lock on a run folder (`<out>/.lock`), held while a process computes or reads it.

    The operating system releases it when the process ends, however it ends. Where
    there is no fcntl (Windows) runs are not locked.
    """

    def __init__(self, out: Path, log=print):
        self.path, self.log, self.file = Path(out) / ".lock", log, None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.log(f"waiting: another process is computing {self.path.parent}")
            fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.file is not None:
            self.file.close()  # closing releases the lock
            self.file = None


def _progress(it, total, initial, enabled):
    if not enabled:
        return it
    from tqdm.auto import tqdm
    return tqdm(it, total=total, initial=initial, desc="rounds", unit="round", dynamic_ncols=True)


def _totals(rows: list, timings: list) -> dict:
    """The summary's numbers over `rows` (round dicts) and their `timings`."""
    accs = [r["test_acc"] for r in rows if r["test_acc"] is not None]
    seconds = [t["seconds"] for t in timings if t["seconds"] is not None]
    last = rows[-1]
    return {
        "rounds": len(rows),
        "final_test_acc": accs[-1] if accs else None,
        "best_test_acc": max(accs) if accs else None,
        "total_upload_bytes": last["cum_upload_bytes"],
        "total_upload_mb": last["cum_upload_bytes"] / 1e6,
        "upload_bytes_per_round": last["cum_upload_bytes"] / len(rows),  # the mean over rounds, not the last
        "upload_mb_per_round": last["cum_upload_bytes"] / len(rows) / 1e6,
        "dropped_clients": sum(r["dropped_clients"] for r in rows),
        "epsilon": last["epsilon"],
        "total_sim_hours": last["cum_sim_seconds"] / 3600 if last["cum_sim_seconds"] is not None else None,
        "seconds_total": sum(seconds),
        "seconds_per_round": sum(seconds) / len(seconds) if seconds else None,
    }


def write_run(out, cfg: Config, rows: list, timings: list, device, extra_summary: dict | None = None) -> None:
    """Write a finished run folder: metrics.csv, timings.csv, config.json, then summary.json (which marks it done).

    `rows` come from `record_round`. `extra_summary` adds fields to summary.json
    (the Flower runtime adds the bytes of its own messages).
    """
    out = Path(out)
    metrics_text = _csv(rows, COLUMNS)
    summary = {
        "config_key": cfg.key(),
        **_totals(rows, timings),
        "device": _device_name(device) if isinstance(device, torch.device) else str(device),
        "fl_lib_version": __version__,
        "torch_version": torch.__version__,
        "metrics_sha256": hashlib.sha256(metrics_text.encode()).hexdigest(),
        **(extra_summary or {}),
    }
    checkpoint.atomic_write(out / "metrics.csv", metrics_text)
    checkpoint.atomic_write(out / "timings.csv", _csv(timings, ("round", "seconds")))
    checkpoint.atomic_write(out / "config.json", _json({"key": cfg.key(), **cfg.to_dict()}))
    checkpoint.atomic_write(out / "summary.json", _json(summary))  # last: marks the run finished


def read_finished(folder: Path, what: str = "run", rerun: str = "command") -> tuple[dict, dict, str]:
    """(summary, config without its key, metrics.csv text) of a finished run folder, its metrics checked.

    metrics.csv must match the sha256 that summary.json (written last) records, so a folder
    interrupted while finishing is refused rather than read half-written.
    """
    if not (folder / "summary.json").exists():
        raise FLError(f"{folder} holds no finished {what} (no summary.json)")
    summary = _read_json(folder / "summary.json")
    raw = _read_json(folder / "config.json")
    raw.pop("key", None)
    text = (folder / "metrics.csv").read_text()
    if hashlib.sha256(text.encode()).hexdigest() != summary.get("metrics_sha256"):
        raise FLError(f"{folder}/metrics.csv does not match its summary.json (interrupted while finishing?): "
                      f"rerun the same {rerun} to finish it")
    return summary, raw, text


def load_run(folder, num_rounds: int | None = None) -> Run:
    """Load a finished run folder: config, metrics (with seconds joined in) and summary.

    `num_rounds` below the stored rounds gives the first `num_rounds` rounds, with
    the summary recomputed over them (the config then says num_rounds too).
    """
    import pandas as pd

    folder = Path(folder)
    summary, raw, text = read_finished(folder)
    cfg = Config.from_dict(raw)
    metrics = pd.read_csv(io.StringIO(text))
    timings_path = folder / "timings.csv"
    timings = pd.read_csv(timings_path) if timings_path.exists() else None
    if num_rounds is not None and num_rounds < summary["rounds"]:
        if num_rounds < 1:
            raise FLError(f"num_rounds={num_rounds} is not allowed: must be int in [1, {summary['rounds']}]")
        metrics = metrics.iloc[:num_rounds].copy()
        timings = timings.iloc[:num_rounds] if timings is not None else None
        cfg = cfg.replace(num_rounds=num_rounds)
        steps = timings.to_dict("records") if timings is not None else [{"seconds": None}] * num_rounds
        summary = {**summary, **_totals(_records(metrics), steps)}
    if timings is not None:
        metrics = metrics.merge(timings, on="round", how="left")
    return Run(folder, cfg, metrics, summary)


def _records(frame) -> list[dict]:
    """DataFrame rows as dicts of Python values, with empty cells as None."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in frame.to_dict("records")]


def _csv(rows, columns) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else _cell(r[c]) for c in columns])
    return buf.getvalue()


def _cell(v):
    if isinstance(v, float):
        if not math.isfinite(v):
            raise FLError(f"refusing to write a non-finite metric ({v}) to metrics.csv")
        return repr(v)  # shortest text that reads back to the same float
    return v


def _json(obj) -> str:
    return json.dumps(obj, indent=2, allow_nan=False) + "\n"


def _read_json(path) -> dict:
    """Strict JSON: NaN/Infinity are refused, nothing is executed."""
    def refuse(token):
        raise FLError(f"{path} holds {token}, which is not valid JSON")
    try:
        return json.loads(Path(path).read_text(), parse_constant=refuse)
    except json.JSONDecodeError as e:
        raise FLError(f"{path} is not valid JSON ({e})") from None


def _device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
