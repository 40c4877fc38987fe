"""Cosine-weighted averaging: updates that point where the round's mean update points count for more.

The rule is this project's design, written for the FedAvg presentation's proposal
"averaging weighted by the cosine similarity of the updates"; no paper defines
exactly this rule. With Delta_k = w_k - w_global, client k's update with all float
parameters flattened into one vector, and T = cosine_temperature:

    r       = sum_k n_k/n Delta_k                          the FedAvg update: the reference direction
    c_k     = <Delta_k, r> / (||Delta_k|| ||r||)           cosine similarity; 0 when Delta_k or r is zero
    a_k     = n_k exp(c_k / T) / sum_j n_j exp(c_j / T)    a softmax over the cosines, prior n_k/n
    w_{t+1} = w_global + sum_k a_k Delta_k                 (= sum_k a_k w_k, since the a_k sum to 1)

The weights depend on directions only: scaling every update by one positive
constant leaves them alone. When all updates point the same way (every c_k = 1)
a_k = n_k/n and the rule is FedAvg; T -> infinity gives FedAvg too, and T -> 0
gives all the weight to the best aligned client. Since c_k lies in [-1, 1], no
client's weight moves by more than a factor exp(2/T) relative to another's.

Closest published relatives (their rules differ from ours as stated):
- FedAdp, Wu & Wang, "Fast-Convergent Federated Learning with Adaptive Weighting",
  IEEE ICC 2021 (arXiv:2012.00661): the angle between client k's gradient and the
  n_k-weighted global gradient, smoothed over rounds, goes through a Gompertz
  function f, and the weights are n_k exp(f(theta_k)) normalised. Ours has the same
  shape with the cosine over a temperature in place of f(smoothed angle), and keeps
  no state across rounds.
- FLTrust, Cao, Fang, Liu & Gong, NDSS 2021 (arXiv:2012.13995): trust scores
  ReLU(cosine) to an update the server computes on a clean root dataset of its own,
  with each client update rescaled to that update's norm. Ours needs no server data.

Under FedSGD the uploads are gradients, so the update is the upload itself
(`from_config` reads the algorithm); the weights are unchanged by the sign and
scale of the step, so this is the same rule. Integer buffers come from the first
upload, as in the mean.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from ..stages import weights_to_update
from .base import Aggregate, Aggregator, needs_single_uploads
from .mean import aggregate as weighted_mean


def flat_updates(global_state: dict, received: list, gradients: bool = False) -> torch.Tensor:
    """One row per upload: Delta_k = w_k - w_global over the float tensors, flattened, in float32.

    With `gradients` (FedSGD) the upload already is the update and is taken as it is.
    """
    rows = []
    for r in received:
        update = ({n: v.float() for n, v in r.values.items() if v.is_floating_point()} if gradients
                  else weights_to_update(r.values, global_state))
        rows.append(torch.cat([u.flatten() for u in update.values()]))
    return torch.stack(rows)


def cosine_similarities(updates: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """cos(Delta_k, r) for each row Delta_k of `updates`, in float64 on the CPU; 0 where either vector is zero."""
    dots = (updates @ reference).cpu().double()
    norms = (torch.linalg.vector_norm(updates, dim=1) * torch.linalg.vector_norm(reference)).cpu().double()
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    return torch.where(norms > 0, dots / safe, torch.zeros_like(dots)).clamp(-1.0, 1.0)


def cosine_weights(updates: torch.Tensor, sizes, temperature: float) -> torch.Tensor:
    """a_k = n_k exp(c_k / T) / sum_j n_j exp(c_j / T), c_k the cosine of Delta_k to the n_k/n mean update."""
    n_k = torch.tensor([float(s) for s in sizes], dtype=torch.float64)
    if not n_k.sum() > 0:
        raise ValueError(f"cosine weights need sample counts summing to a positive number, got {n_k.sum().item()}")
    share = (n_k / n_k.sum()).to(updates.device, updates.dtype)
    reference = share @ updates  # r = sum_k n_k/n Delta_k
    cos = cosine_similarities(updates, reference)
    return torch.softmax(n_k.log() + cos / temperature, dim=0)  # log n_k: a client with n_k = 0 gets weight 0


class CosineAggregator(Aggregator):
    """The next model moves by the updates weighted by n_k exp(cos(Delta_k, mean update) / T), normalised."""

    name = "cosine"
    settings = ("cosine_temperature",)
    requested_by = "aggregator='cosine'"
    conflicts = needs_single_uploads("the server only learns the sum of masked uploads, not the single updates whose "
                               "directions it weighs (use aggregator='mean')")

    def __init__(self, temperature: float = 1.0, gradients: bool = False):
        if not temperature > 0:
            raise ConfigError(f"cosine_temperature={temperature!r} is out of range: it must be > 0")
        self.temperature, self.gradients = temperature, gradients

    @classmethod
    def from_config(cls, cfg) -> "CosineAggregator":
        return cls(cfg.cosine_temperature, gradients=cfg.algorithm == "fedsgd")

    def weights(self, global_state, received) -> torch.Tensor:
        """The a_k of this round's uploads (sum 1)."""
        updates = flat_updates(global_state, received, self.gradients)
        return cosine_weights(updates, [r.weight for r in received], self.temperature)

    def aggregate(self, t, global_state, received, cohort):
        a = self.weights(global_state, received)
        return Aggregate(weighted_mean([r.values for r in received], a.tolist()))
