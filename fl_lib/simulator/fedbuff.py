"""FedBuff: buffered asynchronous aggregation (Nguyen et al. 2022) on the simulated clock.

`concurrency` clients (0 means m = max(round(C K), 1)) train at once, each from the
global model it downloaded when it started. A client's upload arrives at its start
time plus its link time (`links.py`: download + compute + upload + latency). The
server buffers arrivals; when `buffer_size` of them are in (K; 0 means m) it applies
one update. With Delta_i = w_i - w_base_i, client i's model change (w_base_i is the
model it started from), tau_i its staleness (server updates since it started) and
eta_g the server learning rate (`server_lr`):

    w <- w + eta_g * sum_i c_i s(tau_i) Delta_i,        s(tau) = 1 / sqrt(1 + tau)

    c_i = 1 / K                  buffer_weights="uniform": the paper's rule (default)
    c_i = n_i / sum_j n_j        buffer_weights="samples": a variant, FedAvg's n_k / n

The paper's Algorithm 1 sums the K buffered updates, divides by K and steps by
eta_g. FLSim, the authors' simulator (flsim/optimizers/async_aggregators.py),
writes a client's update the other way round, before minus after training (a
pseudo-gradient), and steps w - lr * delta: the same step as above, with the
opposite sign on Delta. Neither denominator holds s(tau): a stale update
counts less rather than being renormalized away. buffer_weights="samples" with
server_lr=1 is fl_lib's rule before the paper's normalization, kept bit for bit.
With every tau = 0 and eta_g = 1, "samples" is FedAvg's n_k / n mean, and
"uniform" is the same mean when the n_i are equal.

A diverged upload (NaN/inf) is left out, and the sums, K included, run over the
finite uploads of the buffer only. Why: Algorithm 1 counts an update into the
buffer when the server receives it, and a non-finite one is refused on receipt,
so the mean is over the updates the buffer really holds. Dividing by the full K
would treat a diverged client as a zero update and shrink the step by the share
that diverged: a second learning rate, set by chance.

The paper's regime is concurrency much larger than K: many clients in flight,
an update from the first K to arrive. K may also exceed the concurrency: a
client restarts as soon as it arrives, so the buffer still fills, then with
several jobs of one client from the same model (outside the paper's setting).
One row of metrics.csv is one server update, and every column keeps its meaning.

Order of events: a heap of (time, sequence number, client) (`links.EventQueue`).
All arrivals at one instant are taken before any client restarts, and restarted
clients download the model as it is after them. So with equal client times,
concurrency = buffer_size = m, equal n_i and eta_g = 1 every update is exactly
a synchronous FedAvg round.

Which clients start: when nothing is in flight, `concurrency` clients drawn from
FedAvg's sampling stream of the next round (exactly FedAvg's sample when the
concurrency is m); otherwise free slots are filled from the clients not in
flight, drawn from the server's DISPATCH stream (with C = 1 and the default
concurrency that is simply every client that just arrived: clients train
continuously). A job started from version v draws from round v + 1's streams,
as FedAvg's round v + 1 would; a client's n-th further job from the same
version adds the key n, so no two jobs share draws.
With the adaptive policy a job gets the width of `links.adaptive_plan`'s rule (the
clock's `AdaptiveWidth.job_width`) over all clients at that round's links; there is no
deadline here, so every client fits.

The pieces are the synchronous round's (build.py): the Federation's client side
trains and encodes a job, its clock times it, and the aggregator is the
staleness-weighted buffer (core/aggregators/buffer.py).
"""
from __future__ import annotations

import warnings

import numpy as np

from ..core.aggregators.base import Received
from ..core.aggregators.buffer import buffer_coefficients  # noqa: F401  (0.4's name here, re-exported)
from ..core.errors import DivergenceError
from ..core.links import EventQueue
from ..core.metrics import RoundMetrics
from ..core.rng import SERVER, Stream, numpy_generator, sampling_generator
from ..core.stages import Job

MAX_DEAD_UPDATES = 3  # consecutive updates whose every upload was non-finite before giving up


class FedBuff:
    """The asynchronous server of one `Federation`; `step(t)` runs until server update t."""

    def __init__(self, fed):
        self.fed = fed
        cfg = fed.cfg
        self.concurrency = cfg.concurrency or cfg.clients_per_round  # clients training at once
        self.buffer_size = cfg.buffer_size or self.concurrency
        self.queue = EventQueue()
        self.jobs: dict[int, dict] = {}  # client -> its job in flight
        self.buffer: list[dict] = []  # arrived jobs waiting for the next update
        self.idle: list[int] = []  # clients that arrived at the current instant, to restart after it
        self.version = 0  # server updates applied so far
        self.now = 0.0  # simulated time of the last event
        self.last_update = 0.0  # simulated time of the last update
        self.downloads = 0  # models sent since the last update
        self.dispatches = 0  # restarts so far (keys the DISPATCH stream)
        self.repeats: dict[int, tuple[int, int]] = {}  # client -> (version of its last job, jobs from it - 1)
        self.started = False

    # -- events -------------------------------------------------------------
    def step(self, t: int) -> RoundMetrics:
        """Process arrivals until the buffer is full, apply server update t and return its metrics row."""
        if t != self.version + 1:
            raise ValueError(f"fedbuff update {t} requested after update {self.version}")
        if not self.started:
            self.started = True
            self._restart(self._sample(1))
        while True:
            if self.idle and (not len(self.queue) or self.queue.peek_time() > self.now):
                self._restart(self._choose())  # this instant's arrivals are all in: restart them
            arrival, k = self.queue.pop()
            self.now = arrival
            self.buffer.append(self.jobs.pop(k))
            self.idle.append(k)
            if len(self.buffer) == self.buffer_size:
                return self._update(t)

    def _choose(self) -> list[int]:
        if not self.jobs:  # nothing in flight: FedAvg's sample for the next round
            return self._sample(self.version + 1)
        free = self.concurrency - len(self.jobs)
        candidates = [k for k in range(self.fed.cfg.num_clients) if k not in self.jobs]
        rng = numpy_generator(self.fed.cfg.seed, self.dispatches, SERVER, Stream.DISPATCH)
        return sorted(rng.choice(candidates, size=min(free, len(candidates)), replace=False).tolist())

    def _sample(self, t: int) -> list[int]:
        """`concurrency` distinct clients from FedAvg's sampling stream of round t (its very sample if that is m)."""
        cfg = self.fed.cfg
        if self.concurrency == cfg.clients_per_round:
            return self.fed.sample_clients(t)
        rng = sampling_generator(cfg.seed, t)
        return sorted(rng.choice(cfg.num_clients, size=self.concurrency, replace=False).tolist())

    def _restart(self, clients: list[int]) -> None:
        self.idle = []
        self.dispatches += 1
        for k in clients:
            self._start(k)

    def _start(self, k: int) -> None:
        """Client k downloads the current model, trains, and its upload is scheduled to arrive."""
        fed = self.fed
        v, t_job = self.version, self.version + 1
        last_v, n = self.repeats.get(k, (-1, -1))
        n = n + 1 if last_v == v else 0
        self.repeats[k] = (v, n)
        base = {name: w.detach().clone() for name, w in fed.global_state.items()}
        bits = fed.clock.job_width(t_job, k)
        up = fed.client_side.upload(Job(k, t_job, bits, (n,) if n else ()), base)
        job = {"client": k, "version": v, "n": fed.sizes[k], "loss": up.loss, "bits": bits,
               "bytes": 0, "error": 0.0, "delta": None}
        if not up.diverged:
            job["bytes"], job["error"] = len(up.blob), up.error
            job["delta"] = {name: up.received[name].float() - w.float()
                            for name, w in base.items() if w.is_floating_point()}
        else:
            warnings.warn(f"fedbuff: client {k} sent non-finite values (diverged); its upload is left out")
        self.downloads += 1
        self.jobs[k] = job
        self.queue.push(self.now + fed.clock.client_time(t_job, k, bits).total, k)

    # -- the server update ------------------------------------------------------
    def _update(self, t: int) -> RoundMetrics:
        fed = self.fed
        good = [j for j in self.buffer if j["delta"] is not None]
        staleness = [self.version - j["version"] for j in good]
        if good:
            fed.dead_rounds = 0
            # w <- w + sum_i eta_g c_i s(tau_i) Delta_i over the finite uploads (module docstring)
            received = [Received(j["client"], j["delta"], j["n"], tau) for j, tau in zip(good, staleness)]
            fed.global_state = fed.pipeline.aggregator.aggregate(t, fed.global_state, received, []).state
        else:
            fed.dead_rounds += 1
            if fed.dead_rounds >= MAX_DEAD_UPDATES:
                raise DivergenceError(
                    f"every fedbuff upload diverged (NaN/inf) for {fed.dead_rounds} updates in a row up to update "
                    f"{t}: the learning rate lr={fed.cfg.lr} is probably too high for model={fed.cfg.model}")
        row = RoundMetrics(
            round=t, train_loss=float(np.mean([j["loss"] for j in good])) if good else None,
            upload_bytes=sum(j["bytes"] for j in self.buffer), download_bytes=fed.model_bytes * self.downloads,
            quant_error=float(np.mean([j["error"] for j in good])) if good else None,
            dropped_clients=len(self.buffer) - len(good), sim_seconds=self.now - self.last_update,
            mean_bits=float(np.mean([j["bits"] for j in good])) if good else None,
            mean_staleness=float(np.mean(staleness)) if good else None)
        self.version = t
        self.last_update = self.now
        self.downloads = 0
        self.buffer = []
        return row

    # -- checkpoints --------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly: the event heap, jobs in flight, the buffer, the counters."""
        def job_state(j):
            delta = None if j["delta"] is None else {n: v.detach().cpu() for n, v in j["delta"].items()}
            return {**j, "delta": delta}
        return {"heap": [list(e) for e in self.queue._heap], "seq": self.queue._seq,
                "jobs": [job_state(j) for j in self.jobs.values()], "buffer": [job_state(j) for j in self.buffer],
                "idle": list(self.idle), "version": self.version, "now": self.now,
                "last_update": self.last_update, "downloads": self.downloads, "dispatches": self.dispatches,
                "repeats": [[k, v, n] for k, (v, n) in sorted(self.repeats.items())], "started": self.started}

    def load_state_dict(self, s: dict) -> None:
        dev = self.fed.device

        def job(j):
            delta = None if j["delta"] is None else {n: v.to(dev) for n, v in j["delta"].items()}
            return {**j, "delta": delta}
        self.queue._heap = [(float(a), int(b), int(c)) for a, b, c in s["heap"]]
        self.queue._seq = int(s["seq"])
        self.jobs = {j["client"]: job(j) for j in s["jobs"]}
        self.buffer = [job(j) for j in s["buffer"]]
        self.idle = list(s["idle"])
        self.version, self.now, self.last_update = s["version"], s["now"], s["last_update"]
        self.downloads, self.dispatches, self.started = s["downloads"], s["dispatches"], s["started"]
        self.repeats = {k: (v, n) for k, v, n in s["repeats"]}
