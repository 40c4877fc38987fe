"""fl_lib on Flower without a transport: the real ClientApp and strategy, messages handed over in process, give
the in-process engine's rounds, also when a node never answers, an upload is damaged or a run is resubmitted.

On real processes: test_flower_simulation.py (Flower's Simulation Runtime), test_flower_security.py (a TLS
federation that survives a SuperLink restart), test_flower_local.py (`flower local`, a SuperNode killed under
secure aggregation, Ctrl-C)."""
import sys
from pathlib import Path

import pytest
import torch

flwr = pytest.importorskip("flwr", reason="Flower is not installed (pip install 'flwr[simulation]>=1.42')")

from flwr.app import Context, RecordDict  # noqa: E402

from fl_lib.runtime import flower  # noqa: E402
from fl_lib.runtime import results  # noqa: E402
from fl_lib.core.config import preset  # noqa: E402
from fl_lib.simulator.federation import Federation  # noqa: E402

# torch on one thread: these tiny rounds gain nothing from a second one, and crawl when two threads share
# busy cores (a 3-round in-process run: 10 s on two threads beside other work, 0.2 s on one)
pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tiny(**kw):
    base = dict(dataset="synthetic-mnist", model="2nn", augment=False, device="cpu", num_rounds=2, bits=8)
    base.update(kw)
    return preset("smoke", **base)


def flower_cmd(command: str, cfg, out, *flags) -> list:
    """`python -m fl_lib flower COMMAND` (deploy, local) running `cfg` into `out`: the smoke preset and a flag for
    every field `cfg` changes in it."""
    smoke = preset("smoke").to_dict()
    fields = [arg for name, value in cfg.to_dict().items() if value != smoke[name]
              for arg in (f"--{name.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value))]
    return [sys.executable, "-m", "fl_lib", "flower", command, "--preset", "smoke", *fields, "--out", str(out),
            "--connect-timeout", "60", *flags]


def same_run(flower_dir, cfg, tmp_path):
    """The Flower run folder against results.run of the same config: the issue's equivalence."""
    got = results.load_run(flower_dir)
    ref = results.run(cfg, tmp_path / "in-process", progress=False)
    assert got.metrics["upload_bytes"].tolist() == ref.metrics["upload_bytes"].tolist()  # same clients, same codec
    assert got.metrics["dropped_clients"].tolist() == ref.metrics["dropped_clients"].tolist()
    assert (got.metrics["test_acc"] - ref.metrics["test_acc"]).abs().max() <= 0.005
    return got


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


def _drive(strategy, rounds, silent=()):
    """Flower's part of a round without a transport: the messages go straight to the ClientApp's function.
    `silent`: clients whose node never answers (a SuperNode killed mid-round: the round's timeout ends the wait)."""
    for server_round in range(1, rounds + 1):
        replies = []
        for msg in strategy.configure_train(server_round, None, None, None):
            k = int(msg.content["job"]["client"])
            msg.metadata.__dict__["_message_id"] = f"m{server_round}-{k}"
            context = Context(run_id=1, node_id=10 + k, node_config={"partition-id": k}, state=RecordDict(),
                              run_config={})
            if k not in silent:
                replies.append(flower.train(msg, context))
        strategy.aggregate_train(server_round, replies)


def test_a_node_that_never_answers_drops_out_and_the_round_goes_on(recwarn, task_identity):
    """Client 1's reply never comes: the round aggregates the others, counts client 1 as dropped, warns, and the
    new model equals the in-process round with client 1 late. (A killed SuperNode on a real federation, under
    secure aggregation: test_flower_local.py.)"""
    cfg = tiny(num_clients=3, num_rounds=1)
    strategy = flower.FLStrategy(Federation(cfg), nodes={0: 10, 1: 11, 2: 12})
    _drive(strategy, 1, silent={1})
    [row] = strategy.rows
    assert row["dropped_clients"] == 1 and row["sampled_clients"] == 3
    assert any("round 1: no answer from client(s) [1] within the timeout" in str(w.message) for w in recwarn)
    ref = Federation(cfg)
    plan = ref.plan_round(1)
    uploads = ref.backend.uploads(1, [j for j in plan.jobs() if j.client != 1], ref.global_state)
    ref_row = ref.finish_round(plan, uploads, late=[1])
    assert row["upload_bytes"] == ref_row.upload_bytes > 0
    for name, w in ref.global_state.items():
        assert torch.equal(strategy.fed.global_state[name], w), name


def test_dp_fedavg_with_poisson_sampling_equals_the_in_process_engine(tmp_path, task_identity):
    """The ClientApp clips (fl_lib's client stages), the strategy adds the seeded noise over the fixed denominator
    and keeps the accountant; Poisson sampling picks a varying cohort. Epsilon and every metric equal the
    in-process run's. (Over TLS on a real SuperLink: test_flower_security.py.)"""
    cfg = tiny(num_rounds=3, client_fraction=0.5, upload="delta", dp_clip=1.0, dp_noise=0.5)
    strategy = flower.FLStrategy(Federation(cfg), nodes={k: 10 + k for k in range(cfg.num_clients)})
    _drive(strategy, cfg.num_rounds)
    ref = results.run(cfg, tmp_path / "in-process", progress=False).metrics
    for column in ("test_acc", "test_loss", "epsilon", "upload_bytes", "sampled_clients", "dropped_clients"):
        assert [r[column] for r in strategy.rows] == ref[column].tolist(), column
    assert ref.epsilon.iloc[-1] > 0 and 0 < ref.sampled_clients.sum() < cfg.num_rounds * cfg.num_clients


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
