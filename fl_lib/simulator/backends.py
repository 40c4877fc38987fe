"""Backends: how a round's clients are trained. Each turns jobs and the global model into Uploads.

    sequential   one client after another on one model (`ClientSide.upload`)
    batched      every client at once with torch.func.vmap (batched.py), then the same client stages
    pool         worker processes, each with its own model (pool.py)
    auto         batched on CUDA; on a CPU whichever of sequential and pool a timed round of each
                 shows faster on this machine (see `AutoBackend`)

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
        trainer.prox_mu = pipeline.prox_mu  # FedProx's mu for every local training of this trainer (0: FedAvg's)

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


TRIAL_SHARE = 0.05  # auto tries the pool only if its start-up (about START_SECONDS) is at most this share of the run
START_SECONDS = 5.0  # the pool's start-up on a 2-core VM: two processes importing torch and building their data
MIN_GAIN = 1.05  # the pool must beat the timed sequential round by this factor to be kept (one round each: noise)


class AutoBackend:
    """engine=auto on a CPU: the faster of sequential and pool, timed on this machine with this model.

    A fixed rule does not carry over between machines: on two 2-core AMD EPYC VMs of
    this project the pool ran the quick model's rounds at 1.38x the sequential speed
    on one and 0.74-0.97x on another, and the paper model's at 1.23-1.41x. So auto
    times both. The first round it runs is sequential; if the rest of the run is long
    enough that the pool's start-up is a small share of it (TRIAL_SHARE), the next
    round runs in the pool, its workers started beforehand so that only training is
    timed. Seconds per trained sample decide (the two rounds may sample different
    clients): the pool is kept if it was MIN_GAIN times faster, else the run goes on
    sequentially (and the pool stops). With one core, one client per round or a short
    run it stays sequential. The two engines round floats in another order, so an
    auto run may differ from a sequential one in the last bits.
    """

    def __init__(self, sequential: Sequential, make_pool, cores: int, rounds_left, samples):
        self.sequential, self.make_pool, self.cores = sequential, make_pool, cores
        self.rounds_left, self.samples = rounds_left, samples  # t -> rounds after t; jobs -> samples they train
        self.chosen = None  # the backend picked, or None while undecided
        self.measured = {}  # seconds per trained sample: {"sequential": ..., "pool": ...}
        self._trial = None  # the pool on trial

    @property
    def name(self) -> str:
        return "auto (undecided)" if self.chosen is None else f"auto: {self.chosen.name}"

    def uploads(self, t, jobs, global_state):
        if self.chosen is not None:
            return self.chosen.uploads(t, jobs, global_state)
        backend = self._trial if self._trial is not None else self.sequential
        start = time.perf_counter()
        uploads = backend.uploads(t, jobs, global_state)
        seconds = time.perf_counter() - start
        self.measured[backend.name] = seconds / max(self.samples(jobs), 1)
        if backend is self.sequential:
            worth = seconds * self.rounds_left(t) * TRIAL_SHARE >= START_SECONDS
            if worth and self.cores >= 2 and len(jobs) >= 2 and self.rounds_left(t) >= 2:
                self._trial = self.make_pool()
                self._trial.start_workers()  # start-up is paid here, outside the timed round
            else:
                self.chosen = self.sequential
        else:
            faster = self.measured["sequential"] >= MIN_GAIN * self.measured["pool"]
            self.chosen = self._trial if faster else self.sequential
            if not faster:
                self._trial.close()
            self._trial = None
        return uploads

    def close(self):
        for backend in (self.chosen, self._trial):
            if backend is not None and backend is not self.sequential:
                backend.close()


def build_backend(fed) -> object:
    """The backend of `fed.cfg.engine` for this device (engine=auto: batched on CUDA, `AutoBackend` on a CPU;
    sequential for text)."""
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
        # Text (the LSTM) stays sequential everywhere: its client steps already run at two thirds of a CPU's
        # matmul peak, and batched.py's stacked LSTMs (engine=batched) measured 0.19x of them there
        # (benchmarks/text.py); on a GPU they have not been timed yet
        if fed.device.type == "cuda":
            return Batched(client_side) if batchable and not fed.data.is_text else sequential
        if fed.device.type == "cpu" and not fed.data.is_text:
            work = 1 if fed.pipeline.local == "gradient" else cfg.local_epochs
            return AutoBackend(sequential, lambda: pool_backend(fed), usable_cores(), lambda t: cfg.num_rounds - t,
                               lambda jobs: work * sum(fed.sizes[j.client] for j in jobs))
    return sequential
