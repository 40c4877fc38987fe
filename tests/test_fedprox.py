"""FedProx (Li et al. 2020): local steps on F_k(w) + mu/2 ||w - w_global||^2, checked against a hand computation.

At mu = 0 nothing of FedProx is in the pipeline and the code path is untouched; with
mu > 0 every engine (sequential, batched, pool) and FedBuff take the same steps.
"""
import pytest
import torch
from torch.func import functional_call

import fl_lib.core.trainer
from fl_lib.core.client import client_batches
from fl_lib.core.errors import ConfigError
from fl_lib.core.fedprox import FedProx, add_proximal_
from fl_lib.core.rng import Stream
from fl_lib.simulator import batched
from fl_lib.simulator.build import all_stage_classes, check, stage_classes
from fl_lib.simulator.federation import Federation
from tests.test_batched import _relative_gap, cfg_for, datasets, in_float64  # noqa: F401 (datasets: a fixture)
from tests.tiny import tiny_config
from tests.tiny import tiny_data as build_tiny_data


def floats(state: dict) -> dict:
    return {n: v.detach().clone() for n, v in state.items() if v.is_floating_point()}


def distance(a: dict, b: dict) -> float:
    """||a - b|| over every float tensor, as one vector."""
    return torch.sqrt(sum(((a[n].double() - b[n].double()) ** 2).sum() for n in b)).item()


def test_add_proximal_on_a_few_tensors():
    """g + mu (w - w^t), also for stacked clients (the global model broadcast) and a parameter with no gradient."""
    w_t = torch.tensor([1.0, -2.0])
    g, w = torch.tensor([0.5, 0.5]), torch.tensor([3.0, 0.0])
    stacked_g, stacked_w = torch.zeros(2, 2), torch.tensor([[1.0, -2.0], [2.0, -1.0]])
    add_proximal_([g, stacked_g, None], [w, stacked_w, w], [w_t, w_t, w_t], 0.25)
    assert g.tolist() == [0.5 + 0.25 * 2.0, 0.5 + 0.25 * 2.0]
    assert stacked_g.tolist() == [[0.0, 0.0], [0.25, 0.25]]  # client 0 sits at w^t: no pull


def test_mu_zero_has_no_fedprox_stage_and_leaves_fedavg_untouched(tiny, tiny_data, monkeypatch):
    """At the default mu = 0 the pipeline holds no FedProx, and training never reaches the proximal code."""
    cfg = tiny()
    assert FedProx not in stage_classes(cfg) and FedProx in all_stage_classes()
    assert FedProx in stage_classes(cfg.replace(prox_mu=0.01))
    expected = Federation(cfg, data=tiny_data).round(1).as_dict()

    def refuse(*args):
        raise AssertionError("the proximal term was computed at mu = 0")

    monkeypatch.setattr(fl_lib.core.trainer, "add_proximal_", refuse)
    fed = Federation(cfg, data=tiny_data)
    assert fed.pipeline.prox_mu == 0.0 and fed.trainer.prox_mu == 0.0
    assert fed.round(1).as_dict() == expected  # byte for byte


def test_two_local_steps_equal_the_hand_computation(tiny, tiny_data):
    """E = 2 full-batch steps: the first from w^t (no pull), the second adds mu (w_1 - w^t) to the gradient.

        w_1 = w^t - lr grad F_k(w^t; b_1)
        w_2 = w_1 - lr (grad F_k(w_1; b_2) + mu (w_1 - w^t))

    The loss the client reports is F_k's alone: the mean of the two batches' data losses.
    """
    mu, k, t = 2.0, 1, 1
    fed = Federation(tiny(prox_mu=mu, batch_size=None, local_epochs=2), data=tiny_data)
    trainer, w_t = fed.trainer, floats(fed.global_state)
    model = trainer.model
    batches = list(client_batches(tiny_data, trainer.clients[k], fed.cfg, trainer.generator(t, k, Stream.BATCHES),
                                  trainer.channels_last))
    assert len(batches) == 2

    def grad_and_loss(w, batch):
        w = {n: v.detach().requires_grad_() for n, v in w.items()}
        x, y = batch
        loss = torch.nn.functional.cross_entropy(functional_call(model, w, (x,)), y)
        return dict(zip(w, torch.autograd.grad(loss, list(w.values())))), loss.detach()

    lr = fed.cfg.lr
    g1, loss1 = grad_and_loss(w_t, batches[0])
    w_1 = {n: w_t[n] - lr * g1[n] for n in w_t}
    g2, loss2 = grad_and_loss(w_1, batches[1])
    w_2 = {n: w_1[n] - lr * (g2[n] + mu * (w_1[n] - w_t[n])) for n in w_t}
    plain = {n: w_1[n] - lr * g2[n] for n in w_t}  # what FedAvg's second step would give

    state, loss = trainer.weights(k, t, fed.global_state)
    for n in w_t:
        torch.testing.assert_close(state[n], w_2[n], rtol=1e-6, atol=1e-7)
    assert distance(plain, w_2) > 100 * distance(state, w_2)  # the pull is far larger than the rounding
    torch.testing.assert_close(loss, (loss1 + loss2) / 2, rtol=1e-6, atol=1e-7)  # equal batches: F_k's mean


def test_a_larger_mu_keeps_the_client_closer_to_the_global_model(tiny, tiny_data):
    """||w_k - w^t|| after five local epochs falls strictly as mu grows (lr mu < 1 keeps each pull a contraction)."""
    gaps = []
    for mu in (0.0, 0.1, 1.0, 10.0):
        fed = Federation(tiny(prox_mu=mu, local_epochs=5), data=tiny_data)
        state, _ = fed.trainer.weights(0, 1, fed.global_state)
        gaps.append(distance(state, floats(fed.global_state)))
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps


def test_fedsgd_with_prox_mu_is_refused_in_one_line(tiny):
    with pytest.raises(ConfigError, match="fedprox cannot be combined with server-sgd: FedSGD takes no local") as e:
        check(tiny(algorithm="fedsgd", prox_mu=0.1))
    assert "\n" not in str(e.value)
    check(tiny(algorithm="fedavg", prox_mu=0.1))  # FedAvg and FedBuff take local steps: accepted
    check(tiny(algorithm="fedbuff", link="mobile", prox_mu=0.1))


def test_batched_clients_take_the_same_fedprox_steps(datasets, monkeypatch):  # noqa: F811
    """Unequal clients, momentum, weight decay, mu = 5: vmapped training equals the Trainer's (float64: 1e-9)."""
    fed = in_float64(Federation(cfg_for("cnn", prox_mu=5.0), data=datasets[1]), monkeypatch)
    assert fed.trainer.prox_mu == 5.0
    chosen = fed.sample_clients(1)
    out = batched.train_clients(fed.trainer, chosen, 1, fed.global_state)
    fed.trainer.prox_mu = 0.0
    without = batched.train_clients(fed.trainer, chosen, 1, fed.global_state)
    fed.trainer.prox_mu = 5.0
    for k in chosen:
        loss = fed.train_client(k, 1)
        state = fed.model.state_dict()
        assert _relative_gap(state, out[k][0], fed.global_state) < 1e-9
        assert _relative_gap(out[k][0], without[k][0], fed.global_state) > 1e-3  # mu changed the steps
        torch.testing.assert_close(out[k][1], loss, rtol=1e-5, atol=1e-6)  # float32 sums


def test_fedbuff_jobs_are_held_near_the_model_they_started_from(tiny_data):
    """One client, K = 1, eta_g = 1: each update is FedProx's local training from the model the job downloaded."""
    cfg = tiny_config(num_clients=1, partition="iid", algorithm="fedbuff", link="lognormal:2,0", momentum=0.9,
                      prox_mu=1.0)
    fed = Federation(cfg, data=tiny_data)
    plain = Federation(cfg.replace(algorithm="fedavg", link="none"), data=tiny_data)
    free = Federation(cfg.replace(algorithm="fedavg", link="none", prox_mu=0.0), data=tiny_data)
    for t in (1, 2):
        start = {n: v.clone() for n, v in fed.global_state.items()}
        plain.global_state, free.global_state = start, start
        trained = floats(plain.local_update(0, t)[0])
        unheld = floats(free.local_update(0, t)[0])
        fed.round(t)
        assert distance(trained, start) < distance(unheld, start)
        for name, w in trained.items():
            torch.testing.assert_close(fed.global_state[name], w, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_pool_workers_take_fedprox_steps(tiny, tiny_data):
    """engine=pool builds each worker's pipeline from the same config: its uploads carry mu too, byte for byte."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: then every client's arithmetic is the same
    try:
        cfg = tiny(num_clients=5, alpha=0.5, momentum=0.9, bits=8, upload="delta", prox_mu=1.0)
        expected = Federation(cfg, data=tiny_data).round(1).as_dict()
        unheld = Federation(cfg.replace(prox_mu=0.0), data=tiny_data).round(1).as_dict()
        fed = Federation(cfg.replace(engine="pool", workers=2), data=build_tiny_data())  # the pool shares its data
        try:
            got = fed.round(1).as_dict()
        finally:
            fed.close()
    finally:
        torch.set_num_threads(before)
    assert got == expected and got != unheld
