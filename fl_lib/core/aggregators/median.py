"""The coordinate-wise median of the received models (Yin et al. 2018), a robust alternative to the mean.

Each coordinate of the next model is the median of that coordinate over the
round's received uploads; n_k is ignored (one client, one vote), so one client
sending extreme values moves no coordinate past the other clients' values. With
an even count the two middle values are averaged. Integer buffers come from the
first upload, as in the mean.
"""
from __future__ import annotations

import torch

from .base import Aggregate, Aggregator


def coordinate_median(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if not states:
        raise ValueError("coordinate_median needs at least one state")
    out = {}
    for name, first in states[0].items():
        if not first.is_floating_point():
            out[name] = first.clone()
            continue
        ordered = torch.stack([s[name].to(first.device, torch.float32) for s in states]).sort(dim=0).values
        n = len(states)
        middle = ordered[(n - 1) // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
        out[name] = middle.to(first.dtype)
    return out


class MedianAggregator(Aggregator):
    """The next model is the coordinate-wise median of the received models."""

    name = "median"
    requested_by = "aggregator='median'"
    conflicts = {"secure-sum": "the server only learns the sum of masked uploads, not the values a median needs "
                               "(use aggregator='mean')",
                 "dp-secure-sum": "the server only learns the noised sum of masked uploads (use aggregator='mean')",
                 "dp-mean": "DP-FedAvg's noise is calibrated to the sum of clipped updates (use aggregator='mean')",
                 "buffer": "FedBuff's server applies its staleness-weighted buffer (use aggregator='mean')"}

    def aggregate(self, t, global_state, received, cohort):
        return Aggregate(coordinate_median([r.values for r in received]))
