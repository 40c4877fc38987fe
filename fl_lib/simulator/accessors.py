"""The Federation's pieces under the names they had in 0.4, when one class did everything.

Each is a one-line delegation to the object that now does the job: the sampler,
the Trainer, the Clock or the pipeline. Kept so that code and lessons written
against 0.4 run unchanged; new code calls the pieces directly.
"""
from __future__ import annotations

import torch


class Accessors:
    """0.4's Federation methods and attributes, delegating to the pipeline's pieces."""

    def sample_clients(self, t: int) -> list[int]:
        return self.pipeline.sampler(t)

    def evaluate(self) -> tuple[float, float]:
        """Accuracy and mean loss of the global model on the whole test split."""
        return self.trainer.evaluate(self.global_state)

    def train_client(self, k: int, t: int, *extra: int) -> torch.Tensor:
        """Client k's local training from the global model (it stays in `model`); returns its mean loss."""
        return self.trainer.train(k, t, self.global_state, *extra)

    def client_gradient(self, k: int, t: int):
        """FedSGD's upload: the full-batch gradient of client k's loss at the global model, and the loss."""
        return self.trainer.gradient(k, t, self.global_state)

    def local_update(self, k: int, t: int, *extra: int):
        """Client k's upload of round t before its client stages (weights, or FedSGD's gradient) and its loss."""
        return self.client_side.local(k, t, self.global_state, *extra)

    def generator(self, t, k, stream, *extra):
        return self.trainer.generator(t, k, stream, *extra)

    def upload_size(self, bits: int, cohort: list[int] | None = None) -> int:
        return self.clock.upload_size(bits, cohort)

    def client_time(self, t: int, k: int, bits: int, cohort: list[int] | None = None):
        return self.clock.client_time(t, k, bits, cohort)

    def plan(self, t: int, chosen: list[int]):
        return self.clock.plan(t, chosen)

    def flops_per_sample(self) -> int:
        return self.info.flops_per_sample

    @property
    def model(self):
        return self.trainer.model

    @property
    def opt(self):
        return self.trainer.opt

    @opt.setter
    def opt(self, value):
        self.trainer.opt = value

    @property
    def channels_last(self) -> bool:
        return self.trainer.channels_last

    @property
    def pool(self):
        """The worker processes, when the backend is (or auto chose) the pool; else None."""
        backend = getattr(self.backend, "chosen", self.backend)
        return backend if getattr(backend, "name", "") == "pool" else None

    @property
    def links(self):
        return self.clock.links

    @property
    def model_bytes(self) -> int:
        return self.info.model_bytes

    @property
    def num_params(self) -> int:
        return self.info.num_params

    @property
    def dp_grid(self):
        return self.pipeline.dp_grid

    @property
    def dp_expected_clients(self) -> float:
        return self.pipeline.expected_clients

