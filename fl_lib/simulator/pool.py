"""Parallel clients on a CPU: worker processes that train a round's clients (engine=pool).

Small local batches do not spread well over a CPU's threads: on 2 cores, two
processes of one thread each trained 10 clients 1.3x faster than one process
with two threads (issue 14). So the pool starts `workers` processes once, for the
life of a `Federation`; each holds the dataset (in shared memory, sent once) and
its own model. Every round the server sends each worker the global model as
bytes and a list of (client, bit width); the worker trains those clients with
their own seeded generators (`ClientSide.upload`, backends.py) and returns each one's
encoded upload, the bytes a real client would send. The server decodes and
averages them in client order, as the sequential engine does.

The numbers are the sequential engine's when the workers use as many threads as
the sequential process would (one each when there are as many workers as cores
and the sequential run had OMP_NUM_THREADS=1): each client's training is then the
same sequence of operations. With other thread counts the convolutions sum in
another order and the runs agree to float rounding only.

A worker that dies (killed, out of memory) breaks the pool: the round is retried
once on a fresh pool, since a round depends only on the global model and the
seeds; a second failure stops the run with a message. Nothing waits forever.
"""
from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch

from ..core.errors import FLError
from ..core.stages import Job

_worker = None  # the worker process's own Federation
CORE_BUDGET = None  # cores this process may use, when results.run_many gave it a share


def usable_cores() -> int:
    """Cores this process may run on: its share under run_many, else its CPU affinity."""
    if CORE_BUDGET is not None:
        return CORE_BUDGET
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def pool_size(cfg) -> tuple[int, int]:
    """(worker processes, threads per worker): `workers` (0 = one per core), never more than clients per round."""
    cores = usable_cores()
    workers = min(cfg.workers or cores, cfg.clients_per_round)
    return workers, max(1, cores // workers)


def state_bytes(state: dict) -> bytes:
    """A state dict as bytes, exactly (every dtype), for the trip to a worker."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buf)
    return buf.getvalue()


def state_from_bytes(blob: bytes, device) -> dict:
    return {k: v.to(device) for k, v in torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True).items()}


def assign(chosen: list[int], work: dict[int, float], workers: int) -> list[list[int]]:
    """Split the round's clients over `workers` so the largest share is small (longest job first)."""
    shares, loads = [[] for _ in range(workers)], [0.0] * workers
    for k in sorted(chosen, key=lambda k: (-work[k], k)):
        i = loads.index(min(loads))
        shares[i].append(k)
        loads[i] += work[k]
    return [sorted(s) for s in shares if s]


def exit_with_parent(parent: int) -> None:
    """End this worker process when its parent dies, however it dies (SIGKILL included).

    An orphaned worker would otherwise wait on its task queue forever, holding a
    dataset and a model. A daemon thread watches the parent's pid (an orphan is
    re-parented, so its parent pid changes). `parent` is the pid the parent
    passed at start: if it died while this process was still starting, the
    watch ends it at once.
    """
    import threading
    import time

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init(engine: type, cfg, data, threads: int, parent: int) -> None:
    """Worker start: its own Federation (the server's class, sent by name) on the shared data; it uses
    only that federation's client side."""
    global _worker
    exit_with_parent(parent)
    torch.set_num_threads(threads)
    _worker = engine(cfg.replace(engine="sequential"), data=data).client_side


def _train(t: int, model: bytes, jobs: list[tuple[int, int]], control: bytes | None = None,
           schedule: dict | None = None) -> tuple[list, bytes | None]:
    """Worker side: clients `jobs` [(k, bits)] of round t from the global model `model`; with SCAFFOLD,
    `control` holds c and these clients' c_k, and their updated c_k go back with the uploads."""
    client_side = _worker
    global_state = state_from_bytes(model, client_side.trainer.device)
    scaffold = client_side.pipeline.control
    if control is not None:
        scaffold.set_variates(scaffold.variates_from_bytes(control))
    if schedule:  # the loss-driven epoch schedule: the server's E_t and losses so far, so E_t is the server's
        client_side.trainer.schedule.load_state_dict(schedule)
    reference = client_side.reference(global_state)
    uploads = []
    for k, bits in jobs:
        up = client_side.upload(Job(k, t, bits), global_state, reference=reference)
        if up.blob is not None:
            up.received = None  # the server decodes the bytes it gets, like a real server
        elif up.received is not None:  # secure aggregation: plain values, masked on the server side
            up.received = {n: v.cpu() for n, v in up.received.items()}
        uploads.append(up)
    return uploads, scaffold.variates_bytes([k for k, _ in jobs]) if control is not None else None


@contextlib.contextmanager
def _main_hidden():
    """Start workers without re-running the caller's script in them.

    A spawned process normally imports the parent's `__main__` file first, which
    re-runs a script that lacks an `if __name__ == "__main__":` guard. The workers
    need nothing from it (they get only a Config, the data and bytes), so while
    they start, `__main__.__file__` is hidden from multiprocessing.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or getattr(getattr(main, "__spec__", None), "name", None) is not None:
        yield  # python -m ..., Jupyter, pytest: multiprocessing imports a module by name, which is guarded
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


class Pool:
    """`workers` processes, each with the dataset and one model, for one `Federation`'s rounds (engine=pool)."""

    name = "pool"

    def __init__(self, fed, workers: int, threads: int):
        self.fed, self.workers, self.threads = fed, workers, threads
        for name in ("x_train", "y_train", "x_test", "y_test", "groups"):
            tensor = getattr(fed.data, name, None)
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                tensor.share_memory_()  # sent to the workers once, as a handle, not a copy
        self._executor = None
        self._start()

    def _start(self):
        ctx = multiprocessing.get_context("spawn")  # fork after torch's threads started is unsafe
        self._executor = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init,
                                             initargs=(type(self.fed), self.fed.cfg, self.fed.data, self.threads,
                                                       os.getpid()))

    def start_workers(self) -> None:
        """Start every worker now (each imports torch and builds its federation), so that a timed round
        that follows measures training, not start-up."""
        if self._executor is None:
            self._start()
        with _main_hidden():
            ready = [self._executor.submit(os.getpid) for _ in range(self.workers)]
        for future in ready:
            future.result()

    def uploads(self, t: int, jobs: list, global_state: dict) -> list:
        """Every job's `Upload` for round t, in job order; retried once if a worker dies."""
        chosen, bits = [j.client for j in jobs], {j.client: j.bits for j in jobs}
        if self._executor is None:  # closed (Federation.close): start again
            self._start()
        for attempt in (1, 2):
            try:
                return self._round(t, chosen, bits, global_state)
            except BrokenProcessPool as e:
                self.close()
                if attempt == 2:
                    raise FLError(f"round {t}: a worker process died twice ({e}); the run stopped at its last "
                                  f"checkpoint: rerun to resume, or use engine=sequential or fewer workers") from None
                self._start()

    def _round(self, t, chosen, bits, global_state):
        fed = self.fed
        model, scaffold = state_bytes(global_state), fed.pipeline.control
        shares = assign(chosen, {k: fed.sizes[k] for k in chosen}, self.workers)
        with _main_hidden():  # submit() starts the worker processes when they are needed
            futures = [self._executor.submit(_train, t, model, [(k, bits[k]) for k in share],
                                             scaffold.variates_bytes(share) if scaffold is not None else None,
                                             schedule=fed.pipeline.schedule.state_dict())
                       for share in shares]
        by_client, updated = {}, []
        for future in futures:
            uploads, control = future.result()
            updated.append(control)
            for up in uploads:
                by_client[up.client] = up
        if scaffold is not None:  # SCAFFOLD: the workers' c_k+ replace the server's copies, once every share is back
            scaffold.take_clients([scaffold.variates_from_bytes(c) for c in updated])
        return [by_client[k] for k in chosen]

    def close(self):
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def pool_backend(fed) -> Pool:
    """The pool backend of `fed`: `pool_size` workers and threads for its config."""
    return Pool(fed, *pool_size(fed.cfg))
