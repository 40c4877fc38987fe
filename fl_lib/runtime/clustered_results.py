"""Clustered FL runs in the results cache: computed once, checkpointed, resumed, read back without training.

A clustered run (simulator/clustered.py) leaves several models and an assignment of
clients to clusters per round, not results.run's one global model, so it gets a folder
of its own kind: <root>/clustered/<key>, where key hashes the config's cache key
(`Config.key()`: every field that changes the numbers, the cfl_* thresholds included,
not num_rounds) together with num_groups, the population's label groups (no Config field).

  config.json       the config, num_groups and the key
  metrics.csv       one row per round: round, train_loss, num_clusters, splits, test_acc, test_loss
  norms.csv         one row per round and cluster: the split criterion's two norms
  assignments.csv   one row per round: the cluster id of every client after it (client_0, client_1, ...)
  timings.csv       wall seconds per round (these vary from run to run)
  summary.json      rounds, final numbers, the clients' true groups, metrics.csv's sha256; written last
  checkpoints/      every cluster's id, members and model, the next free id, and the rows so far

As with results.run: a folder holds its config at any length (fewer rounds give the
stored prefix, more continue from the last checkpoint), an interrupted run resumes from
its newest good checkpoint (every `checkpoint_every` rounds, and always the last), and
only the last checkpoint stays once a run finishes. A round depends only on the clusters
it starts from and the (seed, t, k) streams, so a resumed or extended run writes the same
files, byte for byte, as one computed in one go. `data`, when given, must be the data the
config names (as for results.run): the key is made from the config, not from the tensors.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import torch

from .. import __version__
from . import checkpoint
from .results import RUNS_ROOT, _csv, _json, keep_last_checkpoint, read_finished, stored_or_computed
from ..core.config import Config
from ..core.errors import FLError
from ..simulator.clustered import Cluster, ClusteredRun, check_clustered

METRICS = ("round", "train_loss", "num_clusters", "splits", "test_acc", "test_loss")  # ClusteredFederation.round
NORMS = ("round", "cluster", "clients", "mean_norm", "max_norm")
FOLDER = "clustered"  # under the runs' root, beside plain runs' folders


def clustered_key(cfg: Config, num_groups: int, subset: str = "") -> str:
    """The hash naming a clustered run's folder: the config's cache key, the number of label groups, and
    `subset`, the caller's name for data that is a part of the config's dataset ('' = the dataset itself)."""
    settings = {"config": cfg.key(), "num_groups": int(num_groups), "kind": "clustered"}
    if subset:
        settings["subset"] = subset
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def clustered_dir(cfg: Config, num_groups: int = 2, root=None, subset: str = "") -> Path:
    """The cache folder of a clustered run of `cfg`: <root>/clustered/<key>."""
    return Path(root if root is not None else RUNS_ROOT) / FOLDER / clustered_key(cfg, num_groups, subset)


def run_clustered(cfg: Config, data=None, num_groups: int = 2, *, subset: str = "", root=None, out=None,
                  force: bool = False, log=print, on_round=None) -> ClusteredRun:
    """`cfg.num_rounds` rounds of clustered FL on `num_groups` label-swapped groups, read from the cache if stored.

    Same arguments as simulator.clustered.run_clustered, plus the cache's: `root` (default
    the runs' cache, data/runs), `out` (a folder instead of the cached one), `force`
    (compute again from scratch), `log`, and `on_round(t)` called after each computed round.
    `subset` names `data` when it is only part of the config's dataset (say 'head=5000,1000' for
    data.head(ds, 5000, 1000)): the key is made from the config, so data it does not name needs a name.
    """
    check_clustered(cfg)
    out = Path(out) if out is not None else clustered_dir(cfg, num_groups, root, subset)
    key = clustered_key(cfg, num_groups, subset)
    return stored_or_computed(out, key, cfg.num_rounds, force, log, load_clustered,
                              lambda: _compute(cfg, data, num_groups, out, key, force, log, on_round),
                              what="clustered run", advice="choose another folder, or pass force=True to replace it")


def _compute(cfg, data, num_groups, out, key, force, log, on_round) -> ClusteredRun:
    from ..simulator.clustered import ClusteredFederation  # builds the data and the model: only when computing

    fed = ClusteredFederation(cfg, data, num_groups)
    ckpt_dir = out / "checkpoints"
    state = None if force else _resume(fed, out, key, log)
    rows = state["rows"] if state is not None else {"metrics": [], "norms": [], "assignments": [], "timings": []}
    for t in range((state["round"] if state is not None else 0) + 1, cfg.num_rounds + 1):
        start = time.perf_counter()
        row, norms = fed.round(t)
        rows["metrics"].append(row)
        rows["norms"] += norms
        rows["assignments"].append(fed.assignment())
        rows["timings"].append({"round": t, "seconds": time.perf_counter() - start})
        if (cfg.checkpoint_every and t % cfg.checkpoint_every == 0) or t == cfg.num_rounds:
            checkpoint.save(ckpt_dir, t, {"config_key": key, "config": cfg.to_dict(), "num_groups": num_groups,
                                          "round": t, "clustered": fed.state_dict(), "rows": rows})
        if on_round is not None:
            on_round(t)
    _write(out, cfg, num_groups, key, rows, fed.groups, fed.device)
    keep_last_checkpoint(ckpt_dir)
    return load_clustered(out)


def _resume(fed, out: Path, key: str, log) -> dict | None:
    """Load `out`'s newest checkpoint of `key` into `fed`; None when there is none to continue from."""
    cfg = fed.cfg
    state = checkpoint.latest(out / "checkpoints", key)
    if state is None or state["round"] > cfg.num_rounds:  # none, or a longer unfinished run: begin again
        return None
    fed.load_state_dict(state["clustered"])
    last = state["rows"]["metrics"][-1]
    if last["round"] % cfg.eval_every and state["round"] < cfg.num_rounds:
        last["test_acc"] = last["test_loss"] = None  # evaluated only because it ended a shorter run
    verb = "extending the stored" if (out / "summary.json").exists() else "resuming from"
    log(f"clustered FL: {verb} round {state['round']} (to {cfg.num_rounds}) in {out}")
    return state


def _write(out: Path, cfg: Config, num_groups: int, key: str, rows: dict, groups: list, device) -> None:
    """Write the finished folder's files; summary.json last, which marks the run finished."""
    metrics_text = _csv(rows["metrics"], METRICS)
    clients = [f"client_{k}" for k in range(cfg.num_clients)]
    assignments = [{"round": i + 1, **dict(zip(clients, a))} for i, a in enumerate(rows["assignments"])]
    last = rows["metrics"][-1]
    accs = [r["test_acc"] for r in rows["metrics"] if r["test_acc"] is not None]
    summary = {"config_key": key, "rounds": len(rows["metrics"]), "num_groups": num_groups, "groups": list(groups),
               "final_test_acc": accs[-1] if accs else None, "num_clusters": last["num_clusters"],
               "splits": sum(r["splits"] for r in rows["metrics"]),
               "seconds_total": sum(r["seconds"] for r in rows["timings"]), "device": str(device),
               "fl_lib_version": __version__, "torch_version": torch.__version__,
               "metrics_sha256": hashlib.sha256(metrics_text.encode()).hexdigest()}
    checkpoint.atomic_write(out / "metrics.csv", metrics_text)
    checkpoint.atomic_write(out / "norms.csv", _csv(rows["norms"], NORMS))
    checkpoint.atomic_write(out / "assignments.csv", _csv(assignments, ("round", *clients)))
    checkpoint.atomic_write(out / "timings.csv", _csv(rows["timings"], ("round", "seconds")))
    checkpoint.atomic_write(out / "config.json", _json({"key": key, "num_groups": num_groups, **cfg.to_dict()}))
    checkpoint.atomic_write(out / "summary.json", _json(summary))


def load_clustered(folder, num_rounds: int | None = None) -> ClusteredRun:
    """A finished clustered run folder as a ClusteredRun, without training.

    `num_rounds` below the stored rounds gives the first `num_rounds` rounds. The final
    cluster models come from the last checkpoint, so they are there for the full length
    only (`clusters` is empty for a shorter prefix); the assignments are there for every round.
    """
    import pandas as pd

    folder = Path(folder)
    summary, raw, text = read_finished(folder, what="clustered run", rerun="call")
    raw.pop("num_groups", None)
    n = summary["rounds"] if num_rounds is None else num_rounds
    if not 1 <= n <= summary["rounds"]:
        raise FLError(f"num_rounds={num_rounds} is not allowed: must be int in [1, {summary['rounds']}]")

    def table(name):
        frame = pd.read_csv(folder / name)
        return frame[frame["round"] <= n].reset_index(drop=True)

    metrics = pd.read_csv(io.StringIO(text)).iloc[:n]
    assignments = table("assignments.csv").drop(columns="round").to_numpy()
    clusters = _final_clusters(folder, summary) if n == summary["rounds"] else []
    return ClusteredRun(Config.from_dict(raw).replace(num_rounds=n), summary["groups"], metrics,
                        table("norms.csv"), assignments, clusters, table("timings.csv").seconds.tolist(), folder)


def _final_clusters(folder: Path, summary: dict) -> list[Cluster]:
    """The clusters after the last stored round, from its checkpoint (kept when a run finishes)."""
    state = checkpoint.latest(folder / "checkpoints", summary["config_key"])
    if state is None or state["round"] != summary["rounds"]:
        return []
    return [Cluster(c["id"], list(c["members"]), c["state"]) for c in state["clustered"]["clusters"]]

