"""`python benchmarks/bench.py` (or `make bench`): how fast the engine is, each figure a ratio of two things timed side by side.

Every figure comes from one run on one machine: the two things compared are
timed alternately (A B, then B A, ...) and each ratio is the median of the
per-pair ratios, so a load that drifts during the run cancels out. Sections:

  1. engine efficiency  samples/s of `Federation.round` (no evaluation) over the
                        fastest plain PyTorch loop on the same samples and steps;
  2. common way         `CommonFedAvgBaseline` (DataLoader per client, per-sample
                        transforms, deepcopy, state-dict loop) over our round;
  3. evaluation         evaluating the global model, as a share of a round;
  4. codec              encode + decode of SqueezeNet 1.0, as a share of a client's training;
  5. memory             RSS after round 1 and round N of a smoke-sized run;
  6. batched clients    vmap over clients (`batched.py`) against the sequential engine.
It ends with one line per target: measured value, target, met or not.
"""
from __future__ import annotations

import copy
import dataclasses
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from fl_lib.simulator.backends import Batched
from fl_lib.core import codec
from fl_lib.core.config import Config, preset
from fl_lib.core.data import Dataset, load_dataset, synthetic
from fl_lib.simulator.federation import Federation, resolve_device
from fl_lib.core.models import build_model

NO_EVAL = 10**6  # eval_every and num_rounds this large: round(t) never evaluates
MEMORY_NOISE_MB, MEMORY_NOISE_FRACTION = 5.0, 0.02  # RSS growth within max(5 MB, 2%) is noise
MEMORY_TRAIN = 200  # training images of the memory run: 50 per client, 2 steps of B = 32


@dataclasses.dataclass(frozen=True)
class Workload:
    """One model on one dataset: the clients and local steps a round trains."""

    model: str
    dataset: str  # a name load_dataset knows, or an .npz path
    batch_size: int
    num_clients: int
    samples_per_client: int
    base: str  # the preset whose lr, momentum, weight decay and augmentation it uses

    def config(self, **overrides) -> Config:
        fields = dict(dataset=self.dataset, model=self.model, num_clients=self.num_clients, partition="iid",
                      client_fraction=1.0, local_epochs=1, batch_size=self.batch_size, num_rounds=NO_EVAL,
                      eval_every=NO_EVAL, checkpoint_every=0, bits=32)
        fields.update(overrides)
        return preset(self.base, **fields)


def add_arguments(p) -> None:
    p.add_argument("--model", nargs="+", default=["cnn", "squeezenet1_0"],
                   help="models of sections 1, 2 and 6 (default: cnn squeezenet1_0)")
    p.add_argument("--dataset", default=None,
                   help="dataset name or .npz path for every model (overrides --mnist and --cifar10)")
    p.add_argument("--mnist", default="synthetic-mnist",
                   help="dataset of cnn and 2nn: a name or an .npz path (default synthetic-mnist)")
    p.add_argument("--cifar10", default="synthetic",
                   help="dataset of the CIFAR models: a name or an .npz path (default synthetic)")
    p.add_argument("--clients", type=int, default=10, help="clients per round (default 10)")
    p.add_argument("--samples-per-client", type=int, default=None,
                   help="training samples each client holds (default: 30 batches for cnn and 2nn, 8 otherwise; at most the dataset over the clients)")
    p.add_argument("--batch-size", type=int, default=None, help="B (default: 10 for cnn and 2nn, 64 otherwise)")
    p.add_argument("--rounds", type=int, default=100, help="rounds of the memory run (default 100)")
    p.add_argument("--repeats", type=int, default=3, help="timed pairs per figure, after one warm-up (default 3)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--sections", default="1,2,3,4,5,6", help="comma-separated sections to run (default all)")
    p.add_argument("--quick", action="store_true", help="a tiny run (seconds) that exercises every section")


def main(args) -> int:
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _main(args)
    finally:
        torch.set_num_threads(threads)  # leave a caller's process (a test, a notebook) as it was


def _main(args) -> int:
    device = resolve_device(args.device)
    sections = {int(s) for s in str(args.sections).split(",") if s.strip()}
    repeats = 1 if args.quick else max(args.repeats, 1)
    _header(device, args)
    targets: list[tuple[str, str, str, bool]] = []
    speed = {}  # model -> engine samples/s, reused by the codec section
    for w in _workloads(args):
        if sections & {1, 2}:
            speed[w.model] = bench_engine(w, device, repeats, targets, sections)
        if 6 in sections:
            bench_batched(w, device, repeats, targets)
    if 3 in sections:
        bench_eval(args, device, repeats, targets)
    if 4 in sections:
        bench_codec(args, device, repeats, targets, speed.get("squeezenet1_0"))
    if 5 in sections:
        bench_memory(args, device, targets)
    print("\nTargets" + (" (quick: sizes far too small for the figures to mean anything)" if args.quick else ""))
    width = max((len(t[0]) for t in targets), default=0)
    for name, value, target, met in targets:
        print(f"  {name:<{width}}  {value:>10}  target {target:<8}  {'met' if met else 'NOT met'}")
    return 0


# -- timing ---------------------------------------------------------------------
def _timed(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def side_by_side(fns: dict, device, repeats: int, warmups: dict | None = None) -> dict[str, list[float]]:
    """Seconds per call of each function, timed in turn: A B C, then C B A, ... `repeats` times each.

    Each function first runs once untimed (or its entry in `warmups`, a cheaper call
    that touches the same code), so one-off costs (allocator, oneDNN kernels) stay out.
    """
    for name, fn in fns.items():
        (warmups or {}).get(name, fn)()
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(_timed(fns[name], device))
    return times


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over repeats of num_i / den_i: pairs timed next to each other share the machine's load."""
    return statistics.median(a / b for a, b in zip(num, den))


def _spread(num: list[float], den: list[float]) -> str:
    ratios = [a / b for a, b in zip(num, den)]
    return f"(pairs {min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""


# -- section 1 and 2: the engine, the plain loop, the common way ------------------------------
def bench_engine(w: Workload, device, repeats, targets, sections) -> float:
    """Sections 1 and 2 on one workload; returns the engine's training samples/s."""
    fed = Federation(w.config(device=str(device)), data=_data(w))
    samples = sum(fed.sizes)
    rounds = iter(range(1, NO_EVAL))
    fns, warmups = {"engine": lambda: fed.round(next(rounds))}, {"engine": lambda: fed.train_client(0, 0)}
    label = f"{w.model} B={w.batch_size}"
    print(f"\n[1,2] {label}: {w.num_clients} clients x {samples // w.num_clients} samples, E=1, "
          f"lr/momentum/decay/augmentation of preset {w.base}, on {w.dataset}; medians of {repeats}")
    if 1 in sections:
        # The reference is the faster of its two memory formats, both timed in the same alternation.
        for fmt, cl in (("channels_last", True), ("contiguous", False)):
            fns["plain " + fmt] = loop = PlainLoop(fed, cl)
            warmups["plain " + fmt] = loop.few_steps
    if 2 in sections:
        fns["baseline"] = baseline = CommonFedAvgBaseline(fed)
        warmups["baseline"] = baseline.warm_up
    times = side_by_side(fns, device, repeats, warmups)
    rate = samples / statistics.median(times["engine"])
    print(f"  engine round (Federation.round, no eval)  {rate:9.1f} samples/s  "
          f"({'channels_last' if fed.channels_last else 'contiguous'})")
    if 1 in sections:
        for fmt in ("channels_last", "contiguous"):
            print(f"  plain PyTorch loop, {fmt:<13}         "
                  f"{samples / statistics.median(times['plain ' + fmt]):9.1f} samples/s")
        plain = min(("plain channels_last", "plain contiguous"), key=lambda k: statistics.median(times[k]))
        ratio = paired_ratio(times[plain], times["engine"])
        print(f"  engine / fastest plain loop ({plain[6:]})  {ratio:.3f} {_spread(times[plain], times['engine'])}")
        targets.append((f"1 engine efficiency, {label}", f"{ratio:.3f}", ">= 0.95", ratio >= 0.95))
    if 2 in sections:
        ratio = paired_ratio(times["baseline"], times["engine"])
        need = 3.0 if device.type == "cuda" else 1.2
        loading = _timed(baseline.load_only, device)
        print(f"  common-way baseline round                 {samples / statistics.median(times['baseline']):9.1f}"
              f" samples/s; its DataLoaders alone take {loading * 1e3:.0f} ms a round "
              f"({100 * loading / statistics.median(times['baseline']):.0f}%)")
        print(f"  engine speed-up over the baseline         {ratio:9.2f}x {_spread(times['baseline'], times['engine'])}")
        targets.append((f"2 vs the common way, {label}", f"{ratio:.2f}x", f">= {need:g}x", ratio >= need))
    return rate


class PlainLoop:
    """The fastest plain PyTorch loop for the engine's round: same samples, batches, model and optimizer steps.

    Normalized (and, for augmentation, pre-padded) images are made once, outside
    the timing; a batch is then one gather, plus a random crop and flip as one more.
    """

    def __init__(self, fed: Federation, channels_last: bool):
        cfg, data = fed.cfg, fed.data
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        torch.manual_seed(0)
        model = build_model(cfg.model, data.num_classes, data.in_channels, data.image_size)
        self.model = model.to(fed.device, memory_format=self.fmt).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        x = (data.x_train.float() / 255 - data.mean[:, None, None]) / data.std[:, None, None]
        self.augment = cfg.augment and data.augment
        self.x = F.pad(x, (4, 4, 4, 4)) if self.augment else x.contiguous(memory_format=self.fmt)
        self.y, self.clients = data.y_train, fed.clients
        self.bs, self.epochs, self.device = cfg.batch_size, cfg.local_epochs, fed.device

    def batch(self, idx):
        if not self.augment:
            return self.x[idx], self.y[idx]
        n, (h, w) = len(idx), self.x.shape[2:]
        dy, dx = torch.randint(0, 9, (2, n), device=self.device)
        flip = torch.rand(n, device=self.device) < 0.5
        rows = dy[:, None] + torch.arange(h - 8, device=self.device)
        cols = torch.arange(w - 8, device=self.device).expand(n, -1)
        cols = dx[:, None] + torch.where(flip[:, None], w - 9 - cols, cols)
        x = self.x[idx[:, None, None, None], torch.arange(self.x.shape[1], device=self.device)[None, :, None, None],
                   rows[:, None, :, None], cols[:, None, None, :]]
        return x.contiguous(memory_format=self.fmt), self.y[idx]

    def step(self, idx):
        x, y = self.batch(idx)
        loss = F.cross_entropy(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def __call__(self):
        for idx in self.clients:
            n = len(idx)
            bs = self.bs or n
            for _ in range(self.epochs):
                order = idx[torch.randperm(n, device=self.device)]
                for start in range(0, n, bs):
                    self.step(order[start:start + bs])

    def few_steps(self, steps=3):
        idx = self.clients[0]
        for _ in range(steps):
            self.step(idx[torch.randperm(len(idx), device=self.device)[:self.bs or len(idx)]])


class CommonFedAvgBaseline:
    """BASELINE, not ours: FedAvg written the way popular FL repositories write it.

    Per round and client: a fresh DataLoader over a Subset of a torchvision-style
    dataset that turns each sample into a PIL image and runs per-sample transforms
    (ToTensor, Normalize; RandomCrop and RandomHorizontalFlip for CIFAR), a
    `copy.deepcopy` of the global model, an SGD optimizer, and a `copy.deepcopy` of
    the trained state dict; then a Python loop over the state dicts averages them
    (weighted by n_k / n, so that it computes what our engine computes).
    """

    def __init__(self, fed: Federation):
        from torchvision import transforms

        cfg, data = fed.cfg, fed.data
        steps = []
        if cfg.augment and data.augment:
            steps += [transforms.RandomCrop(data.image_size, padding=4), transforms.RandomHorizontalFlip()]
        steps += [transforms.ToTensor(), transforms.Normalize(data.mean.tolist(), data.std.tolist())]
        self.dataset = _PILDataset(data.x_train.cpu().numpy(), data.y_train.cpu().numpy(),
                                   transforms.Compose(steps))
        self.client_idxs = [c.cpu().tolist() for c in fed.clients]
        self.cfg, self.device = cfg, fed.device
        torch.manual_seed(0)
        self.net_glob = build_model(cfg.model, data.num_classes, data.in_channels, data.image_size).to(fed.device)

    def local_update(self, idxs):
        from torch.utils.data import DataLoader, Subset

        cfg = self.cfg
        net = copy.deepcopy(self.net_glob)
        net.train()
        loader = DataLoader(Subset(self.dataset, idxs), batch_size=cfg.batch_size or len(idxs), shuffle=True)
        opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        for _ in range(cfg.local_epochs):
            for images, labels in loader:
                images, labels = images.to(self.device), labels.to(self.device)
                net.zero_grad()
                loss = F.cross_entropy(net(images), labels)
                loss.backward()
                opt.step()
        return copy.deepcopy(net.state_dict())

    def warm_up(self):
        self.local_update(self.client_idxs[0][:2 * (self.cfg.batch_size or 1)])

    def load_only(self):
        """Only the data pipeline of a round: every client's DataLoader iterated once, no training."""
        from torch.utils.data import DataLoader, Subset

        for idxs in self.client_idxs:
            for images, labels in DataLoader(Subset(self.dataset, idxs), batch_size=self.cfg.batch_size or len(idxs),
                                             shuffle=True):
                images.to(self.device), labels.to(self.device)

    def __call__(self):
        w_locals = [self.local_update(idxs) for idxs in self.client_idxs]
        sizes = [len(idxs) for idxs in self.client_idxs]
        w_avg = copy.deepcopy(w_locals[0])
        for key in w_avg:
            w_avg[key] = w_avg[key] * sizes[0]
            for i in range(1, len(w_locals)):
                w_avg[key] += w_locals[i][key] * sizes[i]
            w_avg[key] = torch.div(w_avg[key], sum(sizes))
        self.net_glob.load_state_dict(w_avg)


class _PILDataset(torch.utils.data.Dataset):
    """What torchvision's MNIST and CIFAR10 datasets do per sample: array -> PIL image -> transforms."""

    def __init__(self, images, labels, transform):
        self.images = images.transpose(0, 2, 3, 1)  # NHWC, as torchvision keeps them
        self.labels, self.transform = labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        img = self.images[i]
        img = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)  # mode L or RGB
        return self.transform(img), int(self.labels[i])


# -- section 3: evaluation ---------------------------------------------------------
def bench_eval(args, device, repeats, targets):
    """Evaluation's share of a round at two presets' defaults, extrapolated to the full datasets' sizes.

    A round's training time is linear in the samples it trains, evaluation's in the
    test samples: both are timed per sample (one local epoch of the round's clients,
    at most 2,000 test samples) and scaled to the preset's round on the full dataset
    (m clients x N/K samples x E epochs, then N_test test samples). Only local SGD
    (`train_client`) is counted, not uploads: a lower bound on the round, so the
    share is an upper bound.
    """
    cases = [("quick", "cifar10", 50_000, 10_000), ("fedavg-mnist-cnn", "mnist", 60_000, 10_000)]
    for name, kind, full_train, full_test in cases:
        base = preset(name)
        dataset = args.dataset or (args.mnist if kind == "mnist" else args.cifar10)
        data = load_dataset(dataset, seed=base.seed)
        data = _shrink(data, *((400, 100) if args.quick else (len(data.y_train), min(len(data.y_test), 2000))))
        cfg = base.replace(dataset=dataset, device=str(device), num_rounds=NO_EVAL, eval_every=NO_EVAL,
                           local_epochs=1, checkpoint_every=0)
        fed = Federation(cfg, data=data)
        done, trained = [0], []

        def train_round():
            done[0] += 1
            chosen = fed.sample_clients(done[0])
            trained.append(sum(fed.sizes[k] for k in chosen))
            for k in chosen:
                fed.train_client(k, done[0])

        times = side_by_side({"round": train_round, "eval": fed.evaluate}, device, repeats,
                             {"round": lambda: fed.train_client(0, 0)})
        per_sample_train = statistics.median(t / n for t, n in zip(times["round"], trained))
        per_sample_eval = statistics.median(times["eval"]) / len(data.y_test)
        round_samples = base.clients_per_round * full_train / base.num_clients * base.local_epochs
        t_round, t_eval = per_sample_train * round_samples, per_sample_eval * full_test
        share = t_eval / (t_round + t_eval)
        print(f"\n[3] evaluation, preset {name} ({base.model}, {base.clients_per_round} of {base.num_clients} clients, "
              f"E={base.local_epochs}, B={base.batch_size}), timed with E=1 on {dataset}")
        print(f"  local training of a round's {statistics.median(trained):.0f} samples takes {_ms(times['round'])}: "
              f"{per_sample_train * 1e3:.3f} ms/sample; evaluation {per_sample_eval * 1e3:.3f} ms/test sample "
              f"({len(data.y_test)} timed)")
        print(f"  at full {kind} size: round {t_round:.1f} s ({round_samples:.0f} samples), "
              f"evaluation {t_eval:.1f} s ({full_test} samples): {100 * share:.1f}% of the round")
        targets.append((f"3 evaluation share, {name}", f"{100 * share:.1f}%", "<= 10%", share <= 0.10))


# -- section 4: codec -------------------------------------------------------------------
def bench_codec(args, device, repeats, targets, squeezenet_rate=None):
    """encode + decode of SqueezeNet 1.0 per bit width, and its share of a paper-preset client's training."""
    torch.manual_seed(0)
    state = {k: v.to(device) for k, v in build_model("squeezenet1_0").state_dict().items()}
    n_params = sum(v.numel() for v in state.values())
    if squeezenet_rate is None:  # section 1 did not run: time a few training steps here
        w = Workload("squeezenet1_0", args.dataset or args.cifar10, 64 if not args.quick else 8,
                     1, 128 if not args.quick else 8, "paper")
        fed = Federation(w.config(device=str(device)), data=_data(w))
        times = side_by_side({"train": lambda: fed.train_client(0, 1)}, device, repeats)
        squeezenet_rate = fed.sizes[0] / statistics.median(times["train"])
    paper = preset("paper")
    client_samples = 50_000 / paper.num_clients * paper.local_epochs  # ~5000 samples x E = 5
    t_client = client_samples / squeezenet_rate
    print(f"\n[4] codec, SqueezeNet 1.0 ({n_params:,} parameters); a paper-preset client trains "
          f"{client_samples:.0f} samples: {t_client:.0f} s at the measured {squeezenet_rate:.1f} samples/s")
    n = 1 if args.quick else 5 * repeats
    worst = 0.0
    for bits in (16, 8, 4):
        def roundtrip():
            codec.decode(codec.encode(state, bits=bits))
        roundtrip()
        t = statistics.median(_timed(roundtrip, device) for _ in range(n))
        share = t / t_client
        worst = max(worst, share)
        print(f"  {bits:2d} bits: encode+decode {t * 1e3:7.1f} ms = {n_params / t / 1e6:6.1f} M params/s, "
              f"{100 * share:.3f}% of the client's training")
    targets.append(("4 codec share of a client's training (worst of 16/8/4 bits)", f"{100 * worst:.3f}%", "< 1%",
                    worst < 0.01))


# -- section 5: memory -------------------------------------------------------------------
def bench_memory(args, device, targets):
    """Peak RSS after round 1 and after round N of a smoke-sized run, in a fresh process."""
    rounds = 5 if args.quick else args.rounds
    ctx = multiprocessing.get_context("spawn")  # a fresh process: earlier sections' peak would hide any growth
    with ctx.Pool(1) as pool:
        rss = pool.apply(_memory_run, (rounds, str(device), args.threads))
    growth = rss["peak_n"] - rss["peak_1"]
    noise = max(MEMORY_NOISE_MB, MEMORY_NOISE_FRACTION * rss["peak_1"])
    print(f"\n[5] memory: preset smoke (cifar_cnn, 4 clients, B=32) on {MEMORY_TRAIN} synthetic images, 8-bit "
          f"uploads, evaluation every round, {rounds} rounds in a fresh process")
    print(f"  peak RSS after round 1 {rss['peak_1']:.1f} MB, round 10 {rss.get('peak_10', rss['peak_n']):.1f} MB, "
          f"round {rounds} {rss['peak_n']:.1f} MB (growth {growth:+.1f} MB); current RSS {rss['now_1']:.1f} -> "
          f"{rss.get('now_10', rss['now_n']):.1f} -> {rss['now_n']:.1f} MB")
    print(f"  noise: growth within max({MEMORY_NOISE_MB:g} MB, {100 * MEMORY_NOISE_FRACTION:g}% of round 1's peak) "
          f"= {noise:.1f} MB")
    targets.append((f"5 peak RSS growth, round 1 -> {rounds}", f"{growth:+.1f} MB", f"<= {noise:.1f} MB",
                    growth <= noise))


def _memory_run(rounds, device, threads):
    if threads:
        torch.set_num_threads(threads)
    cfg = preset("smoke", num_rounds=rounds, device=device, bits=8, checkpoint_every=0)
    fed = Federation(cfg, data=synthetic(num_train=MEMORY_TRAIN, num_test=MEMORY_TRAIN // 2, seed=cfg.seed))
    out = {}
    for t in range(1, rounds + 1):
        fed.round(t)
        if t in (1, min(10, rounds), rounds):
            suffix = {1: "1", rounds: "n"}.get(t, "10")
            out["peak_" + suffix], out["now_" + suffix] = _peak_rss_mb(), _current_rss_mb()
    return out


def _peak_rss_mb() -> float:
    """Peak RSS of this process. Linux: VmHWM, since ru_maxrss also counts the parent's peak before exec."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**10  # kB
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


# -- section 6: batched clients ---------------------------------------------------------
def bench_batched(w: Workload, device, repeats, targets):
    """engine=batched against engine=sequential on one round (a third of section 1's samples); is auto the faster?"""
    w = dataclasses.replace(w, samples_per_client=max(2 * w.batch_size, w.samples_per_client // 3))
    data = _data(w)
    feds = {engine: Federation(w.config(device=str(device), engine=engine), data=data)
            for engine in ("sequential", "batched")}
    rounds = {engine: iter(range(1, NO_EVAL)) for engine in feds}
    fns = {e: (lambda e=e: feds[e].round(next(rounds[e]))) for e in feds}
    warm = dataclasses.replace(w, num_clients=2, samples_per_client=w.batch_size)
    warm_fed = Federation(warm.config(device=str(device), engine="batched"), data=_data(warm))
    times = side_by_side(fns, device, repeats, {"sequential": lambda: feds["sequential"].train_client(0, 0),
                                                "batched": lambda: warm_fed.round(1)})
    speedup = paired_ratio(times["sequential"], times["batched"])
    auto_fed = Federation(w.config(device=str(device), engine="auto"), data=data)  # what auto builds here
    auto = "batched" if isinstance(auto_fed.backend, Batched) else "sequential"  # on a CPU: sequential or the pool
    other = "sequential" if auto == "batched" else "batched"
    # auto is slower only if the other engine won every pair: a median a few % past 1 is noise here.
    beaten = all(times[auto][i] > times[other][i] for i in range(len(times[auto])))
    print(f"\n[6] batched clients (vmap), {w.model} B={w.batch_size}: {w.num_clients} clients x "
          f"{len(data.y_train) // w.num_clients} samples, E=1, {device.type}")
    print(f"  sequential {_ms(times['sequential'])}, batched {_ms(times['batched'])} per round: batched runs at "
          f"{speedup:.2f}x the sequential engine {_spread(times['sequential'], times['batched'])}; "
          f"engine=auto picks {auto}")
    targets.append((f"6 engine=auto is not the slower engine, {w.model} B={w.batch_size} ({device.type})",
                    f"{auto} ({speedup:.2f}x)", f"{other} wins not every pair", not beaten))


# -- data and workloads -------------------------------------------------------------
def _workloads(args) -> list[Workload]:
    out = []
    for model in args.model:
        small = model in ("cnn", "2nn")
        kind = "mnist" if small else "cifar10"
        bs = args.batch_size or (10 if small else 64)
        per_client = args.samples_per_client or (30 if small else 8) * bs
        clients = args.clients
        if args.quick:
            bs, clients = (bs if small else 16), 2
            per_client = 2 * bs
        base = "fedavg-mnist-cnn" if small else "paper"
        dataset = args.dataset or (args.mnist if kind == "mnist" else args.cifar10)
        out.append(Workload(model, dataset, bs, clients, per_client, base))
    return out


_LOADED: dict[str, Dataset] = {}


def _data(w: Workload) -> Dataset:
    """The workload's dataset cut to clients x samples_per_client training samples (fewer if it is smaller)."""
    if w.dataset not in _LOADED:
        _LOADED[w.dataset] = load_dataset(w.dataset)
    data = _LOADED[w.dataset]
    return _shrink(data, min(len(data.y_train), w.num_clients * w.samples_per_client), len(data.y_test))


def _shrink(data: Dataset, train: int, test: int) -> Dataset:
    return dataclasses.replace(data, x_train=data.x_train[:train], y_train=data.y_train[:train],
                               x_test=data.x_test[:test], y_test=data.y_test[:test])


def _header(device, args):
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cores = os.cpu_count() or 1
    print(f"fl_lib bench: torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, "
          f"{cores} cores ({platform.processor() or platform.machine()}), load average {load:.1f}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}{', quick' if args.quick else ''}")
    if load > cores - 0.5:
        print(f"  note: other processes keep ~{load:.1f} cores busy. Ratios are timed side by side and hold, "
              f"absolute figures drop; threads that spin-wait for a descheduled peer can make every step ~10x "
              f"slower: if so, rerun with OMP_WAIT_POLICY=PASSIVE or --threads 1.")


def _ms(times: list[float]) -> str:
    return f"{1e3 * statistics.median(times):.0f} ms"


def build_parser():
    import argparse

    p = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.splitlines()[0])
    add_arguments(p)
    return p


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
