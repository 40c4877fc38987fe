"""Seconds per round of one config in process, in Flower's Simulation Runtime and on a localhost deployment.

    python benchmarks/flower_bench.py                                  # smoke (synthetic)
    python benchmarks/flower_bench.py --preset quick --dataset ../shared/data/cifar10_subset.npz

Also prints fl_lib's counted upload bytes against the bytes of Flower's own
messages. The deployment is `flower local` (flower_local.py): a SuperLink and one
SuperNode per client on 127.0.0.1 (free ports), stopped with everything they
started at the end; once with Flower's default ClientApps (a fresh process per
message), once with fl_lib's long-lived ones (flower_clientapps.py).
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="smoke")
    p.add_argument("--dataset", default=None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--num-clients", type=int, default=None)
    p.add_argument("--no-simulation", action="store_true", help="leave out Flower's Simulation Runtime (Ray)")
    p.add_argument("--clientapps", default=",".join(flower_local.CLIENTAPPS),
                   help="the deployments to time, comma-separated (default: %(default)s)")
    args = p.parse_args(argv)
    modes = [m for m in args.clientapps.split(",") if m]
    if not modes or set(modes) - set(flower_local.CLIENTAPPS):
        p.exit(2, f"error: clientapps={args.clientapps!r} is not allowed: must be a comma-separated list of "
                  f"{', '.join(flower_local.CLIENTAPPS)}\n")
    kw = {"num_rounds": args.rounds, "device": "cpu", "checkpoint_every": 0}
    if args.dataset:
        kw["dataset"] = args.dataset
    if args.num_clients:
        kw["num_clients"] = args.num_clients
    cfg = preset(args.preset, **kw)
    os.environ["OMP_NUM_THREADS"] = "1"  # every process, and this one: one thread each, the same arithmetic
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        results.run(cfg, tmp / "in-process", progress=False)
        rows.append(("in process", time.perf_counter() - start, results.load_run(tmp / "in-process")))
        if not args.no_simulation:
            start = time.perf_counter()
            flower.run_simulation(cfg, tmp / "simulation", progress=False)
            rows.append(("Flower simulation", time.perf_counter() - start, results.load_run(tmp / "simulation")))
        for mode in modes:
            out = tmp / f"deployment-{mode}"
            start = time.perf_counter()
            code = flower_local.run(cfg, out, round_timeout=900, clientapps=mode)
            if code != 0:
                raise SystemExit(f"the {mode} deployment failed ({code}); see {out / flower_local.LOGS}")
            rows.append((f"deployment, {mode} ClientApps", time.perf_counter() - start, results.load_run(out)))
    print(f"\n{args.preset}, {cfg.dataset}, {cfg.num_clients} clients, {cfg.num_rounds} rounds, bits={cfg.bits}")
    print(f"{'runtime':<36}{'wall s':>8}{'s/round':>9}{'after r1':>9}{'x in proc':>10}{'fl_lib up MB':>14}"
          f"{'Flower up MB':>14}{'Flower down MB':>16}{'final acc':>10}")
    base = _after_first(rows[0][2])
    for name, wall, run in rows:
        s = run.summary
        later = _after_first(run)
        print(f"{name:<36}{wall:8.1f}{s['seconds_per_round']:9.2f}{later:9.2f}{later / base:10.2f}"
              f"{s['total_upload_mb']:14.3f}{s.get('flower_bytes_up', 0) / 1e6:14.3f}"
              f"{s.get('flower_bytes_down', 0) / 1e6:16.3f}{s['final_test_acc']:10.4f}")
    print("after r1: median seconds of rounds 2.. (round 1 also builds each client's data and model); "
          "x in proc: that against the in-process run's. The goal for a localhost deployment: <= 1.5x")
    return 0


def _after_first(run) -> float:
    """Median seconds per round after the first (all rounds if there is one)."""
    seconds = run.metrics["seconds"].tolist()
    return statistics.median(seconds[1:] or seconds)


if __name__ == "__main__":
    sys.exit(main())
