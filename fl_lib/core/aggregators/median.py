"""The coordinate-wise median of the received models (Yin et al. 2018), a robust alternative to the mean.

Each coordinate of the next model is the median of that coordinate over the
round's received uploads; n_k is ignored (one client, one vote), so one client
sending extreme values moves no coordinate past the other clients' values. With
an even count the two middle values are averaged. Integer buffers come from the
first upload, as in the mean.
"""
from __future__ import annotations

import torch

from .base import Aggregate, Aggregator, needs_single_uploads


def per_coordinate(states: list[dict[str, torch.Tensor]], reduce, what: str) -> dict[str, torch.Tensor]:
    """`reduce` of each float tensor's values sorted along the clients (dim 0, float32); integer buffers
    come from the first state. The sorting shared by the median and the trimmed mean."""
    if not states:
        raise ValueError(f"{what} needs at least one state")
    out = {}
    for name, first in states[0].items():
        if not first.is_floating_point():
            out[name] = first.clone()
            continue
        ordered = torch.stack([s[name].to(first.device, torch.float32) for s in states]).sort(dim=0).values
        out[name] = reduce(ordered).to(first.dtype)
    return out


def coordinate_median(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    n = len(states)

    def middle(ordered):
        return ordered[(n - 1) // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return per_coordinate(states, middle, "coordinate_median")


class MedianAggregator(Aggregator):
    """The next model is the coordinate-wise median of the received models."""

    name = "median"
    requested_by = "aggregator='median'"
    conflicts = needs_single_uploads("the server only learns the sum of masked uploads, not the values a median needs "
                               "(use aggregator='mean')")

    def aggregate(self, t, global_state, received, cohort):
        return Aggregate(coordinate_median([r.values for r in received]))
