"""The coordinate-wise trimmed mean of the received models (Yin et al. 2018), between the mean and the median.

With n uploads and trim fraction beta, each coordinate drops its b = floor(beta n)
largest and b smallest values and averages the n - 2b left:

    w_{t+1}[i] = 1 / (n - 2b) * sum of the middle n - 2b values of {w_k[i]}

n_k is ignored (one client, one vote), as in Yin et al.'s beta-trimmed mean and
Flower's FedTrimmedAvg, so b clients sending extreme values move no coordinate
past the others'. b is computed as `int(beta * n)`, exactly as Flower and
`scipy.stats.trim_mean` do. Since beta < 0.5, b <= beta n < n / 2: at least one
value always remains, so no fallback is needed; like Flower, a beta outside
[0, 0.5) is refused. b = 0 (a small beta or few uploads) is the unweighted mean.
Integer buffers come from the first upload, as in the mean.

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates", ICML 2018 (arXiv:1803.01498).
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import Aggregate, Aggregator, needs_single_uploads
from .median import per_coordinate


def trimmed_mean(states: list[dict[str, torch.Tensor]], beta: float) -> dict[str, torch.Tensor]:
    """Per coordinate, the mean of `states` without their int(beta n) largest and int(beta n) smallest values."""
    n = len(states)
    cut = int(beta * n)  # floor, as Flower's and scipy's trim_mean; < n / 2 since beta < 0.5
    return per_coordinate(states, lambda ordered: ordered[cut:n - cut].mean(dim=0), "trimmed_mean")


class TrimmedMeanAggregator(Aggregator):
    """The next model is the coordinate-wise beta-trimmed mean of the received models."""

    name = "trimmed_mean"
    settings = ("trim_fraction",)
    requested_by = "aggregator='trimmed_mean'"
    conflicts = needs_single_uploads("the server only learns the sum of masked uploads, not the values a trimmed mean "
                               "sorts (use aggregator='mean')")

    def __init__(self, beta: float = 0.1):
        if not 0.0 <= beta < 0.5:
            raise ConfigError(f"trim_fraction={beta!r} is out of range: allowed 0 <= trim_fraction < 0.5 "
                              "(at least one value per coordinate must remain)")
        self.beta = beta

    @classmethod
    def from_config(cls, cfg) -> "TrimmedMeanAggregator":
        return cls(cfg.trim_fraction)

    def aggregate(self, t, global_state, received, cohort):
        return Aggregate(trimmed_mean([r.values for r in received], self.beta))
