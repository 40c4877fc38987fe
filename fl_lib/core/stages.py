"""The stage protocol: what a round's pipeline is made of, and the codec's transport.

A synchronous round is

    client k:  train  ->  client stages (e.g. DP clipping)  ->  transport.send     (an Upload)
    server:    transport.receive each upload  ->  aggregator  ->  the next global model

`simulator/build.py` assembles the stages for a Config; the Federation runs them
without knowing which they are. A stage is a small object with a `client` hook
(and, for transports, a `receive` hook on the server). Every stage has a `name`
and declares what it cannot work with: `conflicts`, other stage names with the
reason, and `refusal(settings)`, the settings it needs (a secure sum needs integer
codes on one grid). `check_conflicts` applies both when the pipeline is built, and
`simulator/build.py`'s `check` before any run starts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import codec
from .errors import ConfigError
from .quant import relative_error
from .rng import Stream, torch_generator


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

    @property
    def diverged(self) -> bool:
        return self.blob is None and self.received is None


@dataclass(frozen=True)
class Job:
    """One client's work in a round: client k, round t, its upload width, and `extra` keys (FedBuff's n-th job)."""

    client: int
    round: int
    bits: int
    extra: tuple = ()


class Stage:
    """A step of the pipeline. `conflicts`: {other stage name: why the two cannot be combined}."""

    name = "stage"
    conflicts: dict[str, str] = {}
    settings: tuple[str, ...] = ()  # Config fields only this stage reads: refused when it is not in the pipeline
    requested_by = ""  # how a config asks for this stage, for that refusal ("aggregator='median'")

    @classmethod
    def refusal(cls, settings) -> str | None:
        """Why this stage cannot run with `settings` (the run's Config), in one line; None if it can."""
        return None

    def client(self, job: Job, values: dict, global_state: dict) -> dict:
        """Client side: transform the values client `job.client` is about to upload."""
        return values


class Transport(Stage):
    """The last client stage: turns values into an Upload, and the server side turns it back."""

    def send(self, job: Job, values: dict, up: Upload, reference) -> Upload:
        raise NotImplementedError

    def receive(self, up: Upload, reference, device) -> dict:
        """The values the server takes from `up`; raises CodecError if the bytes do not decode."""
        raise NotImplementedError


class CodecTransport(Transport):
    """Channel-wise quantized (or float32) uploads through the codec (codec.py), with stochastic
    rounding drawn from the client's Stream.ROUNDING; `reference` is the global model for delta uploads."""

    name = "codec"

    def __init__(self, seed: int, rounding: str, device):
        self.seed, self.rounding, self.device = seed, rounding, device

    def send(self, job, values, up, reference):
        gen = torch_generator(self.seed, job.round, job.client, Stream.ROUNDING, *job.extra)
        up.blob = codec.encode(values, bits=job.bits, rounding=self.rounding, reference=reference, generator=gen)
        up.received = self.receive(up, reference, self.device)
        lossless = job.bits == 32 and reference is None  # float32 uploads arrive bit for bit: error 0
        up.error = 0.0 if lossless else relative_error(values, up.received)
        return up

    def receive(self, up, reference, device):
        return {name: v.to(device) for name, v in codec.decode(up.blob, reference=reference).items()}


def check_conflicts(stages: list, settings=None) -> None:
    """Refuse, in one line, two stages (instances or classes) that declare they cannot be combined,
    or a stage that refuses the run's `settings`."""
    names = {s.name for s in stages}
    for s in stages:
        for other, why in s.conflicts.items():
            if other in names:
                raise ConfigError(f"{s.name} cannot be combined with {other}: {why}")
        why = s.refusal(settings) if settings is not None else None
        if why:
            raise ConfigError(why)


def weights_to_update(values: dict, global_state: dict) -> dict[str, torch.Tensor]:
    """Delta_k = w_k - w_global over the float tensors, in float32."""
    return {n: w.float() - global_state[n].float() for n, w in values.items() if w.is_floating_point()}


class UniformSampler:
    """m = max(round(C K), 1) distinct clients per round, in increasing order, on the round's SAMPLING key."""

    def __init__(self, seed: int, num_clients: int, per_round: int):
        self.seed, self.num_clients, self.per_round = seed, num_clients, per_round

    def __call__(self, t: int) -> list[int]:
        from .rng import sampling_generator

        rng = sampling_generator(self.seed, t)
        return sorted(rng.choice(self.num_clients, size=self.per_round, replace=False).tolist())
