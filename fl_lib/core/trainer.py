"""One model reset in place for every client: local SGD, FedSGD's full gradient, and central evaluation.

A client is an index tensor into the dataset (one tensor on the device); the
trainer loads the global model it is given into its one `nn.Module`, trains, and
leaves the result there. Every random choice (batch order, augmentation, dropout)
comes from generators seeded by (seed, t, client, stream), so a client's work
depends only on the config and the global model it starts from.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .client import autocast, batch_inputs, client_batches, num_targets
from .fedprox import add_proximal_
from .scaffold import add_correction_
from .models import build_model
from .rng import Stream, stream_seed, torch_generator

EVAL_BATCH = 250  # test samples per forward pass; larger batches measured slower here (memory-bound)


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


def use_channels_last(cfg, device: torch.device) -> bool:
    """channels_last is faster for every conv model here (CPU: cifar_cnn 7x, SqueezeNet 1.3x)."""
    if cfg.channels_last != "auto":
        return cfg.channels_last == "on"
    return cfg.model != "2nn" and device.type in ("cpu", "cuda")


def initial_model(cfg, data) -> torch.nn.Module:
    """The shared initialization: the model built from `seed`, leaving the caller's global RNG alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_model(cfg.model, data.num_classes, data.in_channels, data.image_size)


class Trainer:
    """The clients' local computation on one model and one SGD optimizer (momentum reset per client)."""

    prox_mu = 0.0  # FedProx's mu (fedprox.py); set from the pipeline by ClientSide, never read from the config here
    schedule = None  # the pipeline's epoch schedule (schedule.py), set by the Federation; None: local_epochs always
    batch_schedule = None  # the pipeline's batch schedule (schedule.py), set by the Federation; None: batch_size always
    control = None  # SCAFFOLD's control variates (scaffold.py), set by the Federation; None: no correction

    def __init__(self, cfg, data, clients: list[torch.Tensor], sizes: list[int], device: torch.device):
        self.cfg, self.data, self.clients, self.sizes, self.device = cfg, data, clients, sizes, device
        model = initial_model(cfg, data)
        self.channels_last = use_channels_last(cfg, device)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=fmt)
        self.params = list(self.model.parameters())

    @functools.cached_property
    def opt(self) -> torch.optim.SGD:
        """The clients' SGD optimizer, made on first use. The first optimizer a process makes imports
        torch._dynamo (about 2 s here), which a process that never trains (a Flower ServerApp) need not pay."""
        cfg = self.cfg
        return torch.optim.SGD(self.params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def generator(self, t: int, k: int, stream: Stream, *extra: int) -> torch.Generator:
        """Client k's generator for `stream` in round t (see rng.py)."""
        return torch_generator(self.cfg.seed, t, k, stream, *extra)

    def epochs(self, t: int) -> int:
        """E_t, the local epochs of round t: the epoch schedule's, or local_epochs without one."""
        return self.cfg.local_epochs if self.schedule is None else self.schedule.epochs(t)

    def batch_size(self, t: int) -> int | None:
        """B_t, the local batch size of round t: the batch schedule's, or batch_size without one (None: all data)."""
        return self.cfg.batch_size if self.batch_schedule is None else self.batch_schedule.batch_size(t)

    def load(self, global_state: dict) -> None:
        with torch.no_grad():
            for name, tensor in self.model.state_dict().items():
                tensor.copy_(global_state[name])

    def _seed_dropout(self, t: int, k: int, *extra: int):
        torch.manual_seed(stream_seed(self.cfg.seed, t, k, Stream.DROPOUT, *extra))  # dropout uses the global RNG

    def train(self, k: int, t: int, global_state: dict, *extra: int) -> torch.Tensor:
        """E_t local epochs of minibatch SGD from `global_state`; returns the mean loss (the model holds the result).

        `extra` keys a second job of client k from the same global model (fedbuff). With `prox_mu` > 0
        the steps are FedProx's, anchored at `global_state`.
        """
        cfg, idx = self.cfg, self.clients[k]
        self._seed_dropout(t, k, *extra)
        self.load(global_state)
        self.opt.state.clear()  # momentum starts afresh on every client, every round
        self.model.train()
        total, count = torch.zeros((), device=self.device), 0
        anchors = [global_state[n] for n, _ in self.model.named_parameters()] if self.prox_mu else None
        correction = (self.control.correction(k, [n for n, _ in self.model.named_parameters()])
                      if self.control is not None else None)
        for x, y in client_batches(self.data, idx, cfg, self.generator(t, k, Stream.BATCHES, *extra),
                                   self.channels_last, self.epochs(t), self.batch_size(t)):
            with autocast(cfg.precision, self.device):
                loss = F.cross_entropy(self.model(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if anchors:  # FedProx: + mu (w - w_global); the loss reported below stays F_k's
                add_proximal_([p.grad for p in self.params], self.params, anchors, self.prox_mu)
            if correction:  # SCAFFOLD: + (c - c_k)
                add_correction_([p.grad for p in self.params], correction)
            self.opt.step()
            m = num_targets(y)  # images: len(y); text: its characters (the loss is their mean)
            total += loss.detach().float() * m
            count += m
        return total / count

    def weights(self, k: int, t: int, global_state: dict, *extra: int) -> tuple[dict, torch.Tensor]:
        """FedAvg's upload before encoding: client k's weights after local training, and its loss."""
        loss = self.train(k, t, global_state, *extra)
        return {name: v.detach() for name, v in self.model.state_dict().items()}, loss

    def gradient(self, k: int, t: int, global_state: dict, *extra: int) -> tuple[dict, torch.Tensor]:
        """FedSGD's upload: the full-batch gradient of client k's loss at the global model, and the loss."""
        idx, n = self.clients[k], self.sizes[k]  # n images, or characters of text
        g = self.generator(t, k, Stream.BATCHES)
        self._seed_dropout(t, k)
        self.load(global_state)
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for start in range(0, len(idx), EVAL_BATCH):  # chunks bound memory; sums make it exact
            x, y = batch_inputs(self.data, idx[start:start + EVAL_BATCH], train=True, augment=self.cfg.augment,
                                channels_last=self.channels_last, generator=g)
            with autocast(self.cfg.precision, self.device):
                loss = F.cross_entropy(self.model(x), y, reduction="sum") / n
            loss.backward()
            total += loss.detach().float()
        grads = {}
        for name, p in self.model.named_parameters():
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            grads[name] = grad + self.cfg.weight_decay * p.detach()
        return grads, total

    @torch.inference_mode()
    def evaluate(self, global_state: dict, labels: torch.Tensor | None = None) -> tuple[float, float]:
        """Accuracy and mean loss of `global_state` on the whole test split (scored against `labels` if given:
        the test images relabelled, as clustered FL's label-swapped groups see them)."""
        self.load(global_state)
        self.model.eval()
        y_all = self.data.y_test if labels is None else labels
        correct = torch.zeros((), device=self.device)
        loss = torch.zeros((), device=self.device)
        for start in range(0, len(y_all), EVAL_BATCH):
            idx = torch.arange(start, min(start + EVAL_BATCH, len(y_all)), device=self.device)
            x, y = batch_inputs(self.data, idx, train=False, augment=False, channels_last=self.channels_last)
            y = y if labels is None else labels[idx]
            with autocast(self.cfg.precision, self.device):
                out = self.model(x).float()
            loss += F.cross_entropy(out, y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
        n = num_targets(y_all)  # accuracy and loss per image, or per character of text
        return correct.item() / n, loss.item() / n
