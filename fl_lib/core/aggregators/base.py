"""What every aggregator is given and gives back."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..stages import Stage


@dataclass
class Received:
    """One upload the server decoded: client k's values (weights, a gradient for FedSGD, or FedBuff's
    update Delta), n_k, and how many server updates old the model it started from is (FedBuff)."""

    client: int
    values: dict[str, torch.Tensor]
    weight: int
    staleness: int = 0


@dataclass
class Aggregate:
    """The next global model. A secure sum also reports what the clients sent (masked bytes) and their
    quantization errors, since its uploads never pass the codec; None leaves the transport's numbers."""

    state: dict[str, torch.Tensor]
    upload_bytes: int | None = None
    errors: list[float] | None = None


def needs_single_uploads(secure_sum_reason: str) -> dict[str, str]:
    """The conflicts of an aggregator that reads each client's upload (median, trimmed mean, cosine,
    soft clip): the private sums show the server only a sum, and FedBuff applies its own buffer."""
    return {"secure-sum": secure_sum_reason,
            "dp-secure-sum": "the server only learns the noised sum of masked uploads (use aggregator='mean')",
            "dp-mean": "DP-FedAvg's noise is calibrated to the sum of clipped updates (use aggregator='mean')",
            "buffer": "FedBuff's server applies its staleness-weighted buffer (use aggregator='mean')"}


class Aggregator(Stage):
    """The server's rule: the round's received uploads (and the global model) -> the next global model.

    `cohort` is every client sampled in round t, including those that dropped out (a
    secure sum needs it). `steps_when_empty`: a round that sampled nobody still
    steps (DP adds its noise); otherwise such a round leaves the model alone.
    """

    name = "aggregator"
    steps_when_empty = False

    @classmethod
    def from_config(cls, cfg) -> "Aggregator":
        """The aggregator with the settings it declares (`settings`) taken from `cfg`."""
        return cls()

    def state_dict(self) -> dict:
        """What the aggregator carries from round to round (a server optimizer's moments), for checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def aggregate(self, t: int, global_state: dict, received: list[Received], cohort: list[int]) -> Aggregate:
        raise NotImplementedError

    def divergence_cause(self, cfg) -> str | None:
        """Why every upload of several rounds may have diverged, when this stage knows better than the lr."""
        return None
