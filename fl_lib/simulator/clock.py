"""The simulated clock: each client's time in a round, who makes the deadline, and at which width.

One object that synchronous rounds, FedBuff and the clock widgets share. It needs
no model and no data: the clients' sample counts, the model's sizes (`ModelInfo`:
its float32 bytes, the tensors an upload holds, its training FLOPs per sample),
the link draws (links.py), and from the pipeline what an upload costs (plain codec
bytes, or a masked share of a secure sum, with its protocol's round trips) and the
width policy (fixed, or adaptive from each client's link).

    T_k = D / down_k + n_k E F / speed_k + U_k / up_k + latency_k      (links.client_seconds)

with E the round's E_t under an epoch schedule (core/schedule.py).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..core import codec
from ..core.links import (ClientTime, Links, adaptive_plan, adaptive_widths, client_seconds, default_budget,
                          pick_width, sync_round, train_flops_per_sample)


class ModelInfo:
    """What the clock needs to know of the model: its float32 bytes, parameter count, what an upload
    holds (zero tensors, to size it at any width) and its training FLOPs per sample (counted once, lazily)."""

    def __init__(self, model: torch.nn.Module, state: dict, input_shape, params_only: bool):
        """`params_only`: uploads hold the parameters only (FedSGD's gradient), not the buffers."""
        names = {n for n, _ in model.named_parameters()} if params_only else set(state)
        self.upload_like = {n: torch.zeros_like(v, device="cpu") for n, v in state.items() if n in names}
        self.model_bytes = len(codec.encode(state, bits=32))  # one float32 broadcast
        self.num_params = sum(v.numel() for v in state.values() if v.is_floating_point())  # d
        self._model, self._shape, self._flops = model, tuple(input_shape), None

    @property
    def flops_per_sample(self) -> int:
        """Training FLOPs of one sample (links.train_flops_per_sample), on a copy of the model."""
        if self._flops is None:
            self._flops = train_flops_per_sample(self._model, self._shape)
        return self._flops


class FixedWidth:
    """Every client uploads at `bits`; a deadline (0: none) drops the clients that would finish later."""

    def __init__(self, bits: int, deadline: float):
        self.bits, self.deadline = bits, deadline

    def plan(self, clock: "Clock", t: int, chosen: list[int]):
        bits = {k: self.bits for k in chosen}
        times = [clock.client_time(t, k, self.bits, chosen) for k in chosen]
        return bits, times, self.deadline

    def job_width(self, clock: "Clock", t: int, k: int) -> int:
        return self.bits


class AdaptiveWidth:
    """Each client gets the widest width in min_bits..min(bits, 16) that fits the budget (links.adaptive_plan):
    the deadline, or else the sampled clients' slowest time at the widest width whose upload does not
    dominate the client's own time, so that without a deadline nobody is dropped."""

    def __init__(self, bits: int, min_bits: int, deadline: float):
        self.bits, self.widths, self.deadline = bits, adaptive_widths(bits, min_bits), deadline
        self._budgets: dict[int, float] = {}

    def plan(self, clock, t, chosen):
        by_width = [{b: clock.client_time(t, k, b, chosen) for b in self.widths} for k in chosen]
        picked, budget = adaptive_plan(by_width, self.deadline)
        # a straggler is timed at the narrowest width; the budget was computed on these very
        # totals, so the client that sets it fits exactly, whatever the float rounding
        times = [c[b or self.widths[-1]] for c, b in zip(by_width, picked)]
        return dict(zip(chosen, picked)), times, budget

    def job_width(self, clock, t, k):
        """FedBuff's width for a job of client k started for round t: the rule over every client at t's links."""
        if t not in self._budgets:  # no deadline there: every client fits its own width, so pick_width never misses
            everyone = range(len(clock.sizes))
            self._budgets = {t: default_budget([{b: clock.client_time(t, c, b) for b in self.widths}
                                                for c in everyone])}
        return pick_width({b: clock.client_time(t, k, b) for b in self.widths}, self._budgets[t])


class Clock:
    """Client times on the link model, and each synchronous round's plan (widths, duration, who is kept)."""

    def __init__(self, links: Links | None, sizes: list[int], epochs: int, info: ModelInfo, policy,
                 sampler: Callable[[int], list[int]], masked_bytes: Callable[[int, list[int]], int] | None = None,
                 protocol_download: Callable[[int], int] | None = None, round_trips: int = 1, schedule=None):
        self.links, self.sizes, self.epochs, self.info, self.policy = links, sizes, epochs, info, policy
        self.sampler = sampler  # round t -> its sampled clients (the default cohort of a secure sum)
        self.masked_bytes = masked_bytes  # (bits, cohort) -> one client's masked upload; None: codec uploads
        self.protocol_download = protocol_download  # cohort size -> bytes a client receives in the protocol
        self.round_trips = round_trips
        self.schedule = schedule  # an epoch schedule: E_t of round t (core/schedule.py); None: `epochs` every round
        self._sizes: dict = {}

    def upload_size(self, bits: int, cohort: list[int] | None = None) -> int:
        """Bytes one client uploads at `bits`: the codec's encoded length (it depends on shapes and width only),
        or, given the round's cohort under secure aggregation, its masked share with key and shares."""
        if cohort is not None and self.masked_bytes is not None:
            key = (bits, tuple(cohort))
            if key not in self._sizes:
                self._sizes[key] = self.masked_bytes(bits, cohort)
            return self._sizes[key]
        if bits not in self._sizes:
            self._sizes[bits] = len(codec.encode(self.info.upload_like, bits=bits))
        return self._sizes[bits]

    def client_time(self, t: int, k: int, bits: int, cohort: list[int] | None = None) -> ClientTime:
        """Client k's simulated time in round t when it uploads at `bits` (links.client_seconds).

        Under secure aggregation the round's cohort (default: its sampled clients) sets what
        the client sends and receives, and it waits one round trip in each protocol round.
        """
        samples = self.sizes[k] * (self.epochs if self.schedule is None else self.schedule.epochs(t))
        state = self.links.state(t, k)
        if self.masked_bytes is None:
            return client_seconds(state, self.info.model_bytes, self.upload_size(bits), samples, 1,
                                  self.info.flops_per_sample)
        cohort = self.sampler(t) if cohort is None else cohort
        return client_seconds(state, self.info.model_bytes + self.protocol_download(len(cohort)),
                              self.upload_size(bits, cohort), samples, 1, self.info.flops_per_sample,
                              round_trips=self.round_trips)

    def plan(self, t: int, chosen: list[int]) -> tuple[dict[int, int | None], float | None, list[bool]]:
        """Each sampled client's bit width (None: a straggler), the round's duration, and who is kept.

        Without a link every client uploads at the policy's width, nobody is dropped and the
        round has no duration. With one, the round lasts the slowest kept client (`sync_round`).
        """
        if self.links is None:
            return {k: self.policy.bits for k in chosen}, None, [True] * len(chosen)
        bits, times, budget = self.policy.plan(self, t, chosen)
        duration, kept = sync_round(times, budget)
        kept = [keep and bits[k] is not None for k, keep in zip(chosen, kept)]
        return bits, duration, kept

    def job_width(self, t: int, k: int) -> int:
        return self.policy.job_width(self, t, k)
