"""The server's average of client uploads: FedAvg's n_k / n weighted mean."""
from __future__ import annotations

import torch


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
