"""A SuperNode killed mid-round under secure aggregation, on a real localhost federation: the survivors'
shares of its mask key remove its masks, and the model is the survivors' secure sum."""
import re
import threading
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is not installed (pip install 'flwr[simulation]>=1.42')")

from fl_lib.core.errors import FLError  # noqa: E402
from fl_lib.runtime import checkpoint, flower, flower_local, flower_secagg, results  # noqa: E402
from fl_lib.simulator.federation import Federation  # noqa: E402
from tests.test_flower import tiny  # noqa: E402
from tests.test_flower_local import alive, needs_proc, started  # noqa: E402

DOOMED = 2  # the client whose SuperNode dies between steps 2 and 3
# s the server waits at each step for its answers; the dead node's step 3 waits all of it, once. On long-lived
# ClientApps and short-waits SuperNodes a step takes the work (the survivors' step 3 trains, ~1 s) plus well under
# a second of messaging: 8 s leaves 4x that, so a slow machine cannot turn a survivor into a second dropout.
ROUND_TIMEOUT = 8.0


def _kill_when_held(local, marker: Path, killed: list, done: threading.Event) -> None:
    """Wait for the doomed ClientApp to write its PID at step 3, then SIGKILL its SuperNode and all it started."""
    while not done.is_set():
        text = marker.read_text() if marker.exists() else ""
        if text.isdigit():  # the whole PID is written
            try:
                killed.append((int(text), local.kill_node(DOOMED)))
            except FLError as e:
                killed.append(e)
            return
        done.wait(0.1)


@needs_proc
@pytest.mark.slow
def test_a_supernode_killed_before_its_masked_input_drops_out(tmp_path, one_thread, monkeypatch, capfd):  # noqa: F811
    """SuperLink + 3 SuperNodes, all sampled, threshold 2. SuperNode 2 answers steps 1 and 2, then is SIGKILLed
    (with its ClientApp) as step 3 reaches it. The round ends at the timeout, client 2 counts as dropped, the
    survivors' step 4 unmasks, and the new global model equals the in-process secure sum without client 2."""
    cfg = tiny(num_clients=3, num_rounds=1, secure_aggregation=True)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the federation's processes inherit it
    out, marker = tmp_path / "run", tmp_path / "held-at-step-3"
    local = flower_local.LocalFederation(out / flower_local.LOGS, None, None)
    killed, done = [], threading.Event()
    killer = threading.Thread(target=_kill_when_held, args=(local, marker, killed, done), daemon=True)
    with flower_local._Signals() as local.signals:
        killer.start()
        try:
            local.start(cfg.num_clients, node_env={DOOMED: {flower_secagg.HOLD: str(marker)}})
            with flower_local._environ(FLWR_HOME=str(local.home), PATH=local.env["PATH"]):
                code = flower.deploy(cfg, out, "local", round_timeout=ROUND_TIMEOUT, connect_timeout=30)
        finally:
            done.set()
            killer.join()  # no kill once the federation is stopping
            local.signals.hold()
            local.stop()
    log = capfd.readouterr()
    log = log.out + log.err
    (tmp_path / "deploy.log").write_text(log)  # for a failure's post-mortem, beside the federation's logs
    assert code == 0, log[-3000:]
    assert killed, f"client {DOOMED}'s ClientApp never reached step 3: {log[-3000:]}"
    assert not isinstance(killed[0], FLError), killed[0]
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

    left = {**started(out), **{pid: "killed" for pid in pids}, clientapp: "clientapp"}
    assert not [f"{name} {pid}" for pid, name in left.items() if alive(pid)]
