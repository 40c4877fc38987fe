"""Every core: engine=pool against the sequential engine, and run_many against a loop (issue 14).

    python benchmarks/parallel.py --cifar10 ../shared/data/cifar10_subset.npz
    python benchmarks/parallel.py --cores 1 ...   # what happens on a one-core machine

Both figures are measured side by side in one run: the sequential process uses
every core as torch's threads, the pool one process per core with one thread
each. Rounds alternate between the two engines (A B, B A, ...), so both see the
same load; the ratio is the median of the pairs. Worker start-up (each worker
imports torch once per Federation) is timed apart, since a run pays it once.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch

from fl_lib.simulator import pool
from fl_lib.runtime import results
from fl_lib.core.config import preset
from fl_lib.simulator.federation import Federation, use_pool

TARGET = 1.25  # issue 14's goal on this 2-core machine, for both figures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cifar10", default="synthetic", help="CIFAR-10 .npz (default: synthetic data)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per engine and model (default 3)")
    p.add_argument("--runs", type=int, default=4, help="configs for run_many (default 4)")
    p.add_argument("--run-rounds", type=int, default=2, help="rounds of each run_many config (default 2)")
    p.add_argument("--cores", type=int, default=None, help="pretend this process has only this many cores")
    p.add_argument("--quick", action="store_true", help="tiny sizes that exercise the code, not a measurement")
    args = p.parse_args(argv)
    if args.cores:
        pool.CORE_BUDGET = args.cores
    cores = pool.usable_cores()
    torch.set_num_threads(cores)
    print(f"{cores} usable core(s); sequential runs use {cores} torch thread(s), the pool {cores} process(es) "
          f"of {max(1, cores // cores)} thread(s); torch {torch.__version__}")
    # the study's two models at the study's batch size: quick (cifar_cnn, E=1) and paper (SqueezeNet 1.0, E=5)
    workloads = {"quick (cifar_cnn, B=64, E=1)": preset("quick", dataset=args.cifar10),
                 "paper (squeezenet1_0, B=64, E=1)": preset("paper", dataset=args.cifar10, local_epochs=1)}
    if args.quick:
        workloads = {"smoke": preset("smoke")}
        args.rounds, args.runs, args.run_rounds = 1, 2, 1
    met = []
    for name, cfg in workloads.items():
        cfg = cfg.replace(device="cpu", checkpoint_every=0, num_rounds=10_000)
        seq, par = Federation(cfg), Federation(cfg.replace(engine="pool"))
        print(f"\n{name}: engine=auto would {'use the pool' if use_pool(cfg.replace(engine='auto'), seq) else 'stay sequential'} here")
        start = time.perf_counter()
        par.round(1)  # starts the workers
        startup = time.perf_counter() - start
        seq.round(1)
        times = {"sequential": [], "pool": []}
        for t in range(2, args.rounds + 2):
            order = [("sequential", seq), ("pool", par)] if t % 2 == 0 else [("pool", par), ("sequential", seq)]
            for label, fed in order:
                start = time.perf_counter()
                fed.round(t)
                times[label].append(time.perf_counter() - start)
        par.close()
        ratio = statistics.median(s / p_ for s, p_ in zip(times["sequential"], times["pool"]))
        print(f"  seconds per round: sequential {statistics.median(times['sequential']):.2f}, "
              f"pool {statistics.median(times['pool']):.2f} (first pool round with start-up: {startup:.1f} s)")
        met.append((f"pool vs sequential, {name}", ratio))
    met.append(("run_many vs a loop", bench_run_many(args)))
    print(f"\nTargets ({cores} core(s); goal {TARGET}x on 2 cores, no loss on 1)")
    for label, ratio in met:
        goal = TARGET if cores >= 2 else 0.95
        print(f"  {label:<52} {ratio:5.2f}x  target >= {goal:.2f}x  {'met' if ratio >= goal else 'NOT met'}")
    return 0


def bench_run_many(args) -> float:
    """The same configs (different seeds) through a loop of results.run and through run_many, alternately."""
    base = preset("quick", dataset=args.cifar10, num_rounds=args.run_rounds, device="cpu", checkpoint_every=0)
    if args.quick:
        base = preset("smoke", num_rounds=args.run_rounds)
    configs = [base.replace(seed=s) for s in range(args.runs)]
    pairs = []
    for repeat in range(2):
        took = {}
        order = ["loop", "run_many"] if repeat % 2 == 0 else ["run_many", "loop"]
        for label in order:
            with tempfile.TemporaryDirectory() as root:
                start = time.perf_counter()
                if label == "loop":
                    for cfg in configs:
                        results.run(cfg, root=root, progress=False)
                else:
                    results.run_many(configs, root=root, progress=False)
                took[label] = time.perf_counter() - start
        print(f"  {len(configs)} runs of {args.run_rounds} round(s): loop {took['loop']:.1f} s, "
              f"run_many {took['run_many']:.1f} s")
        pairs.append(took["loop"] / took["run_many"])
    return statistics.median(pairs)


if __name__ == "__main__":
    sys.exit(main())
