"""Server optimizers (core/aggregators/server_opt.py): FedAvgM, FedAdam and FedYogi against Flower's own
strategies, FedAvg as FedAvgM's limit, and the moments carried through a checkpoint."""
import pytest
import torch

from fl_lib.core.aggregators.base import Received
from fl_lib.core.aggregators.mean import MeanAggregator
from fl_lib.core.aggregators.server_opt import ServerOptimizer
from fl_lib.core.errors import ConfigError
from fl_lib.runtime import checkpoint, results
from fl_lib.simulator import build
from fl_lib.simulator.federation import Federation

SIZES = [1, 1, 2]  # n_k / n = 1/4, 1/4, 1/2: powers of two, so Flower's weighted mean and ours round alike
SETTINGS = {"avgm": dict(lr=0.7, beta1=0.9), "avgm-fedavg": dict(lr=1.0, beta1=0.0),
            "adam": dict(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3),
            "yogi": dict(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)}


def client_models(num_rounds: int = 3):
    """A starting model and, for each round, the three clients' fixed models (drifting, so momentum matters)."""
    gen = torch.Generator().manual_seed(0)
    start = {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(3, generator=gen)}
    rounds = [[{n: v + 0.2 * t + 0.3 * torch.randn(v.shape, generator=gen) for n, v in start.items()} for _ in SIZES]
              for t in range(1, num_rounds + 1)]
    return start, rounds


def ours(kind: str, start, rounds):
    opt = ServerOptimizer(MeanAggregator(), kind.split("-")[0], **SETTINGS[kind])
    state, models = start, []
    for t, clients in enumerate(rounds, 1):
        state = opt.aggregate(t, state, [Received(k, v, n) for k, (v, n) in enumerate(zip(clients, SIZES))],
                              list(range(len(SIZES)))).state
        models.append(state)
    return models


# -- Flower as the oracle ---------------------------------------------------------------
@pytest.fixture
def task_identity():
    """What Flower's runtime sets in a ServerApp process before messages are made (as in test_flower.py)."""
    pytest.importorskip("flwr", reason="Flower is not installed (pip install 'flwr[simulation]>=1.42')")
    from flwr.supercore.task_identity import TaskIdentity
    saved = (TaskIdentity._run_id, getattr(TaskIdentity, "_node_id", None), getattr(TaskIdentity, "_task_id", None))
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class Nodes:
    """The one thing Flower's FedAvg.configure_train asks of a Grid: the connected nodes (client k is node 10 + k)."""

    def get_node_ids(self):
        return [10 + k for k in range(len(SIZES))]


def flower_strategy(kind: str):
    from flwr.serverapp.strategy import FedAdam, FedAvgM, FedYogi
    s = SETTINGS[kind]
    common = dict(min_train_nodes=len(SIZES), min_available_nodes=len(SIZES))
    if kind.startswith("avgm"):
        return FedAvgM(server_learning_rate=s["lr"], server_momentum=s["beta1"], **common)
    cls = FedAdam if kind == "adam" else FedYogi
    return cls(eta=s["lr"], beta_1=s["beta1"], beta_2=s["beta2"], tau=s["tau"], **common)


def flower(kind: str, start, rounds):
    """Flower's strategy over the rounds: configure_train with the model, aggregate_train of the clients' replies."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    def record(state):
        return ArrayRecord({n: Array(v.numpy()) for n, v in state.items()})

    strategy, arrays, models = flower_strategy(kind), record(start), []
    for t, clients in enumerate(rounds, 1):
        sent = {m.metadata.dst_node_id: m for m in strategy.configure_train(t, arrays, ConfigRecord(), Nodes())}
        replies = [Message(RecordDict({"arrays": record(v), "metrics": MetricRecord({"num-examples": n})}),
                           reply_to=sent[10 + k]) for k, (v, n) in enumerate(zip(clients, SIZES))]
        arrays, _ = strategy.aggregate_train(t, replies)
        models.append({n: torch.from_numpy(a.numpy()) for n, a in arrays.items()})
    return models


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_three_rounds_equal_flowers_strategy(kind, task_identity):
    start, rounds = client_models()
    mine, theirs = ours(kind, start, rounds), flower(kind, start, rounds)
    for t, (a, b) in enumerate(zip(mine, theirs), 1):
        for name in start:
            if kind == "adam":  # Flower's bias-corrected eta is a float64 scalar, so its arrays become float64
                torch.testing.assert_close(a[name].double(), b[name], rtol=1e-6, atol=1e-7,
                                           msg=lambda m: f"round {t}, {name}: {m}")
            else:  # float32 throughout, operations in Flower's order: the same bits
                assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), f"round {t}, {name}"


# -- on a few tensors ---------------------------------------------------------------------
def test_integer_buffers_come_from_the_aggregate_and_moments_stay_on_the_cpu():
    start = {"w": torch.zeros(3), "n": torch.tensor(7)}
    ups = [Received(0, {"w": torch.ones(3), "n": torch.tensor(9)}, 1),
           Received(1, {"w": 3 * torch.ones(3), "n": torch.tensor(4)}, 1)]
    opt = ServerOptimizer(MeanAggregator(), "adam", lr=0.1)
    assert opt.state_dict() == {}  # before a step: nothing to checkpoint
    out = opt.aggregate(1, start, ups, [0, 1]).state
    assert out["n"].item() == 9 and out["n"].dtype == torch.int64  # the first upload's, as the mean does
    saved = opt.state_dict()
    assert set(saved) == {"m", "v"} and set(saved["m"]) == {"w"} and saved["v"]["w"].device.type == "cpu"


@pytest.mark.parametrize("kind", ["avgm", "adam", "yogi"])
def test_moments_through_state_dict_continue_as_if_never_stopped(kind):
    start, rounds = client_models(4)
    whole = ours(kind, start, rounds)
    first = ServerOptimizer(MeanAggregator(), kind, **SETTINGS[kind])
    state = start
    for t, clients in enumerate(rounds[:2], 1):
        ups = [Received(k, v, n) for k, (v, n) in enumerate(zip(clients, SIZES))]
        state = first.aggregate(t, state, ups, []).state
    resumed = ServerOptimizer(MeanAggregator(), kind, **SETTINGS[kind])
    resumed.load_state_dict(first.state_dict())
    fresh = ServerOptimizer(MeanAggregator(), kind, **SETTINGS[kind])
    for t, clients in enumerate(rounds[2:], 3):
        ups = [Received(k, v, n) for k, (v, n) in enumerate(zip(clients, SIZES))]
        state, forgot = resumed.aggregate(t, state, ups, []).state, fresh.aggregate(t, state, ups, []).state
    assert torch.equal(state["w"], whole[-1]["w"])
    assert not torch.equal(forgot["w"], whole[-1]["w"])  # without its moments the step is another one


# -- in a Federation --------------------------------------------------------------------------
def run_rounds(cfg, data, rounds=3):
    fed = Federation(cfg, data=data)
    try:
        for t in range(1, rounds + 1):
            fed.round(t)
        return fed.pipeline.aggregator, fed.global_state
    finally:
        fed.close()


def test_fedavgm_without_momentum_at_server_lr_1_is_fedavg_bit_for_bit(tiny, tiny_data):
    _, fedavg = run_rounds(tiny(), tiny_data)
    aggregator, avgm = run_rounds(tiny(server_opt="avgm", server_momentum=0.0), tiny_data)
    assert isinstance(aggregator, ServerOptimizer) and aggregator.is_fedavg
    assert all(torch.equal(avgm[name], fedavg[name]) for name in fedavg)
    _, momentum = run_rounds(tiny(server_opt="avgm"), tiny_data)  # beta_1 = 0.9: the wrapper really steps
    assert not all(torch.equal(momentum[name], fedavg[name]) for name in fedavg)


def test_a_run_extended_from_checkpoints_equals_one_in_one_go(tiny, tiny_data, tmp_path):
    cfg = dict(server_opt="adam", server_lr=0.05, checkpoint_every=1)
    whole = results.run(tiny(num_rounds=5, **cfg), tmp_path / "whole", progress=False, data=tiny_data)
    results.run(tiny(num_rounds=3, **cfg), tmp_path / "grown", progress=False, data=tiny_data)
    stored = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "grown" / "checkpoints")[-1])
    assert set(stored["engine"]["aggregator"]) == {"m", "v"}  # the moments travel in the checkpoint
    grown = results.run(tiny(num_rounds=5, **cfg), tmp_path / "grown", progress=False, data=tiny_data)
    assert (tmp_path / "grown" / "metrics.csv").read_bytes() == (tmp_path / "whole" / "metrics.csv").read_bytes()
    assert grown.summary["final_test_acc"] == whole.summary["final_test_acc"]
    ends = [checkpoint.load(checkpoint.list_checkpoints(tmp_path / f / "checkpoints")[-1])
            for f in ("whole", "grown")]
    assert all(torch.equal(ends[0]["global"][n], ends[1]["global"][n]) for n in ends[0]["global"])


# -- refusals -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, message", [
    (dict(server_opt="avgm", server_beta2=0.9),
     "server_beta2=0.9 applies to server_opt='adam' or 'yogi' only (server_opt='avgm' keeps no second moment): "
     "leave it at 0.99"),
    (dict(server_opt="avgm", server_tau=0.01), "server_tau=0.01 applies to server_opt='adam' or 'yogi' only"),
    (dict(algorithm="fedsgd", server_opt="adam"),
     "server-opt cannot be combined with server-sgd: FedSGD already takes a server step"),
    (dict(algorithm="fedbuff", link="mobile", server_opt="yogi"), "server-opt cannot be combined with buffer"),
    (dict(dp_clip=1.0, server_opt="adam"), "server-opt cannot be combined with dp-mean"),
    (dict(server_momentum=0.5), "server_momentum=0.5 applies to server_opt='avgm', 'adam' or 'yogi' only: "
                                "leave it at 0.9"),
    (dict(server_beta2=0.9), "server_beta2=0.9 applies to server_opt"),
], ids=["avgm-beta2", "avgm-tau", "fedsgd", "fedbuff", "dp", "momentum-without-opt", "beta2-without-opt"])
def test_refused_in_one_line(tiny, kw, message):
    with pytest.raises(ConfigError) as err:
        build.check(tiny(**kw))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_optimizers_run_where_allowed(tiny):
    for kw in (dict(server_opt="adam", server_beta2=0.9, server_tau=0.01),
               dict(server_opt="yogi", aggregator="median"),
               dict(server_opt="avgm", server_momentum=0.5, server_lr=0.5)):
        build.check(tiny(**kw))
