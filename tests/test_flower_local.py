"""`python -m fl_lib flower local`: the whole localhost federation in one command, and nothing left running after it."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="Flower is not installed (pip install 'flwr[simulation]>=1.42')")

from fl_lib import cli  # noqa: E402
from fl_lib.runtime import flower_local  # noqa: E402
from tests.test_flower import same_run, tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

needs_proc = pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Flower's detached processes through /proc")


def local_cmd(cfg, out, *flags):
    return [sys.executable, "-m", "fl_lib", "flower", "local", "--preset", "smoke", "--dataset", cfg.dataset,
            "--model", cfg.model, "--augment", "false", "--device", "cpu", "--num-clients", str(cfg.num_clients),
            "--num-rounds", str(cfg.num_rounds), "--bits", str(cfg.bits), "--out", str(out),
            "--connect-timeout", "60", "--round-timeout", "60", *flags]


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
@needs_proc
@pytest.mark.slow
def test_one_command_runs_the_federation_and_stops_it(tmp_path):
    """2 SuperNodes with long-lived ClientApps (the default), 1 round: exit 0, the in-process run's metrics, the
    database kept where asked, the user's ~/.flwr untouched, and none of the processes left."""
    cfg = tiny(num_clients=2, num_rounds=1)
    out, db, home = tmp_path / "local", tmp_path / "kept" / "superlink.db", tmp_path / "home"
    home.mkdir()
    done = subprocess.run(local_cmd(cfg, out, "--keep-db", str(db)), cwd=ROOT, env={**ENV, "HOME": str(home)},
                          capture_output=True, text=True, timeout=400)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert flower_local.UP in log and "1 rounds on flower-deployment" in log
    got = same_run(out, cfg, tmp_path)
    assert got.summary["flower_nodes"] == 2 and db.stat().st_size > 0 and not (home / ".flwr").exists()
    pids = started(out)
    assert sorted(pids.values())[-5:] == ["clientapps0", "clientapps1", "superlink", "supernode0", "supernode1"]
    assert "child" in pids.values()  # the SuperLink's executor of the ServerApp
    for k in range(2):  # the SuperNodes start no ClientApp (--isolation process): these processes ran them
        assert "long-lived ClientApps" in (out / flower_local.LOGS / f"clientapps{k}.log").read_text()
    assert not [f"{name} {pid}" for pid, name in pids.items() if alive(pid)]


@needs_proc
@pytest.mark.slow
def test_ctrl_c_twice_mid_round_stops_everything(tmp_path):
    """SIGINT as round 1 starts, and again during the cleanup: exit 130 within seconds, no process left. With
    Flower's per-message ClientApps, so the detached processes Flower starts for each message go too, and
    Flower's own flower-supernode command (`--supernode flower`)."""
    psutil = pytest.importorskip("psutil")
    cfg = tiny(num_clients=2, num_rounds=2)
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
