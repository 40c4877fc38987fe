"""engine=pool (worker processes per round), run_many (runs in parallel) and two processes sharing one run."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fl_lib.simulator import backends
from fl_lib.simulator import pool
from fl_lib.runtime import results
from fl_lib.core.config import Config
from fl_lib.core.errors import FLError
from fl_lib.simulator.federation import Federation
from tests.tiny import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def tiny(**kw) -> Config:
    """The shared tiny federation with five clients, momentum and weight decay, three rounds."""
    return tiny_config(**{**dict(num_clients=5, alpha=0.5, momentum=0.9, weight_decay=5e-4, num_rounds=3), **kw})


def rounds(fed, n):
    out = []
    for t in range(1, n + 1):
        out.append(fed.round(t).as_dict())  # the metrics columns: wall seconds vary
    return out


@pytest.mark.parametrize("kw", [dict(bits=8, upload="delta", client_fraction=0.8),
                                dict(bits=8, secure_aggregation=True)], ids=["delta", "secagg"])
@pytest.mark.slow
def test_pool_engine_equals_the_sequential_engine(one_thread, kw):
    cfg = tiny(**kw)  # secure aggregation: plain values cross the process boundary, masked at the server
    expected = rounds(Federation(cfg), 3)
    fed = Federation(cfg.replace(engine="pool", workers=2))
    try:
        got = rounds(fed, 3)
        assert fed.pool is not None and fed.pool.workers == 2
    finally:
        fed.close()
    assert got == expected  # byte for byte: same thread count, same client order at the server


@pytest.mark.slow
def test_a_killed_worker_is_detected_and_the_round_retried(one_thread):
    cfg = tiny(engine="pool", workers=2)
    expected = rounds(Federation(cfg.replace(engine="sequential")), 2)
    fed = Federation(cfg)
    try:
        got = rounds(fed, 1)
        victim = next(iter(fed.pool._executor._processes.values()))
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        got += [fed.round(2).as_dict()]
    finally:
        fed.close()
    assert got == expected


@pytest.mark.slow
def test_workers_that_keep_dying_stop_the_run_with_a_message(one_thread):
    fed = Federation(tiny(engine="pool", workers=2))
    stop = threading.Event()

    def killer():  # kills every worker as soon as it exists, so the retry dies too
        while not stop.is_set():
            executor = fed.pool._executor if fed.pool is not None else None
            for proc in list((getattr(executor, "_processes", None) or {}).values()):
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, TypeError):
                    pass
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        with pytest.raises(FLError, match="died twice"):
            fed.round(1)
    finally:
        stop.set()
        thread.join()
        fed.close()


def test_pool_size_follows_cores_and_clients():
    assert pool.assign([0, 1, 2, 3], {0: 10, 1: 10, 2: 30, 3: 5}, 2) == [[2], [0, 1, 3]]
    cfg = tiny(engine="pool", workers=8, client_fraction=0.4)  # 2 clients per round
    assert pool.pool_size(cfg)[0] == 2


@pytest.mark.slow
def test_run_many_equals_a_loop_and_computes_a_prefix_once(tmp_path, one_thread):
    configs = [tiny(seed=0), tiny(seed=1), tiny(seed=0, num_rounds=2)]
    got = results.run_many(configs, workers=2, root=tmp_path / "many", progress=False)
    assert [r.config for r in got] == configs
    assert len(list((tmp_path / "many").iterdir())) == 2  # seed 0 at 2 rounds is the prefix of seed 0 at 3
    for cfg, r in zip(configs, got):
        alone = results.run(cfg, root=tmp_path / "loop", progress=False)
        assert r.metrics.drop(columns="seconds").equals(alone.metrics.drop(columns="seconds"))
        assert r.summary["final_test_acc"] == alone.summary["final_test_acc"]
    again = results.run_many(configs, workers=2, root=tmp_path / "many", progress=False)  # all stored
    assert [r.summary["rounds"] for r in again] == [3, 3, 2]


@pytest.mark.slow
def test_two_processes_asking_for_the_same_run_share_it(tmp_path):
    cmd = [sys.executable, "-m", "fl_lib", "run", "--preset", "smoke", "--dataset", "synthetic-mnist", "--model", "2nn",
           "--num-rounds", "4",
           "--device", "cpu", "--no-progress", "--out", str(tmp_path / "same")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0].replace(outs[1][0].rsplit(", ", 1)[-1], outs[0][0].rsplit(", ", 1)[-1])
    waited = [err for _, err in outs if "waiting: another process" in err]
    assert len(waited) <= 1  # the later one waited for the lock (unless the first had finished before it asked)
    r = results.load_run(tmp_path / "same")  # checksums agree: nothing was written twice at once
    assert r.summary["rounds"] == 4


def test_one_core_means_no_processes(monkeypatch, tmp_path):
    """On one core auto stays sequential and run_many loops in this process: nothing to lose there."""
    monkeypatch.setattr(pool, "CORE_BUDGET", 1)
    monkeypatch.setattr(backends, "START_SECONDS", 0.0)  # even a run of milliseconds would try the pool
    fed = Federation(tiny(engine="auto", num_clients=4))
    fed.round(1)
    assert fed.pool is None and fed.backend.name == "auto: sequential"
    monkeypatch.setattr(pool, "CORE_BUDGET", 1)
    monkeypatch.setattr(results, "_run_in_processes", lambda *a: pytest.fail("processes started on one core"))
    got = results.run_many([tiny(seed=0), tiny(seed=1)], root=tmp_path, progress=False)
    assert [r.summary["rounds"] for r in got] == [3, 3]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to see whether the workers are gone")
@pytest.mark.slow
def test_workers_end_when_the_run_is_killed(tmp_path):
    """SIGKILL of the process running the federation leaves no worker behind."""
    script = tmp_path / "killed.py"
    script.write_text(
        "import os\n"
        "from fl_lib.core.config import Config\n"
        "from fl_lib.simulator.federation import Federation\n"
        "fed = Federation(Config(dataset='synthetic-mnist', model='2nn', num_clients=4, local_epochs=1,\n"
        "                        augment=False, device='cpu', engine='pool', workers=2))\n"
        "fed.round(1)\n"
        "print(' '.join(str(p.pid) for p in fed.pool._executor._processes.values()), flush=True)\n"
        "os.kill(os.getpid(), 9)\n")  # no __main__ guard on purpose: the workers must not rerun this script
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 2
    deadline = time.time() + 10
    alive = pids
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [p for p in pids if _alive(p)]
    for p in alive:  # clean up before failing
        os.kill(p, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived their killed parent"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_auto_times_both_engines_and_keeps_the_faster(monkeypatch):
    """engine=auto runs a round sequentially, a round in the pool (workers started beforehand), and keeps
    the one that trained a sample faster; a run too short to pay for the pool's start-up never tries it."""
    monkeypatch.setattr(pool, "CORE_BUDGET", 2)
    fed = Federation(tiny(engine="auto", num_clients=4))
    assert fed.backend.name == "auto (undecided)"
    fed.round(1)  # the 2NN's rounds take milliseconds: the pool's start-up would never pay
    assert fed.backend.name == "auto: sequential" and fed.pool is None
    monkeypatch.setattr(backends, "START_SECONDS", 0.0)
    for gain, winner in ((0.0, "pool"), (1e9, "sequential")):  # the pool always / never fast enough
        monkeypatch.setattr(backends, "MIN_GAIN", gain)
        fed = Federation(tiny(engine="auto", num_clients=4))
        try:
            fed.round(1)
            assert fed.backend.name == "auto (undecided)" and fed.backend._trial is not None
            fed.round(2)  # in the pool, timed
            assert set(fed.backend.measured) == {"sequential", "pool"}
            assert fed.backend.name == f"auto: {winner}" and (fed.pool is not None) == (winner == "pool")
            assert fed.round(3).train_loss is not None
        finally:
            fed.close()
