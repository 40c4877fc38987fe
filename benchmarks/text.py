"""`python benchmarks/text.py`: how close the Shakespeare LSTM's clients come to this machine's limit,
and what training a round's clients as one stacked computation would gain.

The question (issue 22): a text client trains 10 sequences x 80 characters per
step, one client after another. Is the CPU then mostly waiting on per-step
overhead, so that stacking a round's clients along a client dimension (one
batched matrix product per time step for all of them) would be >= 5x faster?
The answer depends on how far the sequential steps already are from the
machine's arithmetic limit, so the benchmark measures, side by side in one run:

  1. peak       FLOP/s of a large float32 `torch.matmul` (2048^3): the ceiling;
  2. sequential FLOP/s of the engine's own client step (`Trainer.train` over one
                client's batches of B = 10): the forward and backward of the
                CharLSTM through PyTorch's fused LSTM kernel;
  3. stacked    FLOP/s of the issue's design as the engine runs it (engine=batched,
                `batched.train_clients`) over the same clients: their LSTMs stacked,
                each time step one `baddbmm` over clients, autograd through the
                unrolled 80 steps. A C = 0.1 round stacks fewer at a time than it
                samples (the mean width printed: clients hold 1 to 619 sequences,
                so a round's last steps belong to a few large roles);
  4. evaluation the 954,040 test characters as a share of an E = 1 round.

Each figure is the median of `--repeats` (>= 3) alternating measurements. The
result is printed beside its goal: a stacked round can be at most
peak / sequential times faster than the sequential one, whatever its overhead.
FLOPs are counted as 6 per weight of a matrix product per character (2 forward, 4
backward: the input's and the weight's gradients); the embedding is a lookup.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from fl_lib.core.config import preset
from fl_lib.core.shakespeare import SEQ_LEN
from fl_lib.simulator import batched
from fl_lib.simulator.federation import Federation

GOAL = 5.0  # the per-round throughput goal of the stacked engine over the sequential one
B = 10  # sequences per client step (the paper's B)


def flops_per_sequence(model: torch.nn.Module) -> float:
    """Training FLOPs of one sequence: 6 per matrix weight (LSTM gates and the softmax layer) per character."""
    weights = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and not name.startswith("embed"))
    return 6.0 * weights * SEQ_LEN


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of one large float32 matrix product: the most this process gets from the cores."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def sequential_rate(fed: Federation, clients: list[int], flops_seq: float) -> float:
    """FLOP/s of the engine's own local training (Trainer.train) over `clients`, one after another."""
    tr = fed.trainer
    start = time.perf_counter()
    n = 0
    for k in clients:
        tr.train(k, 1, fed.global_state)
        n += len(tr.clients[k]) * fed.cfg.local_epochs  # sequences (tr.sizes counts characters)
    return n * flops_seq / (time.perf_counter() - start)


def stacked_rate(fed: Federation, clients: list[int], flops_seq: float) -> float:
    """FLOP/s of the batched engine's stacked text clients (`batched.train_clients`, engine=batched) over the
    same `clients` as `sequential_rate`: the issue's design, as the engine runs it."""
    tr = fed.trainer
    start = time.perf_counter()
    batched.train_clients(tr, clients, 1, fed.global_state)
    n = sum(len(tr.clients[k]) for k in clients) * fed.cfg.local_epochs
    return n * flops_seq / (time.perf_counter() - start)


def mean_width(sizes: list[int], fraction: float, epochs: int, rounds: int = 50) -> float:
    """Mean number of clients still training per step slot of a round (C = fraction), over `rounds` draws;
    `sizes` are the clients' sequence counts."""
    g = torch.Generator().manual_seed(0)
    n = len(sizes)
    m = max(1, round(fraction * n))
    total = slots = 0
    for _ in range(rounds):
        chosen = torch.randperm(n, generator=g)[:m].tolist()
        steps = [epochs * -(-sizes[k] // B) for k in chosen]
        total += sum(steps)
        slots += max(steps)
    return total / slots


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="data", help="where the Shakespeare arrays are cached (default data/)")
    p.add_argument("--repeats", type=int, default=3, help="alternating measurements per figure (at least 3)")
    p.add_argument("--clients", type=int, default=12, help="clients trained per sequential measurement")
    args = p.parse_args(argv)
    if args.repeats < 3:
        print(f"--repeats={args.repeats} is out of range: at least 3 (a median needs them)", file=sys.stderr)
        return 2
    cfg = preset("fedavg-shakespeare", data_root=args.data_root, local_epochs=1, num_rounds=1, eval_every=1,
                 engine="sequential", checkpoint_every=0)
    fed = Federation(cfg)
    tr = fed.trainer
    flops_seq = flops_per_sequence(tr.model)
    sequences = [len(c) for c in tr.clients]  # a client's training sequences (tr.sizes counts characters)
    width = mean_width(sequences, cfg.client_fraction, cfg.local_epochs)
    g = torch.Generator().manual_seed(1)  # clients near the median size: the bulk of a round's steps
    median_clients = sorted(range(len(sequences)), key=lambda k: sequences[k])[len(sequences) // 2:]
    clients = [median_clients[i] for i in torch.randperm(len(median_clients), generator=g)[:args.clients]]
    print(f"threads {torch.get_num_threads()}, {flops_seq / 1e6:.1f} MFLOP per training sequence of "
          f"{SEQ_LEN} characters, mean stacked width of a C = {cfg.client_fraction} round: {width:.1f} clients")
    peak, seq, stacked, evals = [], [], [], []
    for r in range(args.repeats):
        peak.append(matmul_peak())
        seq.append(sequential_rate(fed, clients, flops_seq))
        stacked.append(stacked_rate(fed, clients, flops_seq))
        start = time.perf_counter()
        tr.evaluate(fed.global_state)
        evals.append(time.perf_counter() - start)
        print(f"  repeat {r + 1}: peak {peak[-1] / 1e9:.0f}, sequential {seq[-1] / 1e9:.0f}, "
              f"stacked ({len(clients)} clients) {stacked[-1] / 1e9:.0f} GFLOP/s, evaluation {evals[-1]:.1f} s", flush=True)
    peak_m, seq_m, st_m, ev_m = (statistics.median(v) for v in (peak, seq, stacked, evals))
    round_flops = sum(sequences) * cfg.client_fraction * cfg.local_epochs * flops_seq
    round_s = round_flops / seq_m
    print(f"\nsequential client steps: {seq_m / 1e9:.0f} GFLOP/s = {seq_m / peak_m:.0%} of the matmul peak "
          f"({peak_m / 1e9:.0f} GFLOP/s)")
    print(f"stacked clients (engine=batched, the issue's design, {len(clients)} clients): {st_m / 1e9:.0f} GFLOP/s = "
          f"{st_m / seq_m:.2f}x the sequential steps (a C = {cfg.client_fraction} round stacks about {width:.0f} at a time)")
    ceiling = peak_m / seq_m
    print(f"evaluation of the test set: {ev_m:.1f} s against an E = 1 round's training of about {round_s:.1f} s "
          f"({ev_m / (ev_m + round_s):.0%} of a round with evaluation)")
    print(f"\ntarget stacked/sequential throughput >= {GOAL:.0f}x: measured {st_m / seq_m:.2f}x, "
          f"{'met' if st_m / seq_m >= GOAL else 'NOT met'}; no engine can exceed peak/sequential = {ceiling:.2f}x here "
          f"({'the goal is reachable' if ceiling >= GOAL else 'the goal is above what this machine can give'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
