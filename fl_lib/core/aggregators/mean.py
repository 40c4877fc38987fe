"""FedAvg's n_k / n weighted mean (McMahan et al. 2017, Algorithm 1)."""
from __future__ import annotations

import torch

from .base import Aggregate, Aggregator


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


class MeanAggregator(Aggregator):
    """The next model is the n_k / n weighted mean of the received models."""

    name = "mean"

    def aggregate(self, t, global_state, received, cohort):
        return Aggregate(aggregate([r.values for r in received], [r.weight for r in received]))
