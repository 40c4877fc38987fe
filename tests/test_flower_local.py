"""`python -m fl_lib flower local`: the whole localhost federation in one command, and nothing left running after it."""
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is not installed (pip install 'flwr[simulation]>=1.42')")

from fl_lib import cli  # noqa: E402
from fl_lib.runtime import checkpoint, flower_faults, flower_local, results  # noqa: E402
from fl_lib.simulator.federation import Federation  # noqa: E402
from tests.test_flower import flower_cmd, tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

needs_proc = pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Flower's detached processes through /proc")


def local_cmd(cfg, out, *flags):
    return flower_cmd("local", cfg, out, "--round-timeout", "60", *flags)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it runs no more)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def started(out) -> dict[int, str]:
    """{pid: name} of every process `flower local` recorded: the SuperLink, SuperNodes and what they started."""
    lines = (Path(out) / flower_local.LOGS / "pids").read_text().split()
    return {int(pid): name for name, pid in zip(lines[::2], lines[1::2])}


# -- bad input, refused before anything starts ---------------------------------------------
@pytest.mark.parametrize("flags, named", [
    (["--num-clients", "40"], "num_clients=40 is not allowed for `flower local`"),
    (["--num-clients", "0"], "num_clients=0"),
    (["--port", "70000"], "port=70000 is not allowed: must be int in [1, 65535]"),
])
def test_bad_input_is_refused_in_one_line(flags, named, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["flower", "local", "--preset", "smoke", "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == 2 and named in err and err.count("\n") == 1, err
    assert "[1, " in err and not out.exists()  # the allowed range, and nothing was started


def test_a_port_in_use_is_refused(tmp_path, capsys):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = cli.main(["flower", "local", "--preset", "smoke", "--out", str(tmp_path / "run"), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and f"port={port} is in use" in err and err.count("\n") == 1, err


# -- stopping: what a process started, detached in a session of its own, goes too --------------
SPAWNER = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
           "start_new_session=True); time.sleep(60)")


@needs_proc
def test_stop_ends_the_processes_and_their_detached_children(tmp_path):
    local = flower_local.LocalFederation(tmp_path / flower_local.LOGS, None, None)
    local.logs.mkdir()
    (local.logs / "pids").write_text("")
    with flower_local._Signals() as local.signals:
        for k in range(2):
            local._start(f"spawner{k}", [sys.executable, "-c", SPAWNER])
        deadline = time.monotonic() + 20
        while len(flower_local._descendants([p.pid for _, p in local.procs])) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        local.stop()
    pids = started(tmp_path)
    assert sorted(pids.values()) == ["child", "child", "spawner0", "spawner1"]  # each spawner's detached child
    assert not [pid for pid in pids if alive(pid)]
    assert not local.home.exists()  # the private FLWR_HOME is gone


def test_signals_wait_while_held():
    """A Ctrl-C while a process is being recorded is raised right after, as KeyboardInterrupt; SIGTERM as
    Terminated; one during the final cleanup not at all."""
    before = signal.getsignal(signal.SIGINT)
    with flower_local._Signals() as signals:
        signals.hold()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # Python runs the handler between bytecodes of the main thread
        with pytest.raises(flower_local.Terminated):
            signals.release()
        signals.hold()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        with pytest.raises(KeyboardInterrupt):
            signals.release()
        signals.hold()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is before  # restored on the way out


# -- the real federation --------------------------------------------------------------
DOOMED = 2  # the client whose SuperNode dies between secure aggregation's steps 2 and 3
# s the server waits at each step for its answers; the dead node's step 3 waits all of it, once. On long-lived
# ClientApps and short-waits SuperNodes a step takes the work (the survivors' step 3 trains, ~1 s) plus well under
# a second of messaging: 8 s leaves 4x that, so a slow machine cannot turn a survivor into a second dropout.
ROUND_TIMEOUT = 8


def kill_node(out, k: int) -> list[int]:
    """SIGKILL SuperNode k and its ClientApps with all they started, as a machine that dies; returns the PIDs."""
    by_name = {name: pid for pid, name in started(out).items()}
    roots = [by_name[f"supernode{k}"], by_name[f"clientapps{k}"]]
    below = flower_local._descendants(roots)  # they run: `flower local` reaps them only when it stops
    flower_local._signal_all(roots, below, signal.SIGKILL)  # each leads its own group (a session of its own)
    return roots + [pid for pid, _ in below]


@needs_proc
@pytest.mark.slow
def test_one_command_runs_a_secure_federation_through_a_killed_supernode(tmp_path, one_thread):
    """`flower local`: a SuperLink and 3 SuperNodes with long-lived ClientApps (the default), secure aggregation,
    all 3 sampled, threshold 2. SuperNode 2 answers steps 1 and 2, then is SIGKILLed with its ClientApps as its
    ClientApp holds step 3 (flower_faults.HOLD). The round ends at the timeout, client 2 counts as dropped, the
    survivors' step 4 unmasks, and the new global model equals the in-process secure sum without client 2.
    The command exits 0, keeps the database where asked, leaves the user's ~/.flwr alone, and no process."""
    cfg = tiny(num_clients=3, num_rounds=1, secure_aggregation=True)
    out, db, home, marker = tmp_path / "local", tmp_path / "kept" / "superlink.db", tmp_path / "home", tmp_path / "held"
    home.mkdir()
    env = {**ENV, "HOME": str(home), flower_faults.HOLD: flower_faults.hold_value("masked-input", DOOMED, 1, marker)}
    del env["PYTHONWARNINGS"]  # the ServerApp warns of the dropout, and `flwr run` streams its log here
    proc = subprocess.Popen(local_cmd(cfg, out, "--keep-db", str(db), "--round-timeout", str(ROUND_TIMEOUT)),
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed, done = [], threading.Event()

    def kill_when_held():
        while not done.is_set() and proc.poll() is None:
            if marker.exists():
                killed.append((int(marker.read_text()), kill_node(out, DOOMED)))
                return
            done.wait(0.05)

    killer = threading.Thread(target=kill_when_held, daemon=True)
    killer.start()
    try:
        log, _ = proc.communicate(timeout=400)
    finally:
        done.set()
        killer.join()
        if proc.poll() is None:
            flower_local._signal_all([], flower_local._descendants([proc.pid]), signal.SIGKILL)
            proc.kill()
            proc.wait()
    (tmp_path / "local.log").write_text(log)  # for a failure's post-mortem, beside the federation's logs
    assert proc.returncode == 0, log[-3000:]
    assert flower_local.UP in log and "1 rounds on flower-deployment" in log
    assert killed, f"client {DOOMED}'s ClientApp never reached step 3: {log[-3000:]}"
    clientapp, pids = killed[0]
    assert clientapp in pids  # the ClientApp that held step 3 died with its SuperNode

    node_logs = {k: (out / flower_local.LOGS / f"supernode{k}.log").read_text() for k in range(cfg.num_clients)}
    kinds = {k: re.findall(r"Receiving: (\S+) message", text) for k, text in node_logs.items()}
    assert kinds[DOOMED] == ["query", "query.secagg_advertise", "query.secagg_share", "train.secagg"]
    assert "Sending: query.secagg_share" in node_logs[DOOMED] and "Sending: train.secagg" not in node_logs[DOOMED]
    for k in {0, 1, 2} - {DOOMED}:  # the survivors answer step 4 alone
        assert kinds[k][-2:] == ["train.secagg", "query.secagg_unmask"], kinds[k]

    got = results.load_run(out)
    row = got.metrics.iloc[0]
    assert row["dropped_clients"] == 1 and row["sampled_clients"] == 3
    assert got.summary["runtime"] == "flower-deployment" and got.summary["flower_nodes"] == 3
    assert f"no answer from client(s) [{DOOMED}] within the timeout" in log

    ref = Federation(cfg)  # in process: client 2 joined the key agreement and sent nothing
    plan = ref.plan_round(1)
    assert plan.sampled == [0, 1, 2] and not plan.late
    uploads = ref.backend.uploads(1, [j for j in plan.jobs() if j.client != DOOMED], ref.global_state)
    ref_row = ref.finish_round(plan, uploads, late=[DOOMED])
    [last] = checkpoint.list_checkpoints(out / "checkpoints")  # the run's last round: its global model
    state = checkpoint.load(last)
    for name, w in ref.global_state.items():
        assert torch.equal(state["global"][name], w.cpu()), name
    assert row["upload_bytes"] == ref_row.upload_bytes

    assert db.stat().st_size > 0 and not (home / ".flwr").exists()
    names = started(out)
    assert {"superlink", *(f"{kind}{k}" for kind in ("supernode", "clientapps") for k in range(3))} <= set(
        names.values())
    assert "child" in names.values()  # the SuperLink's executor of the ServerApp
    for k in range(3):  # the SuperNodes start no ClientApp (--isolation process): these processes ran them
        assert "long-lived ClientApps" in (out / flower_local.LOGS / f"clientapps{k}.log").read_text()
    assert not [f"{name} {pid}" for pid, name in {**names, **{pid: "killed" for pid in pids}}.items() if alive(pid)]


@needs_proc
@pytest.mark.slow
def test_ctrl_c_twice_mid_round_stops_everything(tmp_path):
    """SIGINT as round 1 starts, and again during the cleanup: exit 130 within seconds, no process left. With
    Flower's per-message ClientApps, so the detached processes Flower starts for each message go too, and
    Flower's own flower-supernode command (`--supernode flower`)."""
    psutil = pytest.importorskip("psutil")
    cfg = tiny(num_clients=1, num_rounds=2)  # one SuperNode: the processes of every kind, fewer to start
    out = tmp_path / "local"
    proc = subprocess.Popen(local_cmd(cfg, out, "--clientapps", "per-message", "--supernode", "flower"), cwd=ROOT,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, below = [], []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "[ROUND 1/2]" in line:  # the ServerApp and the ClientApps are running now
                break
        assert proc.poll() is None, "".join(lines)[-3000:]
        below = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]  # flwr run, mostly
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # impatient: the second one lands in the cleanup
        start = time.monotonic()
        rest, _ = proc.communicate(timeout=30)
        seconds = time.monotonic() - start
    finally:
        if proc.poll() is None:
            flower_local._signal_all([], flower_local._descendants([proc.pid]), signal.SIGKILL)
            proc.kill()
            proc.wait()
    log = "".join(lines) + rest
    assert proc.returncode == 130, log[-3000:]
    assert "interrupted: stopping the local federation" in log and seconds < 15
    pids = {**started(out), **{pid: "below" for pid in below}}
    assert len(pids) > 3 and not [f"{name} {pid}" for pid, name in pids.items() if alive(pid)]
