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

from . import __version__, checkpoint
from .config import Config
from .errors import FLError

METRICS = ("round", "test_acc", "test_loss", "train_loss", "upload_bytes", "download_bytes",
           "cum_upload_bytes", "quant_error", "dropped_clients",
           "sim_seconds", "cum_sim_seconds", "mean_bits", "mean_staleness", "epsilon")
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
        data=None, log=print) -> Run:
    """Run `cfg` into `out` (default: its cache folder), or return it at once if finished.

    An unfinished run in `out` resumes from its last good checkpoint. `force` reruns
    from scratch; the old results stay in place until the new run has finished.
    """
    out = Path(out) if out is not None else run_dir(cfg, root)
    key = cfg.key()
    if (out / "summary.json").exists():
        stored = _read_json(out / "summary.json").get("config_key")
        if stored == key and not force:
            return load_run(out)
        if stored != key and not force:
            raise FLError(f"{out} holds a finished run of another config (key {stored}, this one {key}): "
                          f"choose another --out, or pass --force to replace it")
    from .fedavg import Federation  # heavy imports only when a run really starts

    fed = Federation(cfg, data=data)
    ckpt_dir = out / "checkpoints"
    state = None if force else checkpoint.latest(ckpt_dir, key)
    rows, timings, start = [], [], 1
    if state is not None:
        fed.global_state = {k: v.to(fed.device) for k, v in state["global"].items()}
        fed.load_engine_state(state["engine"])
        rows, timings, start = state["metrics"], state["timings"], state["round"] + 1
        log(f"resuming from round {state['round']} (checkpoint in {ckpt_dir})")
    bar = _progress(range(start, cfg.num_rounds + 1), cfg.num_rounds, start - 1, progress)
    cum = rows[-1]["cum_upload_bytes"] if rows else 0
    clock = rows[-1]["cum_sim_seconds"] if rows else 0.0
    for t in bar:
        row = fed.round(t)
        cum += row["upload_bytes"]
        row["cum_upload_bytes"] = cum
        if row["sim_seconds"] is not None:  # a run with a link model has a clock
            clock += row["sim_seconds"]
            row["cum_sim_seconds"] = clock
        else:
            row["cum_sim_seconds"] = None
        timings.append({"round": t, "seconds": row.pop("seconds")})
        rows.append(row)
        if hasattr(bar, "set_postfix"):
            last_acc = next((r["test_acc"] for r in reversed(rows) if r["test_acc"] is not None), None)
            bar.set_postfix(acc=f"{last_acc:.3f}" if last_acc is not None else "-", up_MB=f"{cum / 1e6:.1f}")
        if cfg.checkpoint_every and t % cfg.checkpoint_every == 0 and t < cfg.num_rounds:
            checkpoint.save(ckpt_dir, t, {
                "config_key": key, "config": cfg.to_dict(), "round": t, "engine": fed.engine_state(),
                "global": {k: v.detach().cpu() for k, v in fed.global_state.items()},
                "metrics": rows, "timings": timings})
    _finish(out, cfg, fed, rows, timings)
    return load_run(out)


def _progress(it, total, initial, enabled):
    if not enabled:
        return it
    from tqdm.auto import tqdm
    return tqdm(it, total=total, initial=initial, desc="rounds", unit="round")


def _finish(out: Path, cfg: Config, fed, rows, timings) -> None:
    metrics_text = _csv(rows, METRICS)
    accs = [r["test_acc"] for r in rows if r["test_acc"] is not None]
    seconds = [t["seconds"] for t in timings]
    summary = {
        "config_key": cfg.key(),
        "rounds": len(rows),
        "final_test_acc": accs[-1] if accs else None,
        "best_test_acc": max(accs) if accs else None,
        "total_upload_bytes": rows[-1]["cum_upload_bytes"],
        "total_upload_mb": rows[-1]["cum_upload_bytes"] / 1e6,
        "upload_bytes_per_round": rows[-1]["upload_bytes"],
        "upload_mb_per_round": rows[-1]["upload_bytes"] / 1e6,
        "dropped_clients": sum(r["dropped_clients"] for r in rows),
        "epsilon": rows[-1]["epsilon"],
        "total_sim_hours": rows[-1]["cum_sim_seconds"] / 3600 if rows[-1]["cum_sim_seconds"] is not None else None,
        "seconds_total": sum(seconds),
        "seconds_per_round": sum(seconds) / len(seconds) if seconds else None,
        "device": _device_name(fed.device),
        "fl_lib_version": __version__,
        "torch_version": torch.__version__,
        "metrics_sha256": hashlib.sha256(metrics_text.encode()).hexdigest(),
    }
    checkpoint.atomic_write(out / "metrics.csv", metrics_text)
    checkpoint.atomic_write(out / "timings.csv", _csv(timings, ("round", "seconds")))
    checkpoint.atomic_write(out / "config.json", _json({"key": cfg.key(), **cfg.to_dict()}))
    checkpoint.atomic_write(out / "summary.json", _json(summary))  # last: marks the run finished
    for p in checkpoint.list_checkpoints(out / "checkpoints"):
        p.unlink(missing_ok=True)


def load_run(folder) -> Run:
    """Load a finished run folder: config, metrics (with seconds joined in) and summary."""
    import pandas as pd

    folder = Path(folder)
    if not (folder / "summary.json").exists():
        raise FLError(f"{folder} holds no finished run (no summary.json)")
    summary = _read_json(folder / "summary.json")
    raw = _read_json(folder / "config.json")
    raw.pop("key", None)
    cfg = Config.from_dict(raw)
    text = (folder / "metrics.csv").read_text()
    if hashlib.sha256(text.encode()).hexdigest() != summary.get("metrics_sha256"):
        raise FLError(f"{folder}/metrics.csv does not match its summary.json (interrupted while finishing?): "
                      f"rerun the same command to finish it")
    metrics = pd.read_csv(io.StringIO(text))
    timings_path = folder / "timings.csv"
    if timings_path.exists():
        metrics = metrics.merge(pd.read_csv(timings_path), on="round", how="left")
    return Run(folder, cfg, metrics, summary)


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
