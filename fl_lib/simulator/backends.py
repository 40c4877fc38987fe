"""Backends: how a round's clients are trained. Each turns jobs and the global model into Uploads.

    sequential   one client after another on one model (`ClientSide.upload`)
    batched      every client at once with torch.func.vmap (batched.py), then the same client stages
    pool         worker processes, each with its own model (pool.py)
    auto         batched on CUDA; on a CPU, sequential for the first round it runs, then the pool
                 from the next round on if that round took at least POOL_MIN_SECONDS (see `AutoBackend`)

No backend touches the Federation's state: each gets the global model as an argument.
Flower's ClientApp (runtime/flower.py) calls the same `ClientSide.upload`.
"""
from __future__ import annotations

import time


from ..core.client import all_finite
from ..core.errors import ConfigError
from ..core.stages import Job, Upload
from . import batched


def _cpu(state):
    return None if state is None else {k: v.detach().cpu() for k, v in state.items()}


class ClientSide:
    """What runs on a client: local computation (Trainer), the client stages, then the transport."""

    def __init__(self, trainer, pipeline):
        self.trainer, self.pipeline = trainer, pipeline
        self.local = trainer.gradient if pipeline.local == "gradient" else trainer.weights

    def reference(self, global_state):
        """What an upload is taken against: the global model for delta uploads, else None (weights)."""
        return _cpu(global_state) if self.pipeline.delta else None

    def upload(self, job: Job, global_state: dict, trained=None, reference=None) -> Upload:
        """Client job.client's side of round job.round from `global_state`: compute, transform, send.

        `trained` is (values, loss) when a batched backend already trained the client.
        `reference` saves recomputing it for every client of a round.
        """
        k = job.client
        sent, loss = trained if trained is not None else self.local(k, job.round, global_state, *job.extra)
        up = Upload(k, job.bits, self.trainer.sizes[k], float(loss), None, None)
        if not all_finite(loss, sent):
            return up  # no payload: the server counts the client as diverged
        for stage in self.pipeline.stages:
            sent = stage.client(job, sent, global_state)
        if reference is None:
            reference = self.reference(global_state)
        return self.pipeline.transport.send(job, sent, up, reference)


class Sequential:
    name = "sequential"

    def __init__(self, client_side: ClientSide):
        self.client_side = client_side

    def uploads(self, t: int, jobs: list[Job], global_state: dict) -> list[Upload]:
        reference = self.client_side.reference(global_state)
        return [self.client_side.upload(job, global_state, reference=reference) for job in jobs]

    def close(self):
        pass


class Batched(Sequential):
    """Every job's local training as one vmapped computation; the client stages then run per client."""

    name = "batched"

    def uploads(self, t, jobs, global_state):
        trained = batched.train_clients(self.client_side.trainer, [j.client for j in jobs], t, global_state)
        reference = self.client_side.reference(global_state)
        return [self.client_side.upload(job, global_state, trained.pop(job.client), reference) for job in jobs]


POOL_MIN_SECONDS = 4.0  # a round's training time from which auto moves its clients to worker processes


class AutoBackend:
    """engine=auto on a CPU: sequential, unless the first round's clients took POOL_MIN_SECONDS or more.

    Two 2-core AMD EPYC VMs of this project measured the pool against sequential
    (benchmarks/parallel.py): quick model rounds of 6.7 s sequential went 1.38x
    faster in the pool, rounds of 1.9-2.6 s 0.74-0.95x (slower: the workers' fixed
    cost per round, sending the model and decoding uploads, is a large share of a
    short round), and the paper model's long rounds 1.2-1.4x. So the choice is made
    from the round time measured here: the first round runs sequentially and is
    timed; the pool takes over only from 4 s, and only with 2 or more usable cores,
    2 or more clients per round, and at least 2 rounds still to go (its start-up,
    a few seconds per worker, is paid once).
    """

    def __init__(self, sequential: Sequential, make_pool, cores: int, rounds_left):
        self.sequential, self.make_pool, self.cores, self.rounds_left = sequential, make_pool, cores, rounds_left
        self.chosen = None  # the backend picked after the first round, or None while undecided
        self.measured = None  # seconds the first round's training took

    @property
    def name(self) -> str:
        return "auto (undecided)" if self.chosen is None else f"auto: {self.chosen.name}"

    def uploads(self, t, jobs, global_state):
        if self.chosen is not None:
            return self.chosen.uploads(t, jobs, global_state)
        start = time.perf_counter()
        uploads = self.sequential.uploads(t, jobs, global_state)
        self.measured = time.perf_counter() - start
        self.chosen = self.sequential
        if (self.measured >= POOL_MIN_SECONDS and self.cores >= 2 and len(jobs) >= 2
                and self.rounds_left(t) >= 2):
            self.chosen = self.make_pool()
        return uploads

    def close(self):
        if self.chosen is not None and self.chosen is not self.sequential:
            self.chosen.close()


def build_backend(fed) -> object:
    """The backend of `fed.cfg.engine` for this device (engine=auto: batched on CUDA, `AutoBackend` on a CPU)."""
    from .pool import pool_backend, usable_cores  # worker processes only when a run asks for them

    cfg, client_side = fed.cfg, fed.client_side
    sequential = Sequential(client_side)
    if fed.pipeline.asynchronous:  # FedBuff trains one job at a time, in event order
        return sequential
    if cfg.engine == "pool":
        if fed.device.type != "cpu":
            raise ConfigError(f"engine='pool' trains clients in CPU processes; device={cfg.device!r} is "
                              f"{fed.device.type}: use engine=auto or sequential there")
        return pool_backend(fed)
    batchable = fed.pipeline.local == "weights"  # FedSGD takes one full gradient per client: nothing to batch
    if cfg.engine == "batched" and batchable:
        return Batched(client_side)
    if cfg.engine == "auto":
        if fed.device.type == "cuda":
            return Batched(client_side) if batchable else sequential
        if fed.device.type == "cpu" and not fed.data.is_text:  # the pool was not measured for the LSTM
            return AutoBackend(sequential, lambda: pool_backend(fed), usable_cores(),
                               lambda t: cfg.num_rounds - t)
    return sequential
