"""Reference results: finished long runs shipped with the project, so a lesson shows converged curves at once.

`reference/` (at the repository root) holds one folder per reference run, with the
four small files of a finished run folder (config.json, metrics.csv, timings.csv,
summary.json; no checkpoints), and `reference/index.json`, which records for each run

    files        the sha256 of each of the four files (checked on every load),
    command      the exact command that regenerates (or extends) it,
    data         which data it used (the full set or a named subset),
    fl_lib       the version that computed it (its summary.json), machine: where, wall_seconds: how long
                 (the sum of its rounds' seconds in timings.csv, across every extension).

`reference/README.md` is written from the index. A run that is still being extended
is published at the rounds it has finished; its summary says how many.

`extend(name, rounds)` (`python -m fl_lib reference --extend NAME --rounds N`) replays a
published run's own config.json to more rounds through the results cache: where its run
folder (with checkpoints) is kept, it continues from the last stored round; on a fresh
clone it recomputes from round 1. Then it publishes again.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from pathlib import Path

from .. import __version__
from ..core.config import Config
from ..core.errors import ConfigError, FLError
from ..runtime import checkpoint
from ..runtime.results import Run, load_run

PROJECT = Path(__file__).resolve().parents[2]
ROOT = PROJECT / "reference"  # the repository's reference/ tree
RUNS = Path(os.environ.get("FL_REFERENCE_RUNS", PROJECT / "data" / "reference-runs"))  # run folders, outside git
FILES = ("config.json", "metrics.csv", "timings.csv", "summary.json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_index(root: Path = ROOT) -> dict:
    """{name: record} of every published reference run (empty if there is none)."""
    path = Path(root) / "index.json"
    return json.loads(path.read_text()) if path.exists() else {}


def names(root: Path = ROOT, prefix: str = "") -> list[str]:
    """The published runs whose name starts with `prefix` (e.g. 'shakespeare/')."""
    return sorted(n for n in read_index(root) if n.startswith(prefix))


def verify(name: str, root: Path = ROOT) -> Path:
    """The folder of reference run `name`, after checking each file against its recorded sha256."""
    index = read_index(root)
    if name not in index:
        raise FLError(f"no reference run {name!r}; published: {', '.join(sorted(index)) or 'none'}")
    folder = Path(root) / name
    for file, digest in index[name]["files"].items():
        path = folder / file
        if not path.exists() or _sha256(path) != digest:
            raise FLError(f"reference {name}: {file} is missing or does not match its checksum in index.json; "
                          f"restore it (git checkout reference/) or regenerate it with: {index[name]['command']}")
    return folder


def load(name: str, root: Path = ROOT) -> Run:
    """Reference run `name` as a `Run` (results.load_run), its files verified first."""
    return load_run(verify(name, root))


def this_machine() -> str:
    """The machine a reference run is computed on, as the index records it."""
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores"


def machines(before: str, rounds_before: int, rounds: int, now: str | None = None) -> str:
    """The index's `machine` of a run carried from `rounds_before` to `rounds` rounds on `now` (default: this
    machine), when its first rounds ran on `before`: unchanged if it is the same machine, else both named."""
    now = this_machine() if now is None else now
    if now == before or rounds <= rounds_before:
        return before
    return f"{before}; rounds {rounds_before + 1}-{rounds} on {now}"


def publish(run_folder, name: str, *, command: str, data: str, root: Path = ROOT, machine: str | None = None) -> dict:
    """Copy a finished run folder's four files into reference/`name` and record them in the index.

    `machine` says where the rounds were computed (default: this machine); a run whose
    rounds ran on several machines names each with its rounds (`machines`). The run is
    loaded first (a folder that does not load is never published); the index and
    README are replaced atomically, so an interrupted publish leaves the previous
    state readable.
    """
    run = load_run(run_folder)
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    for file in FILES:
        tmp = folder / (file + ".tmp")
        shutil.copyfile(Path(run_folder) / file, tmp)
        tmp.replace(folder / file)
    index = read_index(root)
    index[name] = dict(files={f: _sha256(folder / f) for f in FILES}, command=command, data=data,
                       rounds=int(run.summary["rounds"]), fl_lib=run.summary.get("fl_lib_version", __version__),
                       machine=this_machine() if machine is None else machine,
                       wall_seconds=round(float(run.metrics.seconds.sum()), 1))
    checkpoint.atomic_write(Path(root) / "index.json", json.dumps(index, indent=1, sort_keys=True) + "\n")
    checkpoint.atomic_write(Path(root) / "README.md", readme(index, root))
    return index[name]


def extend_command(name: str) -> str:
    """The command recorded for every reference run: it replays the run's own config to ROUNDS rounds."""
    return f"python -m fl_lib reference --extend {name} --rounds ROUNDS"


def extend(name: str, rounds: int | None = None, *, runs=None, root: Path = ROOT, progress: bool = True,
           log=print) -> dict:
    """Run reference `name` to `rounds` rounds (default: its published rounds) and publish it again.

    The config is the published config.json with only `num_rounds` changed, so the
    extension is the same experiment; its run folder is `runs`/`name` (default
    data/reference-runs, outside git), where checkpoints make the next extension cheap.
    """
    from ..runtime import results

    published = verify(name, root)  # an unknown name raises, listing the published ones
    record = read_index(root)[name]
    rounds = record["rounds"] if rounds is None else rounds
    if rounds < record["rounds"]:
        raise ConfigError(f"rounds={rounds} would shorten reference {name}: it has {record['rounds']}; "
                          f"allowed: {record['rounds']} or more")
    raw = json.loads((published / "config.json").read_text())
    raw.pop("key", None)
    # data_root is this project's, not the publisher's (it is not part of the config's key)
    cfg = Config.from_dict(raw).replace(num_rounds=rounds, data_root=str(PROJECT / "data"))
    folder = Path(runs if runs is not None else RUNS) / name
    run = results.run(cfg, out=folder, progress=progress, log=log)
    return publish(run.dir, name, command=extend_command(name), data=record["data"], root=root,
                   machine=machines(record["machine"], record["rounds"], rounds))


def _accuracies(folder: Path) -> tuple[float, float]:
    """(best, final) test accuracy of a published run folder: the final one is its last evaluated round."""
    import pandas as pd

    acc = pd.read_csv(folder / "metrics.csv").test_acc.dropna()
    return float(acc.max()), float(acc.iloc[-1])


def readme(index: dict, root: Path = ROOT) -> str:
    """reference/README.md: a table of every run's accuracy and cost, then what each run is and how to regenerate it."""
    lines = ["# Reference runs", "",
             "Finished long runs shipped with the project (written by `fl_lib.study.reference.publish`;",
             "do not edit by hand: `index.json` holds each file's sha256, checked on every load).", "",
             "| run | rounds | best test acc | final test acc | wall h | data |", "|---|---|---|---|---|---|"]
    for name, r in sorted(index.items()):
        best, final = _accuracies(Path(root) / name)
        lines.append(f"| {name} | {r['rounds']} | {best:.4f} | {final:.4f} | {r['wall_seconds'] / 3600:.2f} "
                     f"| {r['data']} |")
    lines.append("")
    for name, r in sorted(index.items()):
        lines += [f"## {name}", "",
                  f"- rounds: {r['rounds']}; data: {r['data']}",
                  f"- fl_lib {r['fl_lib']} on {r['machine']}; wall time {r['wall_seconds'] / 3600:.2f} h",
                  f"- regenerate or extend: `{r['command']}`", ""]
    return "\n".join(lines)


def _stored_keys(root: Path) -> dict[str, str | None]:
    """{name: the config key written into its config.json} of every published run."""
    return {name: json.loads((Path(root) / name / "config.json").read_text()).get("key") for name in read_index(root)}


def find(cfg: Config, root: Path = ROOT, _keys: dict | None = None) -> str | None:
    """The published run that is `cfg` carried to at least as many rounds (the longest such), or None.

    Matched by the config's key (`Config.key()`, written into every config.json): the key leaves out
    `num_rounds`, so a lesson's short live run and a longer reference of the same experiment share it,
    and it hashes an .npz file's content, not its path, so the match holds on any machine.
    """
    key, index, found = cfg.key(), read_index(root), None
    for name, stored in (_stored_keys(root) if _keys is None else _keys).items():
        record = index[name]
        if stored == key and record["rounds"] >= cfg.num_rounds and (
                found is None or record["rounds"] > index[found]["rounds"]):
            found = name
    return found


def longer(cfgs: dict, root: Path = ROOT) -> dict:
    """{key: reference name} for each of `cfgs` ({key: Config}, e.g. keyed by (label, seed)) that a published run
    carries past the config's own `num_rounds` (`find`); configs without one are left out."""
    index, keys = read_index(root), _stored_keys(root)  # each config.json read once, not once per config
    found = {k: find(cfg, root, keys) for k, cfg in cfgs.items()}
    return {k: n for k, n in found.items() if n is not None and index[n]["rounds"] > cfgs[k].num_rounds}


def stacked(found: dict, columns: tuple[str, ...], root: Path = ROOT):
    """The metrics of the runs in `found` ({key: name}, as `longer` gives) in one table, with each key's parts as
    `columns` (e.g. ("label", "seed")), so a lesson handles reference runs like its own sweep's table."""
    import pandas as pd

    frames = [load(name, root).metrics.assign(**dict(zip(columns, k if isinstance(k, tuple) else (k,))))
              for k, name in found.items()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(columns))


def frame(prefix: str, fields=("bits", "seed"), root: Path = ROOT):
    """The metrics of every published run under `prefix`, one table: a `reference` column (its name) and `fields`
    of its config as columns, so a lesson groups reference runs as it groups its own."""
    import pandas as pd

    frames = []
    for name in names(root, prefix):
        run = load(name, root)
        frames.append(run.metrics.assign(reference=name, **{f: getattr(run.config, f) for f in fields}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def table(prefix: str = "", root: Path = ROOT):
    """One row per published run under `prefix`: its data, rounds, best and final accuracy, wall time and machine."""
    import pandas as pd

    index = read_index(root)
    rows = []
    for name in names(root, prefix):
        best, final = _accuracies(verify(name, root))
        r = index[name]
        rows.append({"reference": name, "data": r["data"], "rounds": r["rounds"], "best acc": round(best, 4),
                     "final acc": round(final, 4), "wall hours": round(r["wall_seconds"] / 3600, 2),
                     "machine": r["machine"], "fl_lib": r["fl_lib"]})
    return pd.DataFrame(rows)


def format_table(prefix: str = "", root: Path = ROOT) -> str:
    """One line per published run (each verified and loaded): rounds, best accuracy, wall hours, command."""
    lines = []
    for name in names(root, prefix):
        run = load(name, root)
        r = read_index(root)[name]
        best = run.metrics.test_acc.max()
        lines.append(f"{name}: {r['rounds']} rounds, best test accuracy {best:.4f}, "
                     f"{r['wall_seconds'] / 3600:.2f} h on {r['machine']} (fl_lib {r['fl_lib']})\n"
                     f"  extend: {r['command']}")
    return "\n".join(lines) if lines else f"no reference runs under {Path(root)}" + (f" named {prefix}*" if prefix else "")
