"""Seconds per round of one config in process, in Flower's Simulation Runtime and on a localhost deployment.

    python benchmarks/flower_bench.py                                  # smoke (synthetic)
    python benchmarks/flower_bench.py --preset quick --dataset ../shared/data/cifar10_subset.npz

Also prints fl_lib's counted upload bytes against the bytes of Flower's own
messages. The deployment is `flower local` (flower_local.py): a SuperLink and one
SuperNode per client on 127.0.0.1 (free ports), stopped with everything they
started at the end, in up to three set-ups (`--deployments`):
  flower       Flower's defaults: a fresh ClientApp process per message, its SuperNode as is;
  long-lived   fl_lib's long-lived ClientApps (flower_clientapps.py), Flower's SuperNode as is;
  short-waits  long-lived ClientApps and the SuperNode's idle waits shortened (flower_supernode.py),
               what `flower local` runs by default.
Each row runs `--repeats` times, the rows taking turns (so that a slower minute of
the machine falls on all of them), and prints the median of the repeats.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from fl_lib.core.config import preset
from fl_lib.runtime import flower, flower_local, results


# --deployments: (ClientApps, SuperNode) of `flower local`
DEPLOYMENTS = {"flower": (flower_local.PER_MESSAGE, flower_local.STOCK),
               "long-lived": (flower_local.LONG_LIVED, flower_local.STOCK),
               "short-waits": (flower_local.LONG_LIVED, flower_local.SHORT_WAITS)}
LABELS = {"flower": "deployment, Flower's defaults",
          "long-lived": "deployment, long-lived ClientApps",
          "short-waits": "deployment, long-lived ClientApps, short waits"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="smoke")
    p.add_argument("--dataset", default=None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--num-clients", type=int, default=None)
    p.add_argument("--no-simulation", action="store_true", help="leave out Flower's Simulation Runtime (Ray)")
    p.add_argument("--deployments", default=",".join(DEPLOYMENTS),
                   help="the deployments to time, comma-separated (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each row; the median is printed (default 3)")
    args = p.parse_args(argv)
    modes = [m for m in args.deployments.split(",") if m]
    if not modes or set(modes) - set(DEPLOYMENTS):
        p.exit(2, f"error: deployments={args.deployments!r} is not allowed: must be a comma-separated list of "
                  f"{', '.join(DEPLOYMENTS)}\n")
    if not 1 <= args.repeats <= 20:
        p.exit(2, f"error: repeats={args.repeats} is not allowed: must be int in [1, 20]\n")
    kw = {"num_rounds": args.rounds, "device": "cpu", "checkpoint_every": 0}
    if args.dataset:
        kw["dataset"] = args.dataset
    if args.num_clients:
        kw["num_clients"] = args.num_clients
    cfg = preset(args.preset, **kw)
    os.environ["OMP_NUM_THREADS"] = "1"  # every process, and this one: one thread each, the same arithmetic
    torch.set_num_threads(1)
    names = ["in process"] + ([] if args.no_simulation else ["Flower simulation"]) + modes
    timed = {name: [] for name in names}  # name -> [(wall s, run)] one per repeat
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name in names:
                out = Path(tmp) / f"{name.replace(' ', '-')}-{repeat}"
                start = time.perf_counter()
                _run(name, cfg, out)
                timed[name].append((time.perf_counter() - start, results.load_run(out)))
                print(f"repeat {repeat + 1}/{args.repeats}: {name} {timed[name][-1][0]:.1f} s", flush=True)
    print(f"\n{args.preset}, {cfg.dataset}, {cfg.num_clients} clients, {cfg.num_rounds} rounds, bits={cfg.bits}, "
          f"median of {args.repeats} run(s) each")
    print(f"{'runtime':<50}{'wall s':>8}{'after r1':>9}{'x in proc':>10}{'fl_lib up MB':>14}"
          f"{'Flower up MB':>14}{'Flower down MB':>16}{'final acc':>10}")
    base = statistics.median(_after_first(run) for _, run in timed["in process"])
    for name in names:
        wall = statistics.median(w for w, _ in timed[name])
        later = statistics.median(_after_first(run) for _, run in timed[name])
        s = timed[name][0][1].summary
        print(f"{LABELS.get(name, name):<50}{wall:8.1f}{later:9.2f}{later / base:10.2f}"
              f"{s['total_upload_mb']:14.3f}{s.get('flower_bytes_up', 0) / 1e6:14.3f}"
              f"{s.get('flower_bytes_down', 0) / 1e6:16.3f}{s['final_test_acc']:10.4f}")
    print("after r1: median seconds of rounds 2.. (round 1 also builds each client's data and model); "
          "x in proc: that against the in-process run's. The goal for a localhost deployment: <= 1.5x")
    return 0


def _run(name: str, cfg, out: Path) -> None:
    if name == "in process":
        results.run(cfg, out, progress=False)
    elif name == "Flower simulation":
        flower.run_simulation(cfg, out, progress=False)
    else:
        clientapps, supernode = DEPLOYMENTS[name]
        code = flower_local.run(cfg, out, round_timeout=900, clientapps=clientapps, supernode=supernode)
        if code != 0:
            raise SystemExit(f"the {name} deployment failed ({code}); see {out / flower_local.LOGS}")


def _after_first(run) -> float:
    """Median seconds per round after the first (all rounds if there is one)."""
    seconds = run.metrics["seconds"].tolist()
    return statistics.median(seconds[1:] or seconds)


if __name__ == "__main__":
    sys.exit(main())
