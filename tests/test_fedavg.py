"""The engine against oracles: hand-computed means, plain SGD, one full-batch gradient step."""
import pytest
import torch
import torch.nn.functional as F

from fl_lib.core.config import Config
from fl_lib.core.data import get_batch
from fl_lib.simulator.federation import Federation, aggregate
from fl_lib.core.models import build_model
from fl_lib.core.rng import Stream
from tests.tiny import tiny_config, tiny_data


def tiny(**kw) -> Config:
    """The shared tiny federation, IID, with momentum and weight decay, for two rounds: well under a second."""
    return tiny_config(**{**dict(partition="iid", momentum=0.9, weight_decay=1e-4, num_rounds=2), **kw})


@pytest.fixture(scope="module")
def data():
    return tiny_data(num_train=400, num_test=100)


def test_aggregate_is_the_weighted_mean_by_hand():
    g = torch.Generator().manual_seed(0)
    states = [{"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g),
               "steps": torch.tensor(7)} for _ in range(3)]
    weights = [10, 30, 60]
    out = aggregate(states, weights)
    for name in ("w", "b"):
        by_hand = (10 * states[0][name] + 30 * states[1][name] + 60 * states[2][name]) / 100
        torch.testing.assert_close(out[name], by_hand, rtol=1e-6, atol=1e-6)
    assert out["steps"].item() == 7  # integer buffers are copied, not averaged


def test_aggregate_is_not_the_plain_mean():
    states = [{"w": torch.zeros(2)}, {"w": torch.ones(2)}]
    assert aggregate(states, [1, 3])["w"].tolist() == [0.75, 0.75]


@pytest.mark.parametrize("bad", [[], [1.0, 2.0]])
def test_aggregate_rejects_mismatched_weights(bad):
    with pytest.raises(ValueError, match="weight"):
        aggregate([{"w": torch.zeros(1)}], bad)


def test_aggregate_rejects_zero_total():
    with pytest.raises(ValueError, match="positive"):
        aggregate([{"w": torch.zeros(1)}], [0])


def test_fedavg_one_client_equals_plain_sgd(data):
    cfg = tiny(num_clients=1, batch_size=16, local_epochs=1)
    fed = Federation(cfg, data=data)
    torch.manual_seed(cfg.seed)
    model = build_model("2nn", 10, 1, 28)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    g = fed.generator(1, 0, Stream.BATCHES)  # the same batch order the engine draws
    idx = fed.clients[0]
    order = idx[torch.randperm(len(idx), generator=g)]
    for start in range(0, len(idx), cfg.batch_size):
        x, y = get_batch(data, order[start:start + cfg.batch_size], train=True, augment=False)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    fed.round(1)
    for name, p in model.state_dict().items():
        torch.testing.assert_close(fed.global_state[name], p, rtol=0, atol=1e-6)


def test_fedsgd_round_is_one_full_batch_step_on_the_union(data):
    cfg = tiny(algorithm="fedsgd", num_clients=5, client_fraction=0.6, lr=0.3, partition="dirichlet", alpha=0.5)
    fed = Federation(cfg, data=data)
    chosen = fed.sample_clients(1)
    assert len(chosen) == 3
    union = torch.cat([fed.clients[k] for k in chosen])
    torch.manual_seed(cfg.seed)
    model = build_model("2nn", 10, 1, 28)
    x, y = get_batch(data, union, train=True, augment=False)
    F.cross_entropy(model(x), y).backward()  # mean over the union = sum_k n_k/n grad F_k
    fed.round(1)
    for name, p in model.named_parameters():
        expected = p.detach() - cfg.lr * (p.grad + cfg.weight_decay * p.detach())
        torch.testing.assert_close(fed.global_state[name], expected, rtol=1e-5, atol=1e-6)


def test_clients_per_round_follows_c_times_k():
    assert tiny(num_clients=100, client_fraction=0.1).clients_per_round == 10
    assert tiny(num_clients=10, client_fraction=0.01).clients_per_round == 1  # max(round(C K), 1)


def test_sampling_and_batches_do_not_depend_on_the_codec(data):
    """Runs that differ only in bits or upload share clients and batch order."""
    a = Federation(tiny(client_fraction=0.5), data=data)
    b = Federation(tiny(client_fraction=0.5, bits=4, upload="delta"), data=data)
    for t in (1, 2, 3):
        assert a.sample_clients(t) == b.sample_clients(t)
    assert torch.equal(torch.randperm(50, generator=a.generator(2, 1, Stream.BATCHES)),
                       torch.randperm(50, generator=b.generator(2, 1, Stream.BATCHES)))
    for name in a.global_state:
        assert torch.equal(a.global_state[name], b.global_state[name])  # shared initialization


def test_same_config_gives_identical_rows(data):
    rows = []
    for _ in range(2):
        fed = Federation(tiny(), data=data)
        rows.append([fed.round(t).as_dict() for t in (1, 2)])
    assert rows[0] == rows[1]


def test_round_records_every_metric(data):
    fed = Federation(tiny(eval_every=2, num_rounds=3), data=data)
    r1, r2 = fed.round(1), fed.round(2)
    assert r1["test_acc"] is None and r2["test_acc"] is not None  # eval_every
    assert fed.round(3)["test_acc"] is not None  # the last round is always evaluated
    assert r1["upload_bytes"] > 4 * 199_210 * 4 - 1  # 4 clients x float32 model (+ header)
    assert r1["download_bytes"] == 4 * fed.model_bytes
    assert r1["dropped_clients"] == 0 and r1["quant_error"] == 0.0


def test_fedavg_learns_synthetic_data(data):
    fed = Federation(tiny(num_rounds=5), data=data)
    accs = [fed.round(t)["test_acc"] for t in range(1, 6)]
    assert accs[-1] > 0.5, accs  # 10 classes: chance is 0.1


def test_a_diverging_client_is_left_out(data):
    fed = Federation(tiny(), data=data)
    original = fed.trainer.train

    def train(k, t, global_state, *extra):
        loss = original(k, t, global_state, *extra)
        if k == 1:
            with torch.no_grad():
                next(fed.model.parameters()).fill_(float("nan"))
        return loss
    fed.trainer.train = train
    with pytest.warns(UserWarning, match="client 1"):
        row = fed.round(1)
    assert row["dropped_clients"] == 1
    assert all(torch.isfinite(v).all() for v in fed.global_state.values())
