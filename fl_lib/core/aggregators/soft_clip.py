"""Soft clipping: an update far from the round's typical update is gently down-weighted, never cut off.

The rule is this project's design; its weight function is Huber's. With Delta_k =
w_k - w_global, client k's update with all float parameters flattened, and
c = soft_clip:

    m       = the coordinate-wise median of the Delta_k     (median.py's convention)
    d_k     = ||Delta_k - m||                               how far update k lies from the typical one
    s       = c * median_k d_k                              the threshold, scaled to this round's spread
    a_k     = n_k min(1, s / d_k) / sum_j n_j min(1, s / d_j)      (min(1, s / 0) = 1)
    w_{t+1} = w_global + sum_k a_k Delta_k                  (= sum_k a_k w_k, since the a_k sum to 1)

min(1, s / d) is Huber's psi(d) / d, the weight iteratively reweighted least
squares gives a residual d under Huber's loss (Huber, "Robust Estimation of a
Location Parameter", Ann. Math. Statist. 35(1):73-101, 1964): w_{t+1} is one such
reweighting step for the mean update, started from the coordinate-wise median.

What it reduces to: FedAvg's n_k/n mean whenever no update lies further than s
from m (every weight is 1), in particular when all updates are equal, and as
c -> infinity. An update beyond s keeps the weight n_k s / d_k, so its pull on
the result, a_k ||Delta_k - m|| = n_k s / sum_j n_j min(1, s / d_j), stays below
n_k s over the other clients' weights however far it lies: a far outlier is
gently ignored, not averaged in. If more than half of the updates coincide,
median_k d_k = 0 and every other update gets weight 0 (the limit as s -> 0).

A close relative is centered clipping (Karimireddy, He & Jaggi, "Learning from
History for Byzantine Robust Optimization", ICML 2021, arXiv:2012.10333):
v <- v + 1/n sum_k clip_tau(Delta_k - v), which clips each deviation from a centre
v (the previous aggregate) to a fixed radius tau instead of reweighting whole
updates around the median.

Under FedSGD the uploads are gradients, so the update is the upload itself
(`from_config` reads the algorithm); the weights do not change with the step's
sign or scale. Integer buffers come from the first upload, as in the mean.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import Aggregate, Aggregator, needs_single_uploads
from .cosine import flat_updates
from .mean import aggregate as weighted_mean


def middle(x: torch.Tensor) -> torch.Tensor:
    """The median along dim 0; with an even count the two middle values are averaged (as median.py)."""
    ordered, n = x.sort(dim=0).values, x.shape[0]
    return ordered[(n - 1) // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def soft_clip_weights(updates: torch.Tensor, sizes, soft_clip: float) -> torch.Tensor:
    """a_k = n_k min(1, s / d_k), normalised, d_k the distance of row k to the coordinate-wise median row and
    s = soft_clip times the median d_k; in float64 on the CPU."""
    n_k = torch.tensor([float(s) for s in sizes], dtype=torch.float64)
    dist = torch.linalg.vector_norm(updates - middle(updates), dim=1).cpu().double()
    threshold = soft_clip * middle(dist)
    safe = torch.where(dist > 0, dist, torch.ones_like(dist))
    huber = torch.where(dist <= threshold, torch.ones_like(dist), threshold / safe)  # psi(d) / d
    weights = n_k * huber
    if not weights.sum() > 0:
        raise ValueError(f"soft_clip weights need sample counts summing to a positive number, got {n_k.sum().item()}")
    return weights / weights.sum()


class SoftClipAggregator(Aggregator):
    """The next model moves by the updates weighted by n_k min(1, s / d_k) (Huber weights), normalised."""

    name = "soft_clip"
    settings = ("soft_clip",)
    requested_by = "aggregator='soft_clip'"
    conflicts = needs_single_uploads("the server only learns the sum of masked uploads, not the single updates whose "
                               "distances it weighs (use aggregator='mean')")

    def __init__(self, soft_clip: float = 2.0, gradients: bool = False):
        if not soft_clip > 0:
            raise ConfigError(f"soft_clip={soft_clip!r} is out of range: it must be > 0")
        self.soft_clip, self.gradients = soft_clip, gradients

    @classmethod
    def from_config(cls, cfg) -> "SoftClipAggregator":
        return cls(cfg.soft_clip, gradients=cfg.algorithm == "fedsgd")

    def weights(self, global_state, received) -> torch.Tensor:
        """The a_k of this round's uploads (sum 1)."""
        updates = flat_updates(global_state, received, self.gradients)
        return soft_clip_weights(updates, [r.weight for r in received], self.soft_clip)

    def aggregate(self, t, global_state, received, cohort):
        a = self.weights(global_state, received)
        return Aggregate(weighted_mean([r.values for r in received], a.tolist()))
