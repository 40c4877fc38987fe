"""`python benchmarks/paper_cost.py`: what Lee & Lee's Fig. 1 costs at the paper's settings, FP32 and INT16 uploads.

The question (issue 23): `fl_lib run --preset paper` (SqueezeNet 1.0, 10 clients,
Dirichlet 0.5, E = 5, B = 64, 300 rounds, evaluation every round) on all 50,000
CIFAR-10 training and 10,000 test images is too slow for a CPU. How long does a
round take on the machine at hand, and so the whole run, for --bits 32 and 16?

A round's cost is linear in what it processes, so each piece is timed on a fixed
slice through the engine's own objects (the Trainer, the pipeline's transport and
aggregator that `Federation` builds for the preset) and scaled:

  train      one epoch of `Trainer.train` over the first `--train-samples` images
             of the largest client's Dirichlet share: samples/s;
  upload     one client's upload of all 740,554 parameters: the transport's
             encode + decode (+ quantization error for INT16), seconds;
  aggregate  the server's weighted mean of 10 decoded uploads, seconds;
  evaluate   `Trainer.evaluate` of the global model on the first `--eval-samples`
             test images: samples/s.

The data are the CIFAR-10 subset (5,085 + 1,017 images) repeated in order up to
the full set's 50,000 + 10,000, so partitions, tensors and gathers have the real
sizes; a step's cost does not depend on what the pixels show. Without the subset,
synthetic images of the same shape stand in. Every figure is the median of
`--repeats` measurements, the two widths timed alternately (32 16, 16 32, ...)
so a load that drifts during the run falls on both alike.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from fl_lib.core.aggregators.base import Received
from fl_lib.core.config import Config, preset
from fl_lib.core.data import Dataset, head, load_dataset, synthetic
from fl_lib.core.errors import ConfigError
from fl_lib.core.stages import Job, Upload
from fl_lib.core.trainer import Trainer
from fl_lib.simulator.federation import Federation, resolve_device

SUBSET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_subset.npz"
FULL_TRAIN, FULL_TEST = 50_000, 10_000  # CIFAR-10's own split sizes
SUBSET_TRAIN, SUBSET_TEST = 5_085, 1_017  # the shared subset's sizes, also those of the synthetic stand-in
BITS = (32, 16)


@dataclasses.dataclass(frozen=True)
class Measured:
    """One upload width's medians: training and evaluation throughput, one upload's codec, one aggregation."""

    bits: int
    train_per_s: float  # training samples per second (forward, backward, SGD step, augmentation)
    upload_s: float  # seconds of one client's encode + decode
    aggregate_s: float  # seconds of the server's mean of one round's uploads
    eval_per_s: float  # test samples per second
    train_range: tuple = (math.nan, math.nan)  # training samples/s of the slowest and the fastest repeat


@dataclasses.dataclass(frozen=True)
class Round:
    """What one round of a config processes on the full dataset."""

    train_samples: float  # E x (clients per round) x N / K: every client's E epochs
    uploads: int  # clients per round
    test_samples: float  # test images evaluated per round (N_test / eval_every)
    rounds: int

    @classmethod
    def of(cls, cfg: Config, num_train: int = FULL_TRAIN, num_test: int = FULL_TEST) -> "Round":
        m = cfg.clients_per_round
        return cls(cfg.local_epochs * m * num_train / cfg.num_clients, m, num_test / cfg.eval_every, cfg.num_rounds)


def round_seconds(m: Measured, r: Round) -> dict[str, float]:
    """The terms of one round's seconds: train samples / rate + uploads x codec + aggregation + test samples / rate."""
    terms = {"train": r.train_samples / m.train_per_s, "upload": r.uploads * m.upload_s,
             "aggregate": m.aggregate_s, "evaluate": r.test_samples / m.eval_per_s}
    terms["round"] = sum(terms.values())
    terms["total_h"] = terms["round"] * r.rounds / 3600
    return terms


# -- data -----------------------------------------------------------------------------------
def tile(ds: Dataset, num_train: int, num_test: int) -> Dataset:
    """`ds` repeated in order until its splits hold num_train and num_test samples (statistics kept)."""
    train = torch.arange(num_train) % len(ds.y_train)
    test = torch.arange(num_test) % len(ds.y_test)
    return dataclasses.replace(ds, x_train=ds.x_train[train], y_train=ds.y_train[train],
                               x_test=ds.x_test[test], y_test=ds.y_test[test])


def load_subset(path: str | None) -> tuple[Dataset, str]:
    """The CIFAR-10 subset at `path` (default ../shared/data), or synthetic images of its shape if it is absent."""
    path = Path(path) if path else SUBSET
    if path.is_file():
        return load_dataset(str(path)), str(path)
    print(f"note: {path} is absent; synthetic images of the same shape stand in (the cost per sample is the same)")
    return synthetic(num_train=SUBSET_TRAIN, num_test=SUBSET_TEST, seed=0), "synthetic"


# -- timing ---------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn, device: torch.device) -> float:
    """Wall seconds of fn(), with the device's queued work finished before both clock readings."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


class Probe:
    """One upload width's pieces of a round, each runnable on its own through the engine's objects."""

    def __init__(self, fed: Federation, train_samples: int, eval_samples: int):
        self.fed, self.bits = fed, fed.cfg.bits
        biggest = max(range(len(fed.clients)), key=lambda k: fed.sizes[k])
        self.idx = fed.clients[biggest][:train_samples]
        # The Federation's own Trainer class and config with E = 1, over the slice and a test slice.
        self.trainer = Trainer(fed.cfg.replace(local_epochs=1), head(fed.data, 0, eval_samples), [self.idx],
                               [len(self.idx)], fed.device)
        self.values = {k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()}
        self.received = None

    def train(self) -> None:
        """E = 1 over the slice. The values are views of the trainer's model, as in the engine, where the upload
        encodes them at once: `measure` runs upload right after train, before evaluate reloads the model."""
        self.values, _ = self.trainer.weights(0, 1, self.fed.global_state)

    def upload(self) -> None:
        """Client 0's transport as in ClientSide.upload: encode, then the server's decode."""
        job = Job(0, 1, self.bits)
        up = Upload(0, self.bits, len(self.idx), 0.0, None, None)
        reference = self.fed.client_side.reference(self.fed.global_state)
        self.received = self.fed.pipeline.transport.send(job, self.values, up, reference).received

    def aggregate(self) -> None:
        """The server's aggregator over a round's worth of uploads (the decoded one, weighted by each n_k)."""
        fed = self.fed
        if self.received is None:
            self.upload()
        received = [Received(k, self.received, fed.sizes[k]) for k in range(fed.cfg.clients_per_round)]
        fed.pipeline.aggregator.aggregate(1, fed.global_state, received, list(range(len(received))))

    def evaluate(self) -> None:
        self.trainer.evaluate(self.fed.global_state)


def measure(probes: list[Probe], repeats: int, device: torch.device) -> list[Measured]:
    """Medians of `repeats` timings of each probe's pieces, the probes taken in turn (A B, then B A, ...)."""
    pieces = ("train", "upload", "aggregate", "evaluate")
    for p in probes:  # untimed warm-up: first-call costs (allocator, kernels) stay out
        for name in pieces:
            getattr(p, name)()
    times = {(p.bits, name): [] for p in probes for name in pieces}
    for r in range(repeats):
        for p in (probes if r % 2 == 0 else probes[::-1]):
            for name in pieces:
                times[p.bits, name].append(timed(getattr(p, name), device))
    out = []
    for p in probes:
        med = {name: statistics.median(times[p.bits, name]) for name in pieces}
        rates = sorted(len(p.idx) / t for t in times[p.bits, "train"])
        out.append(Measured(p.bits, len(p.idx) / med["train"], med["upload"], med["aggregate"],
                            len(p.trainer.data.y_test) / med["evaluate"], (rates[0], rates[-1])))
    return out


def int16_over_fp32(terms: dict[int, dict[str, float]]) -> tuple[float, float]:
    """INT16 / FP32 seconds per round: from each width's own timings, and with the width-independent terms shared.

    Training, aggregation (of decoded float32 values) and evaluation run the same code at
    either width; only the upload differs. The second ratio puts the mean of the two widths'
    width-independent terms under both, so timing noise in those terms does not pass for a
    difference between the widths.
    """
    own = terms[16]["round"] / terms[32]["round"]
    common = statistics.mean(t["train"] + t["aggregate"] + t["evaluate"] for t in (terms[16], terms[32]))
    return own, (common + terms[16]["upload"]) / (common + terms[32]["upload"])


# -- report ---------------------------------------------------------------------------------
def report(results: list[Measured], r: Round, probes: list[Probe]) -> dict[int, dict[str, float]]:
    """Print each width's measured quantities, the formula and the extrapolation; return the terms by width."""
    p = probes[0]
    params = sum(v.numel() for v in p.fed.global_state.values() if v.is_floating_point())
    print(f"\nmeasured (medians): training on {len(p.idx)} images x 1 epoch, B = {p.fed.cfg.batch_size}; "
          f"upload of {params:,} parameters; mean of {r.uploads} uploads; evaluation of {len(p.trainer.data.y_test)} "
          f"test images")
    out = {}
    for m in results:
        out[m.bits] = round_seconds(m, r)
        print(f"  {m.bits:2d} bits: train {m.train_per_s:7.1f} samples/s (repeats {m.train_range[0]:.0f} to "
              f"{m.train_range[1]:.0f}), upload {m.upload_s * 1e3:6.1f} ms, aggregate {m.aggregate_s * 1e3:5.1f} ms, "
              f"evaluate {m.eval_per_s:7.1f} samples/s")
    print(f"\nseconds per round = {r.train_samples:,.0f} training samples / train rate + {r.uploads} x upload "
          f"+ aggregate + {r.test_samples:,.0f} test samples / evaluate rate; total = {r.rounds} x round")
    for m in results:
        t = out[m.bits]
        print(f"  {m.bits:2d} bits: {t['train']:9.1f} + {t['upload']:6.2f} + {t['aggregate']:5.2f} + "
              f"{t['evaluate']:7.1f} = {t['round']:9.1f} s per round; x {r.rounds} = {t['total_h']:7.2f} h")
    if {16, 32} <= set(out):
        own, shared = int16_over_fp32(out)
        print(f"  INT16 / FP32 per round: {own:.3f} from each width's own timings; {shared:.4f} with training, "
              f"aggregation and evaluation (the same code at both widths) shared, so only the uploads differ")
    return out


def _header(device, threads, source) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"fl_lib paper_cost: torch {torch.__version__}, device {device}, {threads} threads, {os.cpu_count()} cores "
          f"({platform.processor() or platform.machine()}), load average {load:.1f}")
    print(f"data: {source} tiled to {FULL_TRAIN:,} training and {FULL_TEST:,} test images")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/paper_cost.py", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--repeats", type=int, default=3, help="timings per figure, after one warm-up (at least 3)")
    p.add_argument("--data", default=None, help=f"the CIFAR-10 subset .npz (default {SUBSET})")
    p.add_argument("--train-samples", type=int, default=1024,
                   help="training images timed per repeat, about a fifth of a client's share (default 1024: 16 "
                        "batches of 64)")
    p.add_argument("--eval-samples", type=int, default=2000, help="test images timed per repeat (default 2000)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    return p


def check(args) -> str | None:
    """One line naming a value out of its range, or None."""
    if args.repeats < 3:
        return f"--repeats={args.repeats} is out of range: at least 3 (a median needs them)"
    for name, value, top in (("train-samples", args.train_samples, FULL_TRAIN), ("eval-samples", args.eval_samples,
                                                                                  FULL_TEST)):
        if not 1 <= value <= top:
            return f"--{name}={value} is out of range: 1 to {top:,}"
    return None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    error = check(args)
    if error:
        print(error, file=sys.stderr)
        return 2
    try:
        device = resolve_device(args.device)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    subset, source = load_subset(args.data)
    _header(device, torch.get_num_threads(), source)
    data = tile(subset, FULL_TRAIN, FULL_TEST)
    probes = []
    for bits in BITS:
        cfg = preset("paper", bits=bits, dataset=source, device=str(device), checkpoint_every=0)
        probes.append(Probe(Federation(cfg, data=data), args.train_samples, args.eval_samples))
    fed = probes[0].fed
    print(f"preset paper: {fed.cfg.model}, {fed.cfg.num_clients} clients, {fed.cfg.partition} alpha = "
          f"{fed.cfg.alpha}, E = {fed.cfg.local_epochs}, B = {fed.cfg.batch_size}, C = {fed.cfg.client_fraction}, "
          f"{fed.cfg.num_rounds} rounds, evaluation every {fed.cfg.eval_every}; client sizes "
          f"{min(fed.sizes):,} to {max(fed.sizes):,}; repeats {args.repeats}")
    report(measure(probes, args.repeats, device), Round.of(fed.cfg), probes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
