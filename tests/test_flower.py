"""fl_lib on Flower: the Simulation Runtime and a localhost deployment give the in-process engine's run."""
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

flwr = pytest.importorskip("flwr", reason="Flower is not installed (pip install 'flwr[simulation]>=1.42')")

from flwr.app import Context, RecordDict  # noqa: E402

from fl_lib.runtime import flower, flower_local  # noqa: E402
from fl_lib.runtime import results  # noqa: E402
from fl_lib.core.config import preset  # noqa: E402
from fl_lib.simulator.federation import Federation  # noqa: E402
from tests.servers import free_port  # noqa: E402

# torch on one thread: these tiny rounds gain nothing from a second one, and crawl when two threads share
# busy cores (a 3-round in-process run: 10 s on two threads beside other work, 0.2 s on one)
pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tiny(**kw):
    base = dict(dataset="synthetic-mnist", model="2nn", augment=False, device="cpu", num_rounds=2, bits=8)
    base.update(kw)
    return preset("smoke", **base)


def same_run(flower_dir, cfg, tmp_path):
    """The Flower run folder against results.run of the same config: the issue's equivalence."""
    got = results.load_run(flower_dir)
    ref = results.run(cfg, tmp_path / "in-process", progress=False)
    assert got.metrics["upload_bytes"].tolist() == ref.metrics["upload_bytes"].tolist()  # same clients, same codec
    assert got.metrics["dropped_clients"].tolist() == ref.metrics["dropped_clients"].tolist()
    assert (got.metrics["test_acc"] - ref.metrics["test_acc"]).abs().max() <= 0.005
    return got


# -- the Simulation Runtime ---------------------------------------------------------
@pytest.mark.slow
def test_simulation_equals_the_in_process_engine(tmp_path):
    """With DP-FedAvg: the ClientApp clips (fl_lib's client stages), the strategy adds the seeded noise over the
    fixed denominator and keeps the accountant; epsilon and every metric equal the in-process run's.
    (The localhost deployment below covers plain FedAvg.)"""
    cfg = tiny(num_rounds=3, client_fraction=0.5, upload="delta", dp_clip=1.0, dp_noise=0.5)  # Poisson sampling
    flower.run_simulation(cfg, tmp_path / "sim", progress=False)
    got = same_run(tmp_path / "sim", cfg, tmp_path)
    ref = results.load_run(tmp_path / "in-process")
    columns = ["test_acc", "test_loss", "epsilon", "upload_bytes", "sampled_clients", "dropped_clients"]
    assert got.metrics[columns].equals(ref.metrics[columns])
    assert got.summary["epsilon"] == ref.summary["epsilon"] > 0 and got.metrics.sampled_clients.sum() > 0
    assert got.summary["runtime"] == "flower-simulation" and got.summary["flower_nodes"] == cfg.num_clients
    # Flower's messages carry the codec's bytes plus their own framing: a little more, never less
    assert got.summary["total_upload_bytes"] <= got.summary["flower_bytes_up"] <= 1.05 * got.summary[
        "total_upload_bytes"] + 10_000 * cfg.num_rounds


# -- a corrupted upload, through the real ClientApp and strategy (no transport) -----------
@pytest.fixture
def task_identity():
    """What Flower's runtime sets in a ServerApp process before messages are made."""
    from flwr.supercore.task_identity import TaskIdentity
    saved = (TaskIdentity._run_id, getattr(TaskIdentity, "_node_id", None), getattr(TaskIdentity, "_task_id", None))
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def test_a_corrupted_upload_is_refused_and_the_round_goes_on(recwarn, task_identity):
    cfg = tiny(num_clients=3, num_rounds=1)
    fed = Federation(cfg)
    strategy = flower.FLStrategy(fed, nodes={0: 10, 1: 11, 2: 12})
    messages = strategy.configure_train(1, None, None, None)
    replies = []
    for msg in messages:
        k = int(msg.content["job"]["client"])
        msg.metadata.__dict__["_message_id"] = f"m{k}"  # replies need an id to answer to
        context = Context(run_id=1, node_id=10 + k, node_config={"partition-id": k}, state=RecordDict(),
                          run_config={})
        reply = flower.train(msg, context)
        if k == 1:
            blob = bytearray(reply.content["upload"]["blob"])
            blob[len(blob) // 2] ^= 0xFF  # one damaged byte on the way
            reply.content["upload"]["blob"] = bytes(blob)
        replies.append(reply)
    strategy.aggregate_train(1, replies)
    row = strategy.rows[0]
    assert row["dropped_clients"] == 1
    assert any("refused client 1" in str(w.message) for w in recwarn)
    # the refused bytes still crossed the network: they count as traffic
    assert row["upload_bytes"] == sum(len(r.content["upload"]["blob"]) for r in replies)
    assert row["test_acc"] is not None and row["train_loss"] is not None


def _drive(strategy, rounds):
    """Flower's part of a round without a transport: the messages go straight to the ClientApp's function."""
    for server_round in range(1, rounds + 1):
        replies = []
        for msg in strategy.configure_train(server_round, None, None, None):
            k = int(msg.content["job"]["client"])
            msg.metadata.__dict__["_message_id"] = f"m{server_round}-{k}"
            context = Context(run_id=1, node_id=10 + k, node_config={"partition-id": k}, state=RecordDict(),
                              run_config={})
            replies.append(flower.train(msg, context))
        strategy.aggregate_train(server_round, replies)


def test_a_resubmitted_run_goes_on_from_the_run_folder(tmp_path, task_identity):
    """A SuperLink that died after round 1: the next submission resumes from the run folder's checkpoint
    (fl_lib's state, rows and Flower's byte counts), and the rounds equal an uninterrupted in-process run."""
    cfg = tiny(num_clients=3, num_rounds=3, client_fraction=0.7, checkpoint_every=1)
    nodes = {0: 10, 1: 11, 2: 12}
    first = flower.FLStrategy(Federation(cfg), nodes, out=tmp_path / "run")
    _drive(first, 1)
    fed = Federation(cfg)
    resumed = results.resume(fed, tmp_path / "run", cfg.key(), log=lambda m: None)
    assert resumed["round"] == 1 and resumed["flower_bytes_up"] == first.bytes_up > 0
    second = flower.FLStrategy(fed, nodes, out=tmp_path / "run", resumed=resumed)
    _drive(second, 2)  # Flower counts this submission's rounds 1 and 2: fl_lib's rounds 2 and 3
    assert [r["round"] for r in second.rows] == [1, 2, 3] and second.bytes_up > first.bytes_up
    ref = results.run(cfg, tmp_path / "in-process", progress=False).metrics
    assert [r["upload_bytes"] for r in second.rows] == ref.upload_bytes.tolist()
    assert [r["test_acc"] for r in second.rows] == ref.test_acc.tolist()


# -- a real federation on localhost: a SuperLink and 2 SuperNodes -----------------------
# s the server waits for a round's uploads. A round of `tiny` on long-lived ClientApps and short-waits
# SuperNodes takes 1-2 s here (it was 3-5 s with Flower's 3 s wait between two pulls); 8 s leaves 4x for a busy
# machine, and the round with a killed SuperNode waits all of it.
ROUND_TIMEOUT = 8
kill_tree = flower.stop_tree


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """A SuperLink on 127.0.0.1 and 2 SuperNodes (partition-id 0 and 1), stopped however the tests end."""
    if not Path("/proc").is_dir():
        pytest.skip("the fixture finds Flower's child processes through /proc")
    home = tmp_path_factory.mktemp("flwr_home")
    port = free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "localhost"\n\n[superlink.localhost]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    logs = home / "logs"
    logs.mkdir()
    procs = []
    superlink = [BIN / "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(port),
                 "--database", str(home / "superlink.db"), "--disable-runtime-dependency-installation"]

    def start_superlink():  # also the restart of the SuperLink test: same port, same database file
        proc = subprocess.Popen(superlink, env=env, stdout=open(logs / "superlink.log", "a"), stderr=subprocess.STDOUT)
        flower.wait_for_port(port)
        return proc

    try:
        procs.append(start_superlink())
        for k in range(2):
            node_port = free_port()
            procs.append(subprocess.Popen(
                [*flower_local.supernode_command(), "--insecure", "--superlink", f"127.0.0.1:{port}",
                 "--host", "127.0.0.1", "--port", str(node_port), "--isolation", "process",
                 "--node-config", f"partition-id={k} num-partitions=2"],
                env=env, stdout=open(logs / f"supernode{k}.log", "w"), stderr=subprocess.STDOUT))
            flower.wait_for_port(node_port)
            procs.append(subprocess.Popen(  # its long-lived ClientApps (fl_lib's flower_clientapps.py); client 1's
                flower_local.clientapps_command(node_port, procs[-1].pid),  # hold at round 3 (the restart test)
                env={**env, flower.HOLD: f"3:{home / 'held-at-round-3'}"} if k == 1 else env,
                stdout=open(logs / f"clientapps{k}.log", "w"), stderr=subprocess.STDOUT))
        yield {"env": env, "procs": procs, "logs": logs, "start_superlink": start_superlink,
               "held": home / "held-at-round-3"}
    finally:
        for p in procs:
            kill_tree(p)


def deploy_cmd(cfg, out, *flags):
    return [sys.executable, "-m", "fl_lib", "flower", "deploy", "--preset", "smoke", "--dataset", cfg.dataset,
            "--model", cfg.model, "--augment", "false", "--device", "cpu", "--num-clients", str(cfg.num_clients),
            "--num-rounds", str(cfg.num_rounds), "--bits", str(cfg.bits), "--out", str(out),
            "--connect-timeout", "60", *flags]


def _deploy(federation, cfg, out, on_line=None, timeout=400):
    """`fl_lib flower deploy` to the fixture's SuperLink; `on_line(line)` sees its log: True stops reading,
    "stop" also stops the command (as Ctrl-C would, once its SuperLink is gone)."""
    proc = subprocess.Popen(deploy_cmd(cfg, out, "--round-timeout", str(ROUND_TIMEOUT)), cwd=ROOT,
                            env=federation["env"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            verdict = on_line(line) if on_line is not None else False
            if verdict == "stop":
                kill_tree(proc)
            if verdict:
                break
        rest, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    return proc.returncode, "".join(lines) + rest


@pytest.mark.slow
def test_deployment_survives_a_superlink_restart_and_a_killed_supernode(federation, tmp_path):
    """Round 1 on a real SuperLink with 2 SuperNodes equals the in-process round. The SuperLink is then
    SIGKILLed between rounds 1 and 2 and restarted on its database; the resubmitted run goes on from the run
    folder's checkpoint, and its round 2 equals the in-process round 2. Then SuperNode 1 is killed with its
    ClientApps while its ClientApp holds round 3's message (flower.HOLD), and round 3 ends at the timeout with
    the client that answered."""
    cfg = tiny(num_clients=2, num_rounds=3, checkpoint_every=1)
    out = tmp_path / "deployed"
    first_round = out / "checkpoints" / "round-000001.pt"

    def after_round_1(line):  # round 1 is checkpointed: kill the SuperLink (and the ServerApp it runs) now
        if first_round.exists():
            kill_tree(federation["procs"][0])
            return "stop"
        return False

    code, log = _deploy(federation, cfg, out, after_round_1)
    assert first_round.exists() and not (out / "summary.json").exists(), log[-3000:]
    federation["procs"][0] = federation["start_superlink"]()  # the SuperNodes reconnect on their own

    killed = []

    def kill_when_held():  # SuperNode 1 and its ClientApps, as a machine that dies, while round 3 waits on it
        while not federation["held"].exists() and not done.is_set():
            done.wait(0.05)
        if federation["held"].exists():
            for proc in federation["procs"][3:5]:
                kill_tree(proc)
            killed.append(int(federation["held"].read_text() or 0))

    done = threading.Event()
    killer = threading.Thread(target=kill_when_held, daemon=True)
    killer.start()
    try:
        code, log = _deploy(federation, cfg, out)
    finally:
        done.set()
        killer.join()
    assert code == 0, log[-3000:]
    assert killed, f"client 1's ClientApp never reached round 3: {log[-3000:]}"
    assert "resuming from round 1" in log
    got = results.load_run(out)  # a valid run folder: its checksums agree
    assert got.summary["runtime"] == "flower-deployment" and got.summary["flower_nodes"] == 2
    ref = results.run(cfg, tmp_path / "in-process", progress=False).metrics
    for t in (0, 1):  # rounds 1 and 2: before and after the SuperLink's restart
        assert got.metrics.iloc[t]["upload_bytes"] == ref.iloc[t]["upload_bytes"]
        assert got.metrics.iloc[t]["dropped_clients"] == 0
        assert abs(got.metrics.iloc[t]["test_acc"] - ref.iloc[t]["test_acc"]) <= 0.005
    third = got.metrics.iloc[2]
    assert third["dropped_clients"] == 1 and third["upload_bytes"] == ref.iloc[2]["upload_bytes"] // 2
    assert pd_notna(third["test_acc"])


def pd_notna(x) -> bool:
    return x == x and x is not None
