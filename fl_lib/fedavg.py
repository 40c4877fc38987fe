"""FedAvg and FedSGD (McMahan et al. 2017, Algorithm 1) on one model reset in place.

A `Federation` holds the data (one tensor on the device), the clients (index
tensors into it), the global model (a state dict) and one `nn.Module` that each
sampled client loads, trains and uploads in turn. Every random choice of round t
(which clients, batch order, augmentation, dropout, stochastic rounding) is drawn
from generators seeded by (seed, t, client), so a round depends only on the
config and the global model it starts from: paired runs that differ only in the
upload codec share everything else, and a resumed run repeats an uninterrupted
one exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
import time
import warnings
import numpy as np
import torch
import torch.nn.functional as F

from . import batched, codec
from .aggregation import aggregate  # noqa: F401  (the engine's public average, re-exported)
from .client import all_finite, autocast, batch_inputs, client_batches, num_targets
from .config import Config
from .data import Dataset, load_dataset
from .errors import CodecError, ConfigError, DivergenceError
from .dp import (add_noise, clients_needed, clip_update, dp_average, epsilon_per_round, fixed_size_epsilon_per_round,
                 poisson_sample)
from .fedbuff import FedBuff
from .links import (SECAGG_ROUND_TRIPS, ClientTime, Links, adaptive_plan, adaptive_widths, client_seconds,
                    parse_link, sync_round, train_flops_per_sample)
from .models import build_model
from .partition import make_partition
from .pool import Pool, pool_size, usable_cores
from .quant import relative_error
from .rng import SERVER, Stream, numpy_generator, sampling_generator, stream_seed, torch_generator
from . import dp_quant
from .secagg import SecAggError, channel_bound, masked_upload_bytes, received_bytes, secure_mean, shared_scale_mean

EVAL_BATCH = 250  # test samples per forward pass; larger batches measured slower here (memory-bound)
SECAGG_MARGIN = 1.5  # secure aggregation's public bound: this many times the global model's max |w| per channel
MAX_DEAD_ROUNDS = 3  # consecutive rounds with every upload non-finite before giving up


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; anything else must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} is not available here: use auto or cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name!r} is not available here: use auto or cpu")
    return dev


POOL_MIN_FLOPS = 2e10  # training FLOPs per round below which auto keeps the clients in one process


def use_pool(cfg: Config, fed) -> bool:
    """Whether rounds train their clients in worker processes: engine=pool, or auto where that pays.

    auto picks the pool on a CPU with 2 or more usable cores, for synchronous rounds
    with 2 or more clients, when a round trains at least POOL_MIN_FLOPS (about 2-4 s
    of one core here): `benchmarks/bench.py --pool` measured 1.3x on 2 cores for the
    quick and paper models, while a smoke round (milliseconds) would only pay the
    workers' start-up (a few seconds: each imports torch).
    """
    if cfg.engine not in ("pool", "auto"):
        return False
    if fed.device.type != "cpu":
        if cfg.engine == "pool":
            raise ConfigError(f"engine='pool' trains clients in CPU processes; device={cfg.device!r} is "
                              f"{fed.device.type}: use engine=auto or sequential there")
        return False
    if cfg.engine == "pool":
        return True
    if cfg.algorithm == "fedbuff" or usable_cores() < 2 or cfg.clients_per_round < 2:
        return False
    if fed.data.is_text:
        return False  # not measured for the LSTM: engine=pool asks for it
    epochs = 1 if cfg.algorithm == "fedsgd" else cfg.local_epochs
    mean_size = sum(fed.sizes) / len(fed.sizes)
    flops = fed.flops_per_sample() * mean_size * epochs * cfg.clients_per_round
    return flops >= POOL_MIN_FLOPS


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    """channels_last is faster for every conv model here (CPU: cifar_cnn 7x, SqueezeNet 1.3x)."""
    if cfg.channels_last != "auto":
        return cfg.channels_last == "on"
    return cfg.model != "2nn" and device.type in ("cpu", "cuda")


class Federation:
    """Clients, server and the one model they share; `round(t)` runs round t."""

    def __init__(self, cfg: Config, data: Dataset | None = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        if data is None:
            data = load_dataset(cfg.dataset, cfg.data_root, seed=cfg.seed)
        self.data = data.to(self.device)
        labels = (self.data.y_train if self.data.groups is None else self.data.groups).cpu().numpy()  # text: roles
        parts = make_partition(cfg.partition, labels, cfg.num_clients, cfg.seed, alpha=cfg.alpha,
                               shards_per_client=cfg.shards_per_client, min_size=cfg.min_size)
        self.clients = [torch.as_tensor(p, dtype=torch.long, device=self.device) for p in parts]
        self.sizes = [num_targets(self.data.y_train[c]) for c in self.clients]  # n_k: images, or characters
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
            torch.manual_seed(cfg.seed)
            model = build_model(cfg.model, self.data.num_classes, self.data.in_channels, self.data.image_size)
        self.channels_last = use_channels_last(cfg, self.device)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=fmt)
        self.params = [p for p in self.model.parameters()]
        self.opt = torch.optim.SGD(self.params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.global_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model_bytes = len(codec.encode(self.global_state, bits=32))  # one float32 broadcast
        self.num_params = sum(v.numel() for v in self.global_state.values() if v.is_floating_point())  # d
        self.dead_rounds = 0
        profile = parse_link(cfg.link)
        self.links = Links(profile, cfg.num_clients, cfg.seed) if profile is not None else None
        self._upload_sizes: dict[int, int] = {}
        self._flops = None
        self.fedbuff = FedBuff(self) if cfg.algorithm == "fedbuff" else None
        self.pool = None  # worker processes for engine=pool, started by the first round that needs them (pool.py)
        self.use_pool = use_pool(cfg, self)
        # DP-FedAvg (dp.py): Poisson sampling divides by the expected count q K, fixed-size sampling by m
        self.poisson = cfg.dp_clip > 0 and cfg.dp_sampling == "poisson"
        self.dp_expected_clients = (cfg.client_fraction * cfg.num_clients if self.poisson
                                    else float(cfg.clients_per_round))
        self.epsilons = None  # epsilon after each round (DP with noise), for the sampling the engine does
        if cfg.dp_clip > 0 and cfg.dp_noise > 0:
            if self.poisson:
                self.epsilons = epsilon_per_round(cfg.client_fraction, cfg.dp_noise, cfg.num_rounds, cfg.dp_delta)
            else:
                self.epsilons = fixed_size_epsilon_per_round(cfg.num_clients, cfg.clients_per_round, cfg.dp_noise,
                                                             cfg.num_rounds, cfg.dp_delta)
        # DP under secure aggregation: the model's public grid (dp_quant.py); refuses here, in one line,
        # a bit width at which the update would be lost
        self.dp_grid = dp_quant.grid_for(cfg, self.num_params)

    # -- randomness -------------------------------------------------------
    def sample_clients(self, t: int) -> list[int]:
        """Round t's clients in increasing order: m = max(round(C K), 1) distinct ones, or Poisson(C) under DP.

        A DP run with dp_sampling="poisson" takes each client independently with
        probability C (dp.py), drawn from the server's SAMPLING stream; every other run
        keeps the fixed-size draw on its historical key.
        """
        if self.poisson:
            return poisson_sample(self.cfg.num_clients, self.cfg.client_fraction,
                                  numpy_generator(self.cfg.seed, t, SERVER, Stream.SAMPLING))
        rng = sampling_generator(self.cfg.seed, t)
        m = self.cfg.clients_per_round
        return sorted(rng.choice(self.cfg.num_clients, size=m, replace=False).tolist())

    def generator(self, t: int, k: int, stream: Stream, *extra: int) -> torch.Generator:
        """Client k's generator for `stream` in round t (see rng.py)."""
        return torch_generator(self.cfg.seed, t, k, stream, *extra)

    # -- the model ----------------------------------------------------------
    def _load_global(self):
        with torch.no_grad():
            for name, tensor in self.model.state_dict().items():
                tensor.copy_(self.global_state[name])

    def _autocast(self):
        return autocast(self.cfg.precision, self.device)

    def _seed_dropout(self, t: int, k: int, *extra: int):
        torch.manual_seed(stream_seed(self.cfg.seed, t, k, Stream.DROPOUT, *extra))  # dropout uses the global RNG

    def train_client(self, k: int, t: int, *extra: int) -> torch.Tensor:
        """E local epochs of minibatch SGD from the global model; returns the mean loss.

        `extra` keys a second job of client k from the same global model (fedbuff).
        """
        cfg, idx = self.cfg, self.clients[k]
        self._seed_dropout(t, k, *extra)
        self._load_global()
        self.opt.state.clear()  # momentum starts afresh on every client, every round
        self.model.train()
        total, count = torch.zeros((), device=self.device), 0
        for x, y in client_batches(self.data, idx, cfg, self.generator(t, k, Stream.BATCHES, *extra),
                                   self.channels_last):
            with self._autocast():
                loss = F.cross_entropy(self.model(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            m = num_targets(y)  # images: len(y); text: its characters (the loss is their mean)
            total += loss.detach().float() * m
            count += m
        return total / count

    def client_gradient(self, k: int, t: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """FedSGD: the full-batch gradient of client k's loss at the global model."""
        idx, n = self.clients[k], self.sizes[k]  # n images, or characters of text
        g = self.generator(t, k, Stream.BATCHES)
        self._seed_dropout(t, k)
        self._load_global()
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for start in range(0, len(idx), EVAL_BATCH):  # chunks bound memory; sums make it exact
            x, y = batch_inputs(self.data, idx[start:start + EVAL_BATCH], train=True, augment=self.cfg.augment,
                                channels_last=self.channels_last, generator=g)
            with self._autocast():
                loss = F.cross_entropy(self.model(x), y, reduction="sum") / n
            loss.backward()
            total += loss.detach().float()
        grads = {}
        for name, p in self.model.named_parameters():
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            grads[name] = grad + self.cfg.weight_decay * p.detach()
        return grads, total

    @torch.inference_mode()
    def evaluate(self) -> tuple[float, float]:
        """Accuracy and mean loss of the global model on the whole test split."""
        self._load_global()
        self.model.eval()
        y_all = self.data.y_test
        correct = torch.zeros((), device=self.device)
        loss = torch.zeros((), device=self.device)
        for start in range(0, len(y_all), EVAL_BATCH):
            idx = torch.arange(start, min(start + EVAL_BATCH, len(y_all)), device=self.device)
            x, y = batch_inputs(self.data, idx, train=False, augment=False, channels_last=self.channels_last)
            with self._autocast():
                out = self.model(x).float()
            loss += F.cross_entropy(out, y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
        n = num_targets(y_all)  # accuracy and loss per image, or per character of text
        return correct.item() / n, loss.item() / n

    # -- what a client sends ------------------------------------------------
    def local_update(self, k: int, t: int, *extra: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Client k's upload of round t before encoding (its weights, or its gradient for fedsgd) and its loss."""
        if self.cfg.algorithm == "fedsgd":
            return self.client_gradient(k, t)
        loss = self.train_client(k, t, *extra)
        return {name: v.detach() for name, v in self.model.state_dict().items()}, loss

    def send(self, k: int, t: int, sent, bits: int, reference, *extra: int):
        """Encode client k's upload at `bits` and decode it as the server does: (bytes, received, relative error)."""
        blob = codec.encode(sent, bits=bits, rounding=self.cfg.rounding, reference=reference,
                            generator=self.generator(t, k, Stream.ROUNDING, *extra))
        received = {name: v.to(self.device) for name, v in codec.decode(blob, reference=reference).items()}
        lossless = bits == 32 and reference is None  # float32 uploads arrive bit for bit: error 0
        return len(blob), received, 0.0 if lossless else relative_error(sent, received)

    def upload_size(self, bits: int, cohort: list[int] | None = None) -> int:
        """Bytes one client uploads at `bits`: the codec's encoded length, which depends on the shapes and width only.

        Under secure aggregation, given the round's cohort (its sampled clients), it is
        what a client sends in the protocol instead: `secagg.masked_upload_bytes`, the
        masked vector (its modulus grows with the cohort's total weight) with its key and
        shares. The clock asks secagg for a size here and nowhere else.
        """
        if cohort is not None and self.cfg.secure_aggregation:
            # without DP the integer weights _secure_update masks with, fixed before anyone drops
            # out: n_k / gcd (secagg divides by it); with DP uniform ones on the rotated grid (dp_quant.py)
            if self.dp_grid is not None:
                return self.dp_grid.upload_bytes(len(cohort))
            sizes = [self.sizes[k] for k in cohort]
            weight = sum(sizes) // math.gcd(*sizes)
            key = (bits, len(cohort), weight)
            if key not in self._upload_sizes:
                self._upload_sizes[key] = masked_upload_bytes(self.num_params, bits, len(cohort), weight)
            return self._upload_sizes[key]
        if bits not in self._upload_sizes:
            names = [n for n, _ in self.model.named_parameters()] if self.cfg.algorithm == "fedsgd" else None
            like = {n: v for n, v in self.global_state.items() if names is None or n in names}
            self._upload_sizes[bits] = len(codec.encode(like, bits=bits))
        return self._upload_sizes[bits]

    # -- the clock ----------------------------------------------------------
    def flops_per_sample(self) -> int:
        """Training FLOPs of one sample of this model (counted once, see links.train_flops_per_sample)."""
        if self._flops is None:
            shape = (self.data.in_channels, self.data.image_size, self.data.image_size)
            self._flops = train_flops_per_sample(self.model, shape)
        return self._flops

    def client_time(self, t: int, k: int, bits: int, cohort: list[int] | None = None) -> ClientTime:
        """Client k's simulated time in round t when it uploads at `bits` (links.client_seconds).

        Under secure aggregation the round's cohort (default: its sampled clients) sets what
        the client sends (`upload_size`) and receives (`secagg.received_bytes`), and it
        waits one round trip in each of the protocol's four rounds (links.py's docstring).
        """
        samples = self.sizes[k] * (1 if self.cfg.algorithm == "fedsgd" else self.cfg.local_epochs)
        state = self.links.state(t, k)
        if not self.cfg.secure_aggregation:
            return client_seconds(state, self.model_bytes, self.upload_size(bits), samples, 1, self.flops_per_sample())
        cohort = self.sample_clients(t) if cohort is None else cohort
        return client_seconds(state, self.model_bytes + received_bytes(len(cohort)),
                              self.upload_size(bits, cohort), samples, 1, self.flops_per_sample(),
                              round_trips=SECAGG_ROUND_TRIPS)

    def plan(self, t: int, chosen: list[int]) -> tuple[dict[int, int | None], float | None, list[bool]]:
        """Each sampled client's bit width (None: a straggler), the round's duration, and who is kept.

        Without a link every client uploads at `bits`, nobody is dropped and the round
        has no duration. With one, the round lasts the slowest kept client (`sync_round`);
        `deadline` drops the clients that would finish later. The adaptive policy gives each
        client the widest width in min_bits..min(bits, 16) that fits the budget: the deadline,
        or else the sampled clients' slowest time at the widest width whose upload does not
        dominate the client's own time (`links.adaptive_plan`, whose rule FedBuff shares), so
        that without a deadline nobody is dropped.
        """
        cfg = self.cfg
        if self.links is None:
            return {k: cfg.bits for k in chosen}, None, [True] * len(chosen)
        if cfg.bits_policy == "fixed":
            bits = {k: cfg.bits for k in chosen}
            budget = cfg.deadline
            times = [self.client_time(t, k, cfg.bits, chosen) for k in chosen]
        else:
            widths = adaptive_widths(cfg.bits, cfg.min_bits)
            by_width = [{b: self.client_time(t, k, b, chosen) for b in widths} for k in chosen]
            picked, budget = adaptive_plan(by_width, cfg.deadline)
            bits = dict(zip(chosen, picked))
            # a straggler is timed at the narrowest width; the budget was computed on these very
            # totals, so the client that sets it fits exactly, whatever the float rounding
            times = [c[b or widths[-1]] for c, b in zip(by_width, picked)]
        duration, kept = sync_round(times, budget)
        kept = [keep and bits[k] is not None for k, keep in zip(chosen, kept)]
        return bits, duration, kept

    # -- one round --------------------------------------------------------
    def round(self, t: int) -> dict:
        """Run round t (1-based): sample, train locally, upload, aggregate, maybe evaluate."""
        start = time.perf_counter()
        if self.cfg.algorithm == "fedbuff":
            row = self.fedbuff.step(t)
        else:
            row = self._sync_round(t)
        row = self.evaluate_row(t, row)
        row["seconds"] = time.perf_counter() - start
        return row

    def evaluate_row(self, t: int, row: dict) -> dict:
        """Add test_acc / test_loss to round t's row when t is evaluated (every eval_every rounds, and the last)."""
        if t % self.cfg.eval_every == 0 or t == self.cfg.num_rounds:
            row["test_acc"], row["test_loss"] = self.evaluate()
            if not math.isfinite(row["test_loss"]):  # finite weights can still overflow the loss
                warnings.warn(f"round {t}: test loss is {row['test_loss']}; recorded as empty")
                row["test_loss"] = None
        return row

    def _sync_round(self, t: int) -> dict:
        """FedAvg or FedSGD round t: every kept client trains from the global model, the server averages."""
        chosen, bits, duration, late = self.round_plan(t)
        reference = self.reference()
        if self.use_pool and chosen:  # engine=pool: the clients train in worker processes (pool.py)
            if self.pool is None:
                self.pool = Pool(self, *pool_size(self.cfg))
            uploads = self.pool.uploads(t, chosen, bits, self.global_state)
        else:
            # engine=batched (or auto on CUDA): every kept client trained at once, see batched.py
            trained = batched.train_clients(self, chosen, t) if chosen and batched.use_batched(self.cfg, self.device) \
                else {}
            uploads = [self.client_upload(k, t, bits[k], reference, trained.pop(k, None)) for k in chosen]
        return self.server_round(t, uploads, late, duration)

    # -- the two halves of a synchronous round --------------------------------
    def round_plan(self, t: int) -> tuple[list[int], dict[int, int | None], float | None, list[int]]:
        """Round t's clients that train, each one's bit width, the round's duration and the late clients."""
        sampled = self.sample_clients(t)
        if not sampled:  # possible under DP's Poisson sampling: the round waits for nobody
            return [], {}, (None if self.links is None else 0.0), []
        bits, duration, kept = self.plan(t, sampled)
        late = [k for k, keep in zip(sampled, kept) if not keep]
        chosen = [k for k, keep in zip(sampled, kept) if keep]  # late clients' work would be thrown away
        return chosen, bits, duration, late

    def reference(self):
        """What an upload is taken against: the global model for delta uploads, else None (weights)."""
        delta = self.cfg.algorithm == "fedavg" and self.cfg.upload == "delta"
        return _cpu(self.global_state) if delta else None

    def client_upload(self, k: int, t: int, bits: int, reference=None, trained=None) -> "Upload":
        """Client k's side of round t, from `global_state`: train, clip (DP), encode.

        `trained` is (weights, loss) when the batched engine already trained the client.
        With secure aggregation nothing is encoded: the values go to `_secure_update`.
        """
        sent, loss = trained if trained is not None else self.local_update(k, t)
        up = Upload(k, bits, self.sizes[k], float(loss), None, None)
        if not all_finite(loss, sent):
            return up  # no blob: the server counts the client as diverged
        if self.cfg.dp_clip > 0:  # the client clips its own update before it quantizes it
            sent = self._clipped(sent)
        if self.cfg.secure_aggregation:  # the upload is a masked share of a sum (_secure_update)
            up.received = {n: v.detach().clone() for n, v in sent.items()}  # the next client reuses the model
            return up
        blob = codec.encode(sent, bits=bits, rounding=self.cfg.rounding, reference=reference,
                            generator=self.generator(t, k, Stream.ROUNDING))
        up.blob = blob
        up.received = {name: v.to(self.device) for name, v in codec.decode(blob, reference=reference).items()}
        lossless = bits == 32 and reference is None  # float32 uploads arrive bit for bit: error 0
        up.error = 0.0 if lossless else relative_error(sent, up.received)
        return up

    def server_round(self, t: int, uploads: list["Upload"], late=(), duration=None) -> dict:
        """The server's side of round t: decode each upload, average with n_k/n weights, return the metrics row.

        An upload that does not decode (truncated, checksum mismatch) is refused with a
        warning and counted in `dropped_clients`; the round goes on without it.
        """
        cfg = self.cfg
        reference = self.reference()
        received, weights, losses, errors, widths, senders = [], [], [], [], [], []
        upload_bytes, dropped = 0, len(late)
        for up in uploads:
            k = up.client
            if up.blob is None and up.received is None:
                dropped += 1
                warnings.warn(f"round {t}: client {k} sent non-finite values (diverged); left out of the average")
                continue
            values = up.received
            if up.blob is not None:
                upload_bytes += len(up.blob)
                if values is None:
                    try:
                        values = {n: v.to(self.device) for n, v in codec.decode(up.blob, reference=reference).items()}
                    except CodecError as e:
                        dropped += 1
                        warnings.warn(f"round {t}: refused client {k}'s upload ({e}); the round goes on without it")
                        continue
                errors.append(up.error)
            received.append(values)
            senders.append(k)
            weights.append(up.num_samples)
            losses.append(up.loss)
            widths.append(up.bits)
        if received:
            self.dead_rounds = 0
            if cfg.secure_aggregation:
                upload_bytes, errors = self._secure_update(t, self.sample_clients(t), senders, received, weights)
            elif cfg.dp_clip > 0:
                self._dp_update(t, received)
            elif cfg.algorithm == "fedavg":
                self.global_state = aggregate(received, weights)
            else:  # w_{t+1} = w_t - lr * sum_k n_k/n g_k
                for name, grad in aggregate(received, weights).items():
                    self.global_state[name] = self.global_state[name] - cfg.lr * grad
        elif self.poisson and not uploads and not late:  # nobody was sampled: the DP step is the noise alone
            if cfg.secure_aggregation:  # the same noise z Delta as every other round of this run
                self._secure_update(t, [], [], [], [])
            else:
                self._dp_update(t, [])
        elif not late:  # every client that sent diverged (a round whose clients were all late is not divergence)
            self._count_dead_round(t)
        return {"round": t, "test_acc": None, "test_loss": None,
                "train_loss": float(torch.tensor(losses, dtype=torch.float32).mean()) if losses else None,
                "upload_bytes": upload_bytes, "download_bytes": self.model_bytes * (len(uploads) + len(late)),
                "quant_error": float(np.mean(errors)) if errors else None, "dropped_clients": dropped,
                "sim_seconds": duration, "mean_bits": float(np.mean(widths)) if widths else None,
                "mean_staleness": 0.0 if widths else None,
                "epsilon": self.epsilons[t - 1] if self.epsilons else None,
                "sampled_clients": len(uploads) + len(late)}

    def _count_dead_round(self, t: int) -> None:
        cfg = self.cfg
        self.dead_rounds += 1
        if self.dead_rounds >= MAX_DEAD_ROUNDS:
            if cfg.dp_noise > 0:
                d = self.num_params
                m, need = self.dp_expected_clients, clients_needed(cfg.dp_noise, d)
                cause = (f"the DP noise probably broke the model: its norm on the average, z S sqrt(d) / m = "
                         f"{cfg.dp_noise * cfg.dp_clip * math.sqrt(d) / m:.3g}, is {cfg.dp_noise * math.sqrt(d) / m:.3g}"
                         f" times the largest mean update S = {cfg.dp_clip:g} with m = {m:g} clients per round; this "
                         f"epsilon (dp_noise={cfg.dp_noise:g}) needs m >= z sqrt(d) = {need:,} clients per round "
                         f"(num_clients >= {math.ceil(need / cfg.client_fraction):,} at client_fraction="
                         f"{cfg.client_fraction:g}), or accept a larger epsilon with a smaller dp_noise")
            else:
                cause = f"the learning rate lr={cfg.lr} is probably too high for model={cfg.model}; try a smaller lr"
            raise DivergenceError(
                f"every client diverged (NaN/inf) for {self.dead_rounds} rounds in a row up to round {t}: {cause}")

    # -- privacy --------------------------------------------------------------
    def _update_of(self, weights_k) -> dict[str, torch.Tensor]:
        return {n: w.float() - self.global_state[n].float() for n, w in weights_k.items() if w.is_floating_point()}

    def _clipped(self, weights_k) -> dict[str, torch.Tensor]:
        """w_global + clip(w_k - w_global): DP-FedAvg's bound on one client's influence (dp.py)."""
        clipped, _ = clip_update(self._update_of(weights_k), self.cfg.dp_clip)
        return {n: (self.global_state[n].float() + clipped[n]).to(w.dtype) if n in clipped else w
                for n, w in weights_k.items()}

    def _dp_update(self, t: int, received: list[dict]) -> None:
        """w += (sum_k clip(Delta_k) + N(0, (z S)^2)) / m, Delta_k = received_k - w (dp.py).

        m is fixed in advance: the expected count q K under Poisson sampling, else the
        clients per round; it never depends on who was sampled.

        The server clips again after decoding (quantization can move an update past
        dp_clip), so the sensitivity is exactly dp_clip whatever the codec did.
        """
        cfg = self.cfg
        updates = [clip_update(self._update_of(r), cfg.dp_clip)[0] for r in received]
        if not updates:  # a Poisson round that sampled nobody: the sum is 0, the noise is still added
            updates = [{n: torch.zeros_like(w, dtype=torch.float32) for n, w in self.global_state.items()
                        if w.is_floating_point()}]
        noise = torch_generator(cfg.seed, t, SERVER, Stream.DP_NOISE)
        step = dp_average(updates, cfg.dp_noise, cfg.dp_clip, self.dp_expected_clients, noise)
        self.global_state = {n: (w.float() + step[n].to(w.device)).to(w.dtype) if n in step else w
                             for n, w in self.global_state.items()}

    def _secure_update(self, t, sampled, senders, sent, weights):
        """The round's sum through pairwise masking (secagg.py); returns (upload bytes, quantization errors).

        Every sampled client joined the key agreement; those that were late or
        diverged drop out, and their masks are recovered from the survivors' shares.
        Without DP the clients sum their weights w_k, weighted by n_k, on a grid whose
        scale per channel is SECAGG_MARGIN * max |w_global,c| (public: every client has
        w_global). With DP see `_dp_secure_update`.
        """
        cfg = self.cfg
        if cfg.dp_clip > 0:
            return self._dp_secure_update(t, sampled, senders, sent)
        values = [{n: v.float() for n, v in s.items() if v.is_floating_point()} for s in sent]
        bound = channel_bound(self.global_state, margin=SECAGG_MARGIN)
        position = {k: i for i, k in enumerate(sampled)}
        zeros = {n: torch.zeros_like(v) for n, v in values[0].items()}
        everyone = [zeros] * len(sampled)
        for k, v in zip(senders, values):
            everyone[position[k]] = v
        gone = [i for i, k in enumerate(sampled) if k not in set(senders)]
        # every sampled client's n_k, fixed before anyone drops (it sets the modulus); a dropped client's codes are 0
        all_weights = [self.sizes[k] for k in sampled]
        errors = [relative_error(v, shared_scale_mean([v], None, cfg.bits, bound)) for v in values]
        try:
            mean, per_client = secure_mean(everyone, all_weights, cfg.bits, bound, cfg.seed, t, dropped=gone)
        except SecAggError as e:  # too few survivors to unmask: the server learns nothing this round
            warnings.warn(f"round {t}: {e}; the round's uploads cannot be unmasked and are lost")
            return self.upload_size(cfg.bits, sampled) * len(senders), errors  # what the clock charged
        self.global_state = {n: mean[n].to(g.device, g.dtype) if n in mean else g
                             for n, g in self.global_state.items()}
        return per_client * len(senders), errors

    def _dp_secure_update(self, t, sampled, senders, sent):
        """DP-FedAvg under secure aggregation: w += (sum_k decode(z_k) + N(0, (z Delta)^2)) / m.

        Each sender's clipped update is rotated, scaled and rounded to codes z_k with
        ||z_k|| <= B (dp_quant.py, Kairouz et al. 2021), with its own Stream.ROUNDING; the
        codes are masked and summed mod 2^k, and the server decodes the survivors' sum.
        The noise is sized for Delta = gamma B, the norm every decoded upload is held to,
        not dp_clip: Delta > dp_clip, so z stays the noise multiplier the accountant was
        given. m = dp_expected_clients is fixed in advance. With no senders (a Poisson
        round that sampled nobody) the step is the noise alone.
        """
        cfg = self.cfg
        grid = self.dp_grid
        like = {n: v for n, v in self.global_state.items() if v.is_floating_point()}
        errors, per_client = [], grid.upload_bytes(len(sampled)) if sampled else 0
        total = np.zeros(grid.num_params)
        if senders:
            position = {k: i for i, k in enumerate(sampled)}
            flats = [np.zeros(grid.num_params)] * len(sampled)
            for k, s in zip(senders, sent):
                flats[position[k]] = dp_quant.flatten(self._update_of(s))
            gone = [i for i, k in enumerate(sampled) if k not in set(senders)]
            codes = dp_quant.client_codes(flats, grid, cfg.seed, t, clients=sampled, dropped=gone)
            signs = dp_quant.rotation_signs(cfg.seed, t, grid.size)
            errors = [dp_quant.upload_error(flats[position[k]], codes[position[k]], grid, signs) for k in senders]
            try:
                total = dp_quant.masked_total(codes, grid, cfg.seed, t, dropped=gone)
            except SecAggError as e:  # too few survivors to unmask: the server learns nothing this round
                warnings.warn(f"round {t}: {e}; the round's uploads cannot be unmasked and are lost")
                return per_client * len(senders), errors
        noise = torch_generator(cfg.seed, t, SERVER, Stream.DP_NOISE)
        step = add_noise(dp_quant.unflatten(total, like), cfg.dp_noise, grid.sensitivity, noise)  # std z Delta
        self.global_state = {n: (g.float() + step[n].to(g.device) / self.dp_expected_clients).to(g.dtype)
                             if n in step else g for n, g in self.global_state.items()}
        return per_client * len(senders), errors

    def close(self) -> None:
        """Stop the worker processes, if any (engine=pool); the next round starts them again."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    # -- checkpoints --------------------------------------------------------
    def engine_state(self) -> dict:
        """What a checkpoint must hold besides the global model to resume exactly."""
        state = {"dead_rounds": self.dead_rounds}
        if self.cfg.algorithm == "fedbuff":
            state["fedbuff"] = self.fedbuff.state_dict()
        return state

    def load_engine_state(self, state: dict) -> None:
        self.dead_rounds = state["dead_rounds"]
        if self.cfg.algorithm == "fedbuff":
            self.fedbuff.load_state_dict(state["fedbuff"])


@dataclass
class Upload:
    """What client k sends in round t: its encoded bytes (None if its training diverged), n_k, loss and width.

    `error` is the client's own relative quantization error. `received` is an
    in-process shortcut (the decoded upload, or the plain values under secure
    aggregation); it never crosses a process or a network.
    """

    client: int
    bits: int
    num_samples: int
    loss: float  # mean training loss, a float32 value
    blob: bytes | None
    error: float | None
    received: dict | None = None


def _cpu(state):
    return None if state is None else {k: v.detach().cpu() for k, v in state.items()}


def replay_clock(cfg: Config, link: str, data: Dataset | None = None) -> list[float]:
    """sim_seconds of every round of `cfg` had it run on `link`, without training anything.

    With fixed bits and no deadline the clock never changes what is trained (nobody is
    dropped, every width is `bits`), so a finished run without a link, or with another
    one, gets its exact clock on any link profile from its config alone: the same
    sampled clients, link draws and encoded sizes as a real run with that link.
    """
    cfg = cfg.replace(link=link)
    if cfg.bits_policy != "fixed" or cfg.deadline > 0 or cfg.algorithm == "fedbuff":
        raise ConfigError("replay_clock needs bits_policy='fixed', deadline=0 and a synchronous algorithm: "
                          "otherwise the clock changes what is trained, so run it instead")
    if cfg.link == "none":
        raise ConfigError("replay_clock needs a link profile, e.g. mobile")
    fed = Federation(cfg, data=data)
    return [fed.plan(t, fed.sample_clients(t))[1] for t in range(1, cfg.num_rounds + 1)]
