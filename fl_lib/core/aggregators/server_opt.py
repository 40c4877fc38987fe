"""Server optimizers on the round's aggregate: FedAvgM (Hsu et al. 2019) and FedAdam, FedYogi
(Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2), computed as Flower 1.42 computes them.

The inner aggregator (the mean, the median, ...) turns the round's uploads into a
model y_t. Instead of taking y_t as the next model, the server reads the change it
proposes as a pseudo-gradient and feeds it to an optimizer with memory:

    Delta_t = y_t - x_t                                   x_t the global model of round t

With eta = server_lr, beta_1 = server_momentum, beta_2 = server_beta2, tau = server_tau,
every operation per coordinate, m_0 = v_0 = 0 and t the 1-based round:

    avgm   m_t = beta_1 m_{t-1} + Delta_t
           x_{t+1} = x_t + eta m_t

    adam   m_t = beta_1 m_{t-1} + (1 - beta_1) Delta_t
           v_t = beta_2 v_{t-1} + (1 - beta_2) Delta_t^2
           x_{t+1} = x_t + eta_t m_t / (sqrt(v_t) + tau),   eta_t = eta sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1))

    yogi   m_t = beta_1 m_{t-1} + (1 - beta_1) Delta_t
           v_t = v_{t-1} - (1 - beta_2) Delta_t^2 sign(v_{t-1} - Delta_t^2)
           x_{t+1} = x_t + eta m_t / (sqrt(v_t) + tau)

Where these follow Flower rather than the papers (tests/test_server_opt.py drives
Flower's FedAvgM, FedAdam and FedYogi strategies as the oracle):
- Reddi et al. start from v_{-1} >= tau^2; Flower starts v at 0, and so do we.
- Flower's FedAdam scales eta by Adam's bias correction (Kingma & Ba 2015) with the
  exponent t + 1 rather than Adam's t; Reddi et al.'s Algorithm 2 has no bias
  correction, nor has Flower's FedYogi. At t = 1 with beta_1 = 0.9, beta_2 = 0.99
  the factor is 0.74, and it tends to 1 as rounds go by.
- Reddi et al.'s Delta_t is the plain mean of the clients' updates; here it is the
  inner aggregator's (FedAvg's n_k / n weighted mean by default, as in Flower).
- FedAvgM is torch.optim.SGD's momentum, as in Flower and in Hsu et al.'s
  v <- beta v + Delta w, w <- w - v; both write the pseudo-gradient as x_t - y_t
  and step downhill, which is the same arithmetic with every sign flipped.
  With beta_1 = 0 and eta = 1 FedAvgM is FedAvg, and then the next model is y_t
  itself, as Flower does too: x_t + (y_t - x_t) need not round back to y_t.

Only float tensors take the step; integer buffers (counters) come from y_t, as the
mean takes them from the first upload. The moments m, v are the state a checkpoint
carries (`state_dict`), so a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .base import Aggregate, Aggregator

KINDS = ("avgm", "adam", "yogi")
_PRIVATE = "the private aggregators produce the model themselves (noise and masks calibrated to their sum)"


class ServerOptimizer(Aggregator):
    """Wraps an aggregator and moves the global model along its aggregate with momentum (avgm) or Adam / Yogi."""

    name = "server-opt"
    settings = ("server_momentum", "server_beta2", "server_tau")
    requested_by = "server_opt='avgm', 'adam' or 'yogi'"
    conflicts = {"server-sgd": "FedSGD already takes a server step on the mean gradient (use algorithm='fedavg')",
                 "buffer": "FedBuff's server takes its own step on the staleness-weighted buffer "
                           "(use algorithm='fedavg')",
                 "dp-mean": _PRIVATE, "secure-sum": _PRIVATE, "dp-secure-sum": _PRIVATE}

    def __init__(self, inner: Aggregator, kind: str, lr: float = 1.0, beta1: float = 0.9, beta2: float = 0.99,
                 tau: float = 1e-3):
        if kind not in KINDS:
            raise ValueError(f"server optimizer kind={kind!r}: must be one of {', '.join(KINDS)}")
        self.inner, self.kind, self.lr, self.beta1, self.beta2, self.tau = inner, kind, lr, beta1, beta2, tau
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg, inner: Aggregator | None = None) -> "ServerOptimizer":
        """cfg.server_opt around `inner` (default: cfg.aggregator's class, built from cfg)."""
        if inner is None:
            from .registry import aggregator_class
            inner = aggregator_class(cfg.aggregator).from_config(cfg)
        return cls(inner, cfg.server_opt, cfg.server_lr, cfg.server_momentum, cfg.server_beta2, cfg.server_tau)

    @classmethod
    def refusal(cls, settings) -> str | None:
        """FedAvgM keeps no second moment: beta_2 and tau set for it would be silently ignored."""
        if settings.server_opt != "avgm":
            return None
        defaults = {f.name: f.default for f in dataclasses.fields(settings)}
        for name in ("server_beta2", "server_tau"):
            if getattr(settings, name) != defaults[name]:
                return (f"{name}={getattr(settings, name)!r} applies to server_opt='adam' or 'yogi' only "
                        f"(server_opt='avgm' keeps no second moment): leave it at {defaults[name]!r}")
        return None

    @property
    def is_fedavg(self) -> bool:
        """FedAvgM without momentum at eta = 1: the inner aggregate is the next model (Flower's rule too)."""
        return self.kind == "avgm" and self.beta1 == 0 and self.lr == 1

    def aggregate(self, t, global_state, received, cohort):
        result = self.inner.aggregate(t, global_state, received, cohort)
        if self.is_fedavg:
            return result
        state = dict(result.state)
        for name, y in result.state.items():
            if y.is_floating_point():
                state[name] = self._step(t, name, global_state[name], y)
        return Aggregate(state, result.upload_bytes, result.errors)

    def _step(self, t: int, name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x_{t+1} of one tensor; the operations in Flower's order, so that float32 rounds as Flower's does."""
        x32 = x.float()
        delta = y.to(x.device, torch.float32) - x32
        m = _previous(self.m, name, delta)
        if self.kind == "avgm":
            self.m[name] = self.beta1 * m + delta
            return (x32 + self.lr * self.m[name]).to(x.dtype)
        self.m[name] = self.beta1 * m + (1 - self.beta1) * delta
        v, square = _previous(self.v, name, delta), delta * delta
        if self.kind == "adam":
            self.v[name] = self.beta2 * v + (1 - self.beta2) * square
        else:  # yogi: v moves towards Delta^2 by at most (1 - beta_2) Delta^2, whichever side it is on
            self.v[name] = v - (1 - self.beta2) * square * torch.sign(v - square)
        return (x32 + self._eta(t) * self.m[name] / (_sqrt(self.v[name]) + self.tau)).to(x.dtype)

    def _eta(self, t: int) -> float:
        if self.kind == "adam":  # Flower's FedAdam: Adam's bias correction, exponent t + 1 (see the docstring)
            return self.lr * math.sqrt(1 - self.beta2 ** (t + 1.0)) / (1 - self.beta1 ** (t + 1.0))
        return self.lr

    def state_dict(self) -> dict:
        """The moments m (and v for adam, yogi) on the CPU, with the inner aggregator's own state if any."""
        state = {}
        for key, moments in (("m", self.m), ("v", self.v)):
            if moments:
                state[key] = {name: value.detach().cpu().clone() for name, value in moments.items()}
        inner = self.inner.state_dict()
        if inner:
            state["inner"] = inner
        return state

    def load_state_dict(self, state: dict) -> None:
        """Moments are moved to the model's device by the next aggregate."""
        self.m = {name: value.clone() for name, value in state.get("m", {}).items()}
        self.v = {name: value.clone() for name, value in state.get("v", {}).items()}
        if "inner" in state:
            self.inner.load_state_dict(state["inner"])

    def divergence_cause(self, cfg) -> str | None:
        return self.inner.divergence_cause(cfg) or (
            f"the server step (server_opt={cfg.server_opt!r}, server_lr={cfg.server_lr}) or the learning rate "
            f"lr={cfg.lr} is probably too large for model={cfg.model}; try a smaller server_lr or lr")


def _sqrt(v: torch.Tensor) -> torch.Tensor:
    """sqrt(v) rounded correctly to float32, as numpy's is: torch's vectorized float32 sqrt on the CPU is one
    ulp off for some values (about 1 in 6 with AVX-512), so its bits would depend on the processor. Through
    float64 the result is exact before the one rounding to float32."""
    return v.double().sqrt().to(v.dtype)


def _previous(moments: dict, name: str, like: torch.Tensor) -> torch.Tensor:
    """The moment of `name` from the last round, on `like`'s device (zeros before the first step)."""
    if name not in moments:
        return torch.zeros_like(like)
    return moments[name].to(like.device)
