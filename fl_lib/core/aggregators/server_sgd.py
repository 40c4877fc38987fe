"""FedSGD's server step (McMahan et al. 2017): w <- w - lr * g, g the aggregated client gradients."""
from __future__ import annotations

from .base import Aggregate, Aggregator


class ServerSGD(Aggregator):
    """Wraps an aggregator of gradients (the mean for FedSGD) and takes one SGD step on the global model."""

    name = "server-sgd"

    def __init__(self, inner: Aggregator, lr: float):
        self.inner, self.lr = inner, lr

    def aggregate(self, t, global_state, received, cohort):
        step = self.inner.aggregate(t, global_state, received, cohort)
        state = dict(global_state)
        for name, grad in step.state.items():  # w_{t+1} = w_t - lr * sum_k n_k/n g_k
            state[name] = state[name] - self.lr * grad
        return Aggregate(state, step.upload_bytes, step.errors)
