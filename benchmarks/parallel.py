"""Every core: engine=pool and engine=auto against the sequential engine, and run_many against a loop.

    python benchmarks/parallel.py --cifar10 ../shared/data/cifar10_subset.npz
    python benchmarks/parallel.py --cores 1 ...   # what happens on a one-core machine

Both figures are measured side by side in one run: the sequential process uses
every core as torch's threads, the pool one process per core with one thread
each. Rounds alternate between the two engines (A B, B A, ...), so both see the
same load; the ratio is the median of the pairs (at least 3). Worker start-up
(each worker imports torch once per Federation) is timed apart, since a run pays
it once. engine=auto times its first round sequentially and then keeps that or
moves to the pool (simulator/backends.py); the benchmark prints what it chose and
checks that auto is not slower than sequential. run_many (workers=0) likewise
measures whether processes pay; the benchmark prints what it decided.
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
from fl_lib.simulator.federation import Federation

TARGET = 1.25  # issue 14's goal for the pool on a 2-core machine where rounds are long enough to pay
AUTO_TARGET = 0.95  # engine=auto and run_many's own choice: never slower than sequential / a loop, beyond noise


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cifar10", default="synthetic", help="CIFAR-10 .npz (default: synthetic data)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per engine and model (default 3, at least 3)")
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
    repeats = 1 if args.quick else max(3, args.rounds)
    for name, cfg in workloads.items():
        cfg = cfg.replace(device="cpu", checkpoint_every=0, num_rounds=10_000)
        feds = {"sequential": Federation(cfg), "pool": Federation(cfg.replace(engine="pool")),
                "auto": Federation(cfg.replace(engine="auto"))}
        print(f"\n{name}:")
        first = {}
        for label in ("pool", "auto", "sequential"):  # round 1: the pool starts its workers, auto times one way
            start = time.perf_counter()
            feds[label].round(1)
            first[label] = time.perf_counter() - start
        feds["auto"].round(2)  # auto's second round: the other way, then it decides
        for label in ("pool", "sequential"):
            feds[label].round(2)
        auto = feds["auto"].backend
        timed = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in auto.measured.items())
        print(f"  engine=auto timed a sample's training ({timed}) and chose {auto.chosen.name}")
        times = {label: [] for label in feds}
        for i, t in enumerate(range(3, repeats + 3)):
            order = list(feds) if i % 2 == 0 else list(reversed(feds))
            for label in order:
                start = time.perf_counter()
                feds[label].round(t)
                times[label].append(time.perf_counter() - start)
        for fed in feds.values():
            fed.close()
        pool_ratio = statistics.median(s_ / p_ for s_, p_ in zip(times["sequential"], times["pool"]))
        auto_ratio = statistics.median(s_ / a_ for s_, a_ in zip(times["sequential"], times["auto"]))
        print(f"  seconds per round, medians of {repeats}: sequential {statistics.median(times['sequential']):.2f}, "
              f"pool {statistics.median(times['pool']):.2f}, auto {statistics.median(times['auto']):.2f} "
              f"(first pool round with start-up: {first['pool']:.1f} s)")
        met.append((f"pool vs sequential, {name}", pool_ratio, TARGET if cores >= 2 else 0.95))
        met.append((f"auto ({auto.chosen.name}) vs sequential, {name}", auto_ratio, AUTO_TARGET))
    ratio, decision = bench_run_many(args, repeats)
    met.append((f"run_many vs a loop ({decision})", ratio, AUTO_TARGET))
    print(f"\nTargets ({cores} core(s); the pool's goal {TARGET}x on 2 cores where it pays, no loss on 1; "
          f"auto and run_many never slower than sequential / a loop)")
    for label, ratio, goal in met:
        print(f"  {label:<62} {ratio:5.2f}x  target >= {goal:.2f}x  {'met' if ratio >= goal else 'NOT met'}")
    return 0


def bench_run_many(args, repeats: int) -> tuple[float, str]:
    """The same configs (different seeds) through a loop of results.run and through run_many, alternately.

    Returns the median ratio loop / run_many and what run_many decided (processes or one loop).
    """
    base = preset("quick", dataset=args.cifar10, num_rounds=args.run_rounds, device="cpu", checkpoint_every=0)
    if args.quick:
        base = preset("smoke", num_rounds=args.run_rounds)
    configs = [base.replace(seed=s) for s in range(args.runs)]
    pairs, decisions = [], []
    for repeat in range(repeats):
        took = {}
        order = ["loop", "run_many"] if repeat % 2 == 0 else ["run_many", "loop"]
        for label in order:
            with tempfile.TemporaryDirectory() as root:
                start = time.perf_counter()
                if label == "loop":
                    for cfg in configs:
                        results.run(cfg, root=root, progress=False)
                else:
                    said = []
                    results.run_many(configs, root=root, progress=False, log=said.append)
                    decisions.append("one loop" if said else "processes")
                took[label] = time.perf_counter() - start
        print(f"  {len(configs)} runs of {args.run_rounds} round(s): loop {took['loop']:.1f} s, "
              f"run_many {took['run_many']:.1f} s ({decisions[-1]})")
        pairs.append(took["loop"] / took["run_many"])
    return statistics.median(pairs), "/".join(sorted(set(decisions)))


if __name__ == "__main__":
    sys.exit(main())
