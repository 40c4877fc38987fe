"""FedBuff's server step (Nguyen et al. 2022): the buffered updates, down-weighted by staleness.

    w <- w + eta_g * sum_i c_i s(tau_i) Delta_i,        s(tau) = 1 / sqrt(1 + tau)

with c_i = 1 / K (weights="uniform", the paper's mean over the buffer) or
n_i / sum_j n_j (weights="samples", FedAvg's weights). The sums run over the
finite buffered updates only (simulator/fedbuff.py says why).
"""
from __future__ import annotations

from ..links import staleness_weight
from .base import Aggregate, Aggregator


def buffer_coefficients(sizes: list[int], staleness: list[int], weights: str, server_lr: float) -> list[float]:
    """eta_g c_i s(tau_i) of each finite buffered update, for weights uniform or samples."""
    if weights == "uniform":  # Nguyen et al. 2022, Algorithm 1: the mean over the buffer, then eta_g
        return [server_lr * (staleness_weight(tau) / len(sizes)) for tau in staleness]
    if weights == "samples":  # n_i s(tau_i) / sum n_j, in the order of operations of fl_lib's earlier rule
        total = float(sum(sizes))
        return [server_lr * (n * staleness_weight(tau) / total) for n, tau in zip(sizes, staleness)]
    raise ValueError(f"buffer_weights={weights!r}: must be 'uniform' or 'samples'")


class BufferAggregator(Aggregator):
    """Applies the buffer's updates Delta_i (Received.values) with their staleness tau_i to the global model."""

    name = "buffer"

    def __init__(self, weights: str, server_lr: float):
        self.weights, self.server_lr = weights, server_lr

    def aggregate(self, t, global_state, received, cohort):
        alphas = buffer_coefficients([r.weight for r in received], [r.staleness for r in received],
                                     self.weights, self.server_lr)
        new = {}
        for name, w in global_state.items():
            if not w.is_floating_point():
                new[name] = w
                continue
            acc = w.float().clone()
            for r, alpha in zip(received, alphas):
                acc.add_(r.values[name].to(acc.device), alpha=alpha)
            new[name] = acc.to(w.dtype)
        return Aggregate(new)
