"""FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks"): local training held near the
global model.

Client k minimizes, from the global model w^t it was sent,

    h_k(w) = F_k(w) + mu/2 ||w - w^t||^2        so that        grad h_k(w) = grad F_k(w) + mu (w - w^t)

On non-IID data the clients' local optima pull apart; the proximal term bounds
how far E local epochs can carry a client from w^t (mu = 0 is FedAvg). The term's
gradient is added to each parameter's gradient after backward (`add_proximal_`)
instead of adding the term to the loss: the two give the same step, but the
gradient needs one elementwise op per tensor and no autograd graph over every
parameter, and the loss a client reports stays its data loss F_k. The Trainer
(sequential, pool, FedBuff, Flower) and batched.py (engine=batched) both call it.
"""
from __future__ import annotations

from .stages import Stage


class FedProx(Stage):
    """Carries FedProx's mu into the pipeline (`Pipeline.prox_mu`), which the client's local training applies."""

    name = "fedprox"
    settings = ("prox_mu",)
    requested_by = "prox_mu > 0"
    conflicts = {"server-sgd": "FedSGD takes no local steps: there is nothing to hold near the global model"}

    def __init__(self, mu: float):
        self.mu = mu


def add_proximal_(grads, weights, anchors, mu: float) -> None:
    """g <- g + mu (w - w^t) in place for each (g, w, w^t): the gradient of mu/2 ||w - w^t||^2 added to F_k's.

    `weights` may be stacked clients (a leading client dim, engine=batched): the
    global model `anchors` broadcasts over it.
    """
    for g, w, anchor in zip(grads, weights, anchors):
        if g is not None:  # a parameter the loss did not reach: SGD skips it, and it never left w^t
            g.add_(w.detach() - anchor, alpha=mu)
