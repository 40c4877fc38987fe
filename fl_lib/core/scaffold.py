"""SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning",
Algorithm 1 with option II): local steps corrected by control variates.

On non-IID data each client's local steps follow its own gradient g_k and drift
away from the direction of the global objective. SCAFFOLD keeps a server control
variate c and one per client, c_k (zero at the start and kept across rounds), and
corrects every local step by c - c_k, an estimate of (global gradient - client
gradient). With x the global model, eta_l = lr, K_k client k's local steps:

    client k:  y <- x;  K_k times:  y <- y - eta_l (g_k(y) - c_k + c)
               c_k+ = c_k - c + (x - y) / (K_k eta_l)                   (option II)
               uploads  Delta y_k = y - x  and  Delta c_k = c_k+ - c_k;  c_k <- c_k+
    server:    x <- x + eta_g sum_k (n_k / n) Delta y_k
               c <- c + (1 / N) sum_k Delta c_k   = c + (|S| / N) mean_k Delta c_k

Where this follows FedAvg rather than the paper, said once here:
- The model step is the inner aggregator's (FedAvg's n_k / n weighted mean; the
  paper takes the plain mean over S). eta_g = 1: x + mean Delta y is FedAvg's model.
  A server rate eta_g != 1 is `server_opt='avgm'` with `server_momentum=0` and
  `server_lr=eta_g`: x + eta_g Delta exactly, and no second field for one number.
- c keeps the paper's rule (sum over the clients that arrived, divided by N, the
  number of clients), so that c stays the mean of every client's c_k.
- With client momentum beta (cfg.momentum) the local steps are torch.optim.SGD's on
  the corrected gradient, and a constant gradient g moves the model by
  eta_l g sum_{i=1..K} (1 - beta^i) / (1 - beta) rather than K eta_l g (the buffer
  starts at zero every round). Option II's K_k is that sum (`effective_steps`;
  exactly K at beta = 0), so that c_k estimates a gradient and not a momentum-
  amplified one, which the momentum would amplify a second time in the next steps.
  Weight decay is part of the gradient torch's SGD steps on, and so of c_k.

The correction is added to the gradient after backward, where FedProx adds its
pull (`add_correction_`, called by trainer.py and batched.py). Clients keep their
own c_k in a deployment; the simulator keeps them all here, keyed by client, so
that they ride in the aggregator's checkpointed state. The upload is two codec
messages back to back (`ControlTransport`): the model part as FedAvg sends it, then
Delta c_k at the same width, so SCAFFOLD's uploads are twice FedAvg's bytes; the
download carries c in float32 beside the model (`download_bytes`).
"""
from __future__ import annotations

import dataclasses
import io

import torch

from . import codec
from .aggregators.base import Aggregate, Aggregator
from .client import num_steps
from .rng import Stream, torch_generator
from .stages import Transport

PREFIX = "scaffold.delta_c/"  # Delta c_k's entries among the values a client stage hands on
CONTROL_KEY = 1  # the extra rng key of Delta c's stochastic rounding (the model part keeps the plain key)
_PRIVATE = "Delta c_k would reach the server in the clear, unclipped, beside the protected update"


class Scaffold(Aggregator):
    """Holds c and every c_k; its client hook computes c_k+ and Delta c_k, its aggregate updates c
    after the inner aggregator (the mean, possibly inside a server optimizer) has made the model."""

    name = "scaffold"
    settings = ("scaffold",)
    requested_by = "scaffold=True"
    conflicts = {"server-sgd": "FedSGD takes no local steps: there is no client drift to correct",
                 "buffer": "FedBuff's clients start from stale models, which c and c_k do not account for "
                           "(use algorithm='fedavg')",
                 "dp-clip": _PRIVATE, "dp-mean": _PRIVATE, "dp-secure-sum": _PRIVATE,
                 "secure-sum": "the server only learns the masked sum of the models, and Delta c_k would need "
                               "a secure sum of its own"}

    def __init__(self, inner: Aggregator, lr: float, steps: list[int], num_clients: int, device="cpu"):
        """`steps[k]`: client k's local steps K_k (`effective_steps` under momentum); `lr`: the clients' eta_l;
        `num_clients`: N; c and the c_k live on `device` (the model's), where local training reads them."""
        self.inner, self.lr, self.steps, self.num_clients = inner, lr, steps, num_clients
        self.device = torch.device(device)
        self.c: dict[str, torch.Tensor] = {}  # empty: zero (before the first aggregate)
        self.clients: dict[int, dict[str, torch.Tensor]] = {}  # c_k of the clients that trained so far

    @classmethod
    def from_config(cls, cfg, inner: Aggregator, sizes: list[int], device="cpu") -> "Scaffold":
        """SCAFFOLD around `inner` for clients holding `sizes` samples (K_k = E ceil(n_k / B))."""
        steps = [effective_steps(num_steps(n, cfg.batch_size, cfg.local_epochs), cfg.momentum) for n in sizes]
        return cls(inner, cfg.lr, steps, cfg.num_clients, device)

    @classmethod
    def refusal(cls, settings) -> str | None:
        if not settings.scaffold:
            return None
        if settings.aggregator != "mean":
            return (f"scaffold=True with aggregator={settings.aggregator!r}: c is the plain mean of the clients' "
                    f"Delta c_k, so one extreme client would steer every client's local steps; use aggregator='mean'")
        if settings.link != "none":
            return (f"scaffold=True with link={settings.link!r}: the clock sizes FedAvg's one-message uploads, "
                    f"not SCAFFOLD's two; use link='none'")
        return None

    # -- client side ---------------------------------------------------------------------------
    def correction(self, k: int, names: list[str]) -> list[torch.Tensor] | None:
        """c - c_k for each parameter in `names` (None while both are zero: the step is FedAvg's)."""
        own = self.clients.get(k)
        if not self.c and own is None:
            return None
        out = []
        for n in names:
            c, c_k = self.c.get(n), None if own is None else own.get(n)
            if c is None:
                out.append(-c_k if c_k is not None else None)
            else:
                out.append(c - c_k if c_k is not None else c)
        return out

    def client(self, job, values, global_state):
        """Option II: c_k+ = c_k - c + (x - y) / (K_k eta_l); keeps c_k+ and adds Delta c_k to the upload."""
        k, scale = job.client, 1.0 / (self.steps[job.client] * self.lr)
        old = self.clients.get(k, {})
        new, out = {}, dict(values)
        for n, y in values.items():
            if not y.is_floating_point():
                continue
            plus = (global_state[n].float() - y.float()) * scale
            if n in self.c:
                plus = plus - self.c[n]
            if n in old:
                plus = plus + old[n]
            new[n] = plus
            out[PREFIX + n] = plus - old[n] if n in old else plus
        self.clients[k] = new
        return out

    # -- server side ---------------------------------------------------------------------------
    def aggregate(self, t, global_state, received, cohort):
        models = [dataclasses.replace(r, values=split(r.values)[0]) for r in received]
        result = self.inner.aggregate(t, global_state, models, cohort)
        self._update_c([split(r.values)[1] for r in received])
        return Aggregate(result.state, result.upload_bytes, result.errors)

    def _update_c(self, deltas: list[dict]) -> None:
        """c <- c + (1 / N) sum_k Delta c_k over the clients that arrived."""
        for n in deltas[0]:
            total = torch.zeros_like(deltas[0][n], dtype=torch.float32, device=self.device)
            for d in deltas:
                total.add_(d[n].to(self.device, torch.float32))
            c = self.c.get(n)
            self.c[n] = total / self.num_clients if c is None else c + total / self.num_clients

    def download_bytes(self, global_state: dict) -> int:
        """Bytes of c as sent beside the model: float32 through the codec, over the model's float tensors."""
        return len(codec.encode({n: v for n, v in global_state.items() if v.is_floating_point()}, bits=32))

    # -- checkpoints and worker processes -------------------------------------------------------
    def state_dict(self) -> dict:
        """c and every c_k on the CPU, with the inner aggregator's own state if any."""
        state = self.variates(list(self.clients))
        inner = self.inner.state_dict()
        if inner:
            state["inner"] = inner
        return state if self.c or self.clients or inner else {}

    def load_state_dict(self, state: dict) -> None:
        self.set_variates(state)
        if "inner" in state:
            self.inner.load_state_dict(state["inner"])

    def variates(self, clients: list[int]) -> dict:
        """c and the c_k of `clients` (those that have one), on the CPU."""
        return {"c": _cpu(self.c), "clients": {k: _cpu(self.clients[k]) for k in clients if k in self.clients}}

    def set_variates(self, state: dict) -> None:
        """Replace c and every c_k by `state`'s (a checkpoint, or a pool worker's share of the clients)."""
        self.c = _on(state.get("c", {}), self.device)
        self.clients = {int(k): _on(v, self.device) for k, v in state.get("clients", {}).items()}

    def take_clients(self, shares: list[dict]) -> None:
        """Keep the c_k that pool workers computed (each share's `variates`); c stays the server's."""
        for share in shares:
            self.clients.update({int(k): _on(v, self.device) for k, v in share["clients"].items()})

    def variates_bytes(self, clients: list[int]) -> bytes:
        """`variates(clients)` as bytes, for the trip to a pool worker."""
        buf = io.BytesIO()
        torch.save(self.variates(clients), buf)
        return buf.getvalue()

    @staticmethod
    def variates_from_bytes(blob: bytes) -> dict:
        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)

    def divergence_cause(self, cfg) -> str | None:
        return self.inner.divergence_cause(cfg)


def effective_steps(steps: int, momentum: float) -> float:
    """sum_{i=1..K} (1 - beta^i) / (1 - beta): how many plain steps K momentum-SGD steps from a zero buffer
    move the model along a constant gradient (K at beta = 0); option II's K with momentum."""
    return float(sum((1 - momentum ** i) / (1 - momentum) for i in range(1, steps + 1)))


def _cpu(tensors: dict) -> dict:
    return {n: v.detach().cpu().clone() for n, v in tensors.items()}


def _on(tensors: dict, device) -> dict:
    return {n: v.detach().to(device).clone() for n, v in tensors.items()}


def split(values: dict) -> tuple[dict, dict]:
    """An upload's values as (the model part, Delta c_k under its parameter names)."""
    model = {n: v for n, v in values.items() if not n.startswith(PREFIX)}
    control = {n[len(PREFIX):]: v for n, v in values.items() if n.startswith(PREFIX)}
    return model, control


def add_correction_(grads, corrections) -> None:
    """g <- g + (c - c_k) in place; `corrections` may be stacked clients (engine=batched)."""
    for g, corr in zip(grads, corrections):
        if g is not None and corr is not None:  # a parameter the loss did not reach: SGD skips it
            g.add_(corr)


def stacked_corrections(control, order: list[int], names: list[str]) -> list[torch.Tensor] | None:
    """c - c_k of clients `order` stacked along a leading dim per parameter (engine=batched); None if all zero."""
    rows = [control.correction(k, names) for k in order]
    if all(r is None for r in rows):
        return None
    out = []
    for i, n in enumerate(names):
        per = [r[i] if r is not None and r[i] is not None else None for r in rows]
        like = next(p for p in per if p is not None)
        out.append(torch.stack([torch.zeros_like(like) if p is None else p for p in per]))
    return out


class ControlTransport(Transport):
    """The inner transport's message for the model part, then a second codec message with Delta c_k at
    the same width (stochastic rounding on its own key): upload_bytes counts both."""

    name = "scaffold-codec"

    def __init__(self, inner: Transport, seed: int, rounding: str, device):
        self.inner, self.seed, self.rounding, self.device = inner, seed, rounding, device

    def send(self, job, values, up, reference):
        model, control = split(values)
        up = self.inner.send(job, model, up, reference)
        gen = torch_generator(self.seed, job.round, job.client, Stream.ROUNDING, *job.extra, CONTROL_KEY)
        second = codec.encode(control, bits=job.bits, rounding=self.rounding, generator=gen)
        up.received = {**up.received, **_prefixed(codec.decode(second), self.device)}
        up.blob = up.blob + second
        return up

    def receive(self, up, reference, device):
        first = codec.message_length(up.blob)
        values = self.inner.receive(dataclasses.replace(up, blob=up.blob[:first]), reference, device)
        return {**values, **_prefixed(codec.decode(up.blob[first:]), device)}


def _prefixed(control: dict, device) -> dict:
    return {PREFIX + n: v.to(device) for n, v in control.items()}
