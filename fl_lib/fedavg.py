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
import time
import warnings
import numpy as np
import torch
import torch.nn.functional as F

from . import batched, codec
from .client import autocast, batch_inputs, client_batches
from .config import Config
from .data import Dataset, load_dataset
from .errors import ConfigError, DivergenceError
from .models import build_model
from .partition import make_partition
from .quant import relative_error
from .rng import Stream, sampling_generator, stream_seed, torch_generator

EVAL_BATCH = 250  # test samples per forward pass; larger batches measured slower here (memory-bound)
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


def aggregate(states: list[dict[str, torch.Tensor]], weights) -> dict[str, torch.Tensor]:
    """Weighted mean of state dicts, weight_k / sum(weights) each (FedAvg's n_k / n).

    Float tensors are averaged; integer buffers (counters) are taken from the first state.
    """
    if not states or len(states) != len(weights):
        raise ValueError(f"aggregate needs one weight per state: got {len(states)} states, {len(weights)} weights")
    total = float(sum(weights))
    if not total > 0:
        raise ValueError(f"aggregate weights must sum to a positive number, got {total}")
    out = {}
    for name, first in states[0].items():
        if not first.is_floating_point():
            out[name] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float32)
        for state, w in zip(states, weights):
            acc.add_(state[name].to(acc.device, torch.float32), alpha=float(w) / total)
        out[name] = acc.to(first.dtype)
    return out


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
        labels = self.data.y_train.cpu().numpy()
        parts = make_partition(cfg.partition, labels, cfg.num_clients, cfg.seed, alpha=cfg.alpha,
                               shards_per_client=cfg.shards_per_client, min_size=cfg.min_size)
        self.clients = [torch.as_tensor(p, dtype=torch.long, device=self.device) for p in parts]
        self.sizes = [len(p) for p in parts]
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
        self.dead_rounds = 0

    # -- randomness -------------------------------------------------------
    def sample_clients(self, t: int) -> list[int]:
        """m = max(round(C K), 1) distinct clients for round t, in increasing order."""
        rng = sampling_generator(self.cfg.seed, t)
        m = self.cfg.clients_per_round
        return sorted(rng.choice(self.cfg.num_clients, size=m, replace=False).tolist())

    def generator(self, t: int, k: int, stream: Stream) -> torch.Generator:
        """Client k's generator for `stream` in round t (see rng.py)."""
        return torch_generator(self.cfg.seed, t, k, stream)

    # -- the model ----------------------------------------------------------
    def _load_global(self):
        with torch.no_grad():
            for name, tensor in self.model.state_dict().items():
                tensor.copy_(self.global_state[name])

    def _autocast(self):
        return autocast(self.cfg.precision, self.device)

    def _seed_dropout(self, t: int, k: int):
        torch.manual_seed(stream_seed(self.cfg.seed, t, k, Stream.DROPOUT))  # dropout draws from the global RNG

    def train_client(self, k: int, t: int) -> torch.Tensor:
        """E local epochs of minibatch SGD from the global model; returns the mean loss."""
        cfg, idx = self.cfg, self.clients[k]
        self._seed_dropout(t, k)
        self._load_global()
        self.opt.state.clear()  # momentum starts afresh on every client, every round
        self.model.train()
        total = torch.zeros((), device=self.device)
        for x, y in client_batches(self.data, idx, cfg, self.generator(t, k, Stream.BATCHES), self.channels_last):
            with self._autocast():
                loss = F.cross_entropy(self.model(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += loss.detach().float() * len(y)
        return total / (len(idx) * cfg.local_epochs)

    def client_gradient(self, k: int, t: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """FedSGD: the full-batch gradient of client k's loss at the global model."""
        idx, n = self.clients[k], self.sizes[k]
        g = self.generator(t, k, Stream.BATCHES)
        self._seed_dropout(t, k)
        self._load_global()
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for start in range(0, n, EVAL_BATCH):  # chunks bound memory; sums make it exact
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
        x_all, y_all = self.data.x_test, self.data.y_test
        correct = torch.zeros((), device=self.device)
        loss = torch.zeros((), device=self.device)
        for start in range(0, len(y_all), EVAL_BATCH):
            idx = torch.arange(start, min(start + EVAL_BATCH, len(y_all)), device=self.device)
            x, y = batch_inputs(self.data, idx, train=False, augment=False, channels_last=self.channels_last)
            with self._autocast():
                out = self.model(x).float()
            loss += F.cross_entropy(out, y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
        n = len(y_all)
        return correct.item() / n, loss.item() / n

    # -- one round --------------------------------------------------------
    def round(self, t: int) -> dict:
        """Run round t (1-based): sample, train locally, upload, aggregate, maybe evaluate."""
        cfg = self.cfg
        start = time.perf_counter()
        chosen = self.sample_clients(t)
        uploads, weights, losses, errors, upload_bytes, dropped = [], [], [], [], 0, 0
        delta = cfg.algorithm == "fedavg" and cfg.upload == "delta"
        reference = _cpu(self.global_state) if delta else None  # what a delta is taken against
        # engine=batched (or auto on CUDA): every sampled client trained at once, see batched.py
        trained = batched.train_clients(self, chosen, t) if batched.use_batched(cfg, self.device) else {}
        for k in chosen:
            if k in trained:
                sent, loss = trained.pop(k)
            elif cfg.algorithm == "fedavg":
                loss = self.train_client(k, t)
                sent = {k_: v.detach() for k_, v in self.model.state_dict().items()}
            else:
                sent, loss = self.client_gradient(k, t)
            if not _all_finite(loss, sent):
                dropped += 1
                warnings.warn(f"round {t}: client {k} sent non-finite values (diverged); left out of the average")
                continue
            blob = codec.encode(sent, bits=cfg.bits, rounding=cfg.rounding, reference=reference,
                                generator=self.generator(t, k, Stream.ROUNDING))
            upload_bytes += len(blob)
            received = codec.decode(blob, reference=reference)
            received = {k_: v.to(self.device) for k_, v in received.items()}
            lossless = cfg.bits == 32 and reference is None  # float32 uploads arrive bit for bit: error 0
            errors.append(0.0 if lossless else relative_error(sent, received))
            uploads.append(received)
            weights.append(self.sizes[k])
            losses.append(loss)
        if uploads:
            self.dead_rounds = 0
            mean = aggregate(uploads, weights)
            if cfg.algorithm == "fedavg":
                self.global_state = mean
            else:  # w_{t+1} = w_t - lr * sum_k n_k/n g_k
                for name, grad in mean.items():
                    self.global_state[name] = self.global_state[name] - cfg.lr * grad
        else:
            self.dead_rounds += 1
            if self.dead_rounds >= MAX_DEAD_ROUNDS:
                raise DivergenceError(
                    f"every client diverged (NaN/inf) for {self.dead_rounds} rounds in a row up to round {t}: "
                    f"the learning rate lr={cfg.lr} is probably too high for model={cfg.model}; try a smaller lr")
        row = {"round": t, "test_acc": None, "test_loss": None,
               "train_loss": float(torch.stack(losses).mean()) if losses else None,
               "upload_bytes": upload_bytes, "download_bytes": self.model_bytes * len(chosen),
               "quant_error": float(np.mean(errors)) if errors else None, "dropped_clients": dropped}
        if t % cfg.eval_every == 0 or t == cfg.num_rounds:
            row["test_acc"], row["test_loss"] = self.evaluate()
            if not math.isfinite(row["test_loss"]):  # finite weights can still overflow the loss
                warnings.warn(f"round {t}: test loss is {row['test_loss']}; recorded as empty")
                row["test_loss"] = None
        row["seconds"] = time.perf_counter() - start
        return row


def _cpu(state):
    return None if state is None else {k: v.detach().cpu() for k, v in state.items()}


def _all_finite(loss, state) -> bool:
    # min and max propagate nan and are +-inf if any value is: one pass each, ~10x faster than isfinite()
    ends = [torch.stack(torch.aminmax(v)) for v in state.values() if v.is_floating_point() and v.numel()]
    return bool(torch.isfinite(torch.cat([loss.reshape(-1).float()] + [e.float() for e in ends])).all())
