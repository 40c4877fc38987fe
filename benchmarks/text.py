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
  3. stacked    FLOP/s of the issue's design: w clients' LSTMs stacked, each time
                step one `baddbmm` over clients, autograd through the unrolled
                80 steps; w = the mean number of clients still training at a step
                of a C = 0.1 round (about 15 of 115; clients hold 1 to 619
                sequences, so a round's last steps belong to a few large roles);
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
import torch.nn.functional as F

from fl_lib.core.config import preset
from fl_lib.core.models import CharLSTM
from fl_lib.core.shakespeare import SEQ_LEN, VOCAB
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


def _stacked_layer(x, w_ih, w_hh, bias):
    """One LSTM layer of w stacked clients: x (w, B, L, in) -> hidden states (w, B, L, H)."""
    w, b, length, _ = x.shape
    hidden = w_hh.shape[-1]
    gates_x = torch.baddbmm(bias.unsqueeze(1), x.reshape(w, b * length, -1), w_ih.transpose(1, 2))
    gates_x = gates_x.view(w, b, length, 4 * hidden)
    h = x.new_zeros(w, b, hidden)
    c = x.new_zeros(w, b, hidden)
    w_hh_t = w_hh.transpose(1, 2).contiguous()
    out = []
    for t in range(length):
        i, f, g, o = torch.baddbmm(gates_x[:, :, t], h, w_hh_t).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        out.append(h)
    return torch.stack(out, 2)


def stacked_rate(width: int, flops_seq: float, reps: int = 3) -> float:
    """FLOP/s of one SGD step of `width` stacked CharLSTM clients (the issue's design), autograd backward."""
    torch.manual_seed(0)
    model = CharLSTM(len(VOCAB))
    p = {k: v.detach().unsqueeze(0).repeat((width,) + (1,) * v.dim()).requires_grad_()
         for k, v in model.named_parameters()}
    v = len(VOCAB)
    x = torch.randint(0, v, (width, B, SEQ_LEN))
    y = torch.randint(0, v, (width * B * SEQ_LEN,))
    offsets = (torch.arange(width) * v).view(width, 1, 1)

    def step():
        e = p["embed.weight"].reshape(width * v, -1)[x + offsets]
        h = _stacked_layer(e, p["lstm.weight_ih_l0"], p["lstm.weight_hh_l0"],
                           p["lstm.bias_ih_l0"] + p["lstm.bias_hh_l0"])
        h = _stacked_layer(h, p["lstm.weight_ih_l1"], p["lstm.weight_hh_l1"],
                           p["lstm.bias_ih_l1"] + p["lstm.bias_hh_l1"])
        logits = torch.baddbmm(p["out.bias"].unsqueeze(1), h.reshape(width, B * SEQ_LEN, -1),
                               p["out.weight"].transpose(1, 2))
        loss = F.cross_entropy(logits.reshape(-1, v), y)
        grads = torch.autograd.grad(loss, list(p.values()))
        with torch.no_grad():
            for t, g in zip(p.values(), grads):
                t.sub_(g)

    step()
    start = time.perf_counter()
    for _ in range(reps):
        step()
    return width * B * flops_seq * reps / (time.perf_counter() - start)


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
    w = max(1, round(width))
    for r in range(args.repeats):
        peak.append(matmul_peak())
        seq.append(sequential_rate(fed, clients, flops_seq))
        stacked.append(stacked_rate(w, flops_seq))
        start = time.perf_counter()
        tr.evaluate(fed.global_state)
        evals.append(time.perf_counter() - start)
        print(f"  repeat {r + 1}: peak {peak[-1] / 1e9:.0f}, sequential {seq[-1] / 1e9:.0f}, "
              f"stacked (w={w}) {stacked[-1] / 1e9:.0f} GFLOP/s, evaluation {evals[-1]:.1f} s", flush=True)
    peak_m, seq_m, st_m, ev_m = (statistics.median(v) for v in (peak, seq, stacked, evals))
    round_flops = sum(sequences) * cfg.client_fraction * cfg.local_epochs * flops_seq
    round_s = round_flops / seq_m
    print(f"\nsequential client steps: {seq_m / 1e9:.0f} GFLOP/s = {seq_m / peak_m:.0%} of the matmul peak "
          f"({peak_m / 1e9:.0f} GFLOP/s)")
    print(f"stacked clients (the issue's design, w = {w}): {st_m / 1e9:.0f} GFLOP/s = {st_m / seq_m:.2f}x the "
          f"sequential steps")
    ceiling = peak_m / seq_m
    print(f"evaluation of the test set: {ev_m:.1f} s against an E = 1 round's training of about {round_s:.1f} s "
          f"({ev_m / (ev_m + round_s):.0%} of a round with evaluation)")
    print(f"\ntarget stacked/sequential throughput >= {GOAL:.0f}x: measured {st_m / seq_m:.2f}x, "
          f"{'met' if st_m / seq_m >= GOAL else 'NOT met'}; no engine can exceed peak/sequential = {ceiling:.2f}x here "
          f"({'the goal is reachable' if ceiling >= GOAL else 'the goal is above what this machine can give'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
