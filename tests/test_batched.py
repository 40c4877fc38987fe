"""Batched clients (vmap) against the sequential engine: same batches, same result up to float rounding.

Only models without dropout can match exactly: SqueezeNet's dropout masks are
drawn differently under vmap, so it is checked for running, not for equality.
"""
import pytest
import torch

from fl_lib.simulator import batched
from fl_lib.core.config import Config
from fl_lib.core.data import synthetic
from fl_lib.simulator.federation import Federation
from tests.tiny import tiny_config


def cfg_for(model, **kw) -> Config:
    """The shared tiny federation with `model` on the synthetic set: five unequal clients, two epochs, momentum."""
    # Dirichlet with a small min_size gives clients of very unequal sizes; the shared B = 16 divides none evenly.
    return tiny_config(**{**dict(dataset="synthetic", model=model, num_clients=5, alpha=0.1, min_size=3, local_epochs=2,
                                 lr=0.01, momentum=0.9, weight_decay=5e-4, num_rounds=2, augment=True), **kw})


@pytest.fixture(scope="module")
def datasets():
    return {3: synthetic(num_train=160, num_test=40, channels=3, size=32, seed=0),
            1: synthetic(num_train=160, num_test=40, channels=1, size=16, seed=0, name="synthetic-mnist")}


def _relative_gap(a: dict, b: dict, start: dict) -> float:
    """Largest |a - b| over all tensors, relative to the largest update |a - start| of that tensor."""
    return max(((a[n] - b[n]).abs().max() / (a[n] - start[n]).abs().max().clamp_min(1e-12)).item() for n in a)


def weights_in_float64(fed: Federation) -> Federation:
    """The federation's model, global weights and optimizer in float64 (its inputs as they are)."""
    fed.model.double()
    fed.global_state = {n: v.double() for n, v in fed.global_state.items()}
    fed.opt = torch.optim.SGD(fed.model.parameters(), lr=fed.cfg.lr, momentum=fed.cfg.momentum,
                              weight_decay=fed.cfg.weight_decay)
    return fed


def in_float64(fed: Federation, monkeypatch) -> Federation:
    """The same federation computing in float64, so that rounding cannot hide a wrong step."""
    weights_in_float64(fed)
    import fl_lib.core.client

    inputs = fl_lib.core.client.batch_inputs  # both trainers draw their batches through it
    monkeypatch.setattr(fl_lib.core.client, "batch_inputs",
                        lambda *a, **k: (lambda x, y: (x.double(), y))(*inputs(*a, **k)))
    return fed


@pytest.mark.parametrize("model, channels, augment", [("2nn", 1, False), ("cnn", 1, False), ("cifar_cnn", 3, True)])
def test_batched_clients_equal_sequential_ones(datasets, model, channels, augment, monkeypatch):
    """Unequal clients, short last batches, momentum, weight decay, augmentation: the same steps.

    In float64 the two engines agree to 1e-9 of the update, so they take the same
    steps on the same batches; in float32 they differ by rounding only (vmap's
    grouped convolutions sum in another order), which cancellation in the weight
    gradients magnifies to ~1e-2 of a single step's update.
    """
    for dtype in (torch.float64, torch.float32):
        fed = Federation(cfg_for(model, augment=augment), data=datasets[channels])
        if dtype == torch.float64:
            fed = in_float64(fed, monkeypatch)
        else:
            monkeypatch.undo()
        chosen = fed.sample_clients(1)
        sizes = sorted(fed.sizes[k] for k in chosen)
        assert sizes[0] < sizes[-1] // 2  # unequal: some clients run out of data steps before others
        out = batched.train_clients(fed.trainer, chosen, 1, fed.global_state)
        assert sorted(out) == chosen
        for k in chosen:
            loss = fed.train_client(k, 1)
            state = fed.model.state_dict()
            assert list(out[k][0]) == list(state)  # same names in the same order: the codec's header order
            gap = _relative_gap(state, out[k][0], fed.global_state)
            assert gap < (1e-9 if dtype == torch.float64 else 5e-2), (dtype, k, gap)
            torch.testing.assert_close(out[k][1], loss, rtol=1e-5, atol=1e-6)


def test_batched_round_equals_sequential_round(datasets):
    """Through Federation.round: same uploads, same aggregate, same metrics (float tolerance)."""
    rows, states = {}, {}
    for engine in ("sequential", "batched"):
        fed = Federation(cfg_for("cifar_cnn", engine=engine, local_epochs=1), data=datasets[3])
        start = {n: v.clone() for n, v in fed.global_state.items()}
        rows[engine] = fed.round(1)
        states[engine] = fed.global_state
    assert _relative_gap(states["sequential"], states["batched"], start) < 5e-2
    for key in ("upload_bytes", "download_bytes", "dropped_clients"):
        assert rows["sequential"][key] == rows["batched"][key]
    for key in ("train_loss", "test_acc", "quant_error"):
        assert rows["batched"][key] == pytest.approx(rows["sequential"][key], rel=1e-3, abs=1e-3)


def test_full_batch_clients_of_unequal_size(datasets, monkeypatch):
    """B = full: every client takes E steps on its whole data, padded to the largest client."""
    fed = in_float64(Federation(cfg_for("2nn", batch_size=None, local_epochs=3), data=datasets[1]), monkeypatch)
    chosen = fed.sample_clients(1)
    out = batched.train_clients(fed.trainer, chosen, 1, fed.global_state)
    for k in chosen:
        loss = fed.train_client(k, 1)
        assert _relative_gap(fed.model.state_dict(), out[k][0], fed.global_state) < 1e-9
        torch.testing.assert_close(out[k][1], loss, rtol=1e-5, atol=1e-6)


def test_squeezenet_runs_batched_with_dropout(datasets):
    """Dropout draws differ under vmap, so only shape, finiteness and a sane loss are checked."""
    fed = Federation(cfg_for("squeezenet1_0", num_clients=2, local_epochs=1, batch_size=32), data=datasets[3])
    out = batched.train_clients(fed.trainer, [0, 1], 1, fed.global_state)
    for k in (0, 1):
        state, loss = out[k]
        assert all(state[n].shape == v.shape and state[n].isfinite().all() for n, v in fed.global_state.items())
        assert 0 < loss.item() < 10


@pytest.mark.parametrize("engine, device, algorithm, expected", [
    ("sequential", "cpu", "fedavg", False), ("batched", "cpu", "fedavg", True), ("auto", "cpu", "fedavg", False),
    ("auto", "cuda", "fedavg", True), ("batched", "cuda", "fedsgd", False)])
def test_engine_choice(engine, device, algorithm, expected):
    from types import SimpleNamespace

    from fl_lib.simulator.backends import Batched, build_backend
    from fl_lib.simulator.build import build_pipeline

    cfg = Config(engine=engine, algorithm=algorithm, num_clients=4)
    fed = SimpleNamespace(cfg=cfg, device=torch.device(device), client_side=None, data=SimpleNamespace(is_text=False),
                          pipeline=build_pipeline(cfg, [10] * 4, 100, torch.device(device)))
    assert isinstance(build_backend(fed), Batched) is expected
