"""Secure aggregation on Flower: fl_lib's protocol as message rounds gives the in-process secure sum."""
import pytest
import torch

flwr = pytest.importorskip("flwr", reason="Flower is not installed (pip install 'flwr[simulation]>=1.42')")

from flwr.app import Context, RecordDict  # noqa: E402

from fl_lib.runtime import flower, flower_secagg  # noqa: E402
from fl_lib.simulator.federation import Federation  # noqa: E402
from tests.test_flower import task_identity, tiny  # noqa: E402, F401  (task_identity: a fixture)

# torch on one thread: these tiny rounds gain nothing from a second one, and crawl when two threads share
# busy cores (a 3-round in-process run: 10 s on two threads beside other work, 0.2 s on one)
pytestmark = pytest.mark.usefixtures("one_thread")


class Grid:
    """Flower's message delivery without a transport: each message goes to the ClientApp with its node's Context.
    `silent`: (client, message type) pairs whose node never answers (a SuperNode killed at that step)."""

    def __init__(self, num_clients, silent=()):
        self.contexts = {10 + k: Context(run_id=1, node_id=10 + k, node_config={"partition-id": k},
                                         state=RecordDict(), run_config={}) for k in range(num_clients)}
        self.sent, self.silent, self.seen = 0, set(silent), []

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg in messages:
            self.sent += 1
            msg.metadata.__dict__["_message_id"] = f"m{self.sent}"
            k, kind = msg.metadata.dst_node_id - 10, msg.metadata.message_type
            self.seen.append((k, kind))
            if (k, kind) not in self.silent:
                replies.append(flower.client_app(msg, self.contexts[10 + k]))
        return replies


def _round(strategy, grid, server_round):
    strategy.aggregate_train(server_round, grid.send_and_receive(strategy.configure_train(server_round, None, None,
                                                                                          grid)))


def test_a_killed_client_drops_out_and_the_sum_is_the_survivors(task_identity, recwarn):  # noqa: F811
    """Client 2 shares its keys, then dies before step 3: the survivors' shares of its mask key remove its
    masks, and the new global model equals the in-process secure sum with client 2 dropped."""
    cfg = tiny(num_clients=4, num_rounds=1, secure_aggregation=True)
    fed = Federation(cfg)
    strategy = flower.FLStrategy(fed, {k: 10 + k for k in range(4)}, timeout=10)
    grid = Grid(4, silent={(2, "train.secagg")})
    _round(strategy, grid, 1)
    assert (2, "query.secagg_share") in grid.seen and (2, "query.secagg_unmask") not in grid.seen
    assert strategy.rows[0]["dropped_clients"] == 1

    ref = Federation(cfg)  # in process: client 2 joined the key agreement and sent nothing
    plan = ref.plan_round(1)
    uploads = ref.backend.uploads(1, [j for j in plan.jobs() if j.client != 2], ref.global_state)
    row = ref.finish_round(plan, uploads, late=[2])
    for name, w in ref.global_state.items():
        assert torch.equal(fed.global_state[name], w), name
    assert strategy.rows[0]["upload_bytes"] == row.upload_bytes
    assert any("no answer from client(s) [2]" in str(w.message) for w in recwarn)


def test_too_few_survivors_leave_the_model_alone(task_identity, recwarn):  # noqa: F811
    """3 clients, threshold 2: with two killed before step 3 nothing can be unmasked; the round is lost."""
    cfg = tiny(num_clients=3, num_rounds=1, secure_aggregation=True)
    fed = Federation(cfg)
    before = {n: w.clone() for n, w in fed.global_state.items()}
    strategy = flower.FLStrategy(fed, {k: 10 + k for k in range(3)}, timeout=10)
    _round(strategy, Grid(3, silent={(1, "train.secagg"), (2, "train.secagg")}), 1)
    assert all(torch.equal(before[n], w) for n, w in fed.global_state.items())
    assert any("cannot be unmasked" in str(w.message) for w in recwarn)


def test_a_client_refuses_to_reveal_both_shares_of_one_client(task_identity):  # noqa: F811
    """A server that asks for b_u and s_u^SK of the same client gets an error, not the shares."""
    from flwr.app import ConfigRecord, Message

    from fl_lib.privacy.secagg import SecAggError
    state = RecordDict({flower_secagg.STATE: ConfigRecord({"round": 1, "threshold": 1, "held": [0, 1],
                                                           "held-key-shares": [b"a", b"b"],
                                                           "held-seed-shares": [b"c", b"d"]})})
    context = Context(run_id=1, node_id=10, node_config={"partition-id": 0}, state=state, run_config={})
    ask = Message(RecordDict({flower_secagg.STATE: ConfigRecord({"round": 1, "survivors": [0, 1],
                                                                 "dropped": [1]})}),
                  dst_node_id=10, message_type="query.secagg_unmask")
    with pytest.raises(SecAggError, match="both shares of client"):
        flower_secagg.unmask(ask, context)
