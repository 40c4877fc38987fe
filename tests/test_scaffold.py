"""SCAFFOLD (Karimireddy et al. 2020, Algorithm 1, option II): control variates checked against the paper's formulas.

With c = c_k = 0 (the first round) SCAFFOLD's local steps are FedAvg's; after that
every step is corrected by c - c_k, the uploads carry Delta c_k as a second codec
message (twice the bytes), and c, c_k travel in the aggregator's checkpointed state.
"""
import pytest
import torch

import fl_lib.core.trainer
from fl_lib.core import codec
from fl_lib.core.aggregators.base import Received
from fl_lib.core.aggregators.mean import MeanAggregator
from fl_lib.core.client import num_steps
from fl_lib.core.errors import ConfigError
from fl_lib.core.scaffold import PREFIX, Scaffold, add_correction_, effective_steps
from fl_lib.core.stages import Job
from fl_lib.runtime import checkpoint, results
from fl_lib.simulator import batched, build
from fl_lib.simulator.federation import Federation
from tests.tiny import tiny_data as build_tiny_data


def floats(state: dict) -> dict:
    return {n: v.detach().clone() for n, v in state.items() if v.is_floating_point()}


# -- the control variates on a hand-computed case ------------------------------------------------
def quadratic_round(scaffold, x, clients, lr, steps):
    """Each client k of `clients` {k: (a_k, b_k)} takes `steps` steps on f_k(w) = a_k/2 (w - b_k)^2 from x,
    corrected as the trainer corrects them; returns their uploads as the server receives them."""
    received = []
    for k, (a, b) in clients.items():
        w = torch.nn.Parameter(x["w"].clone())
        correction = scaffold.correction(k, ["w"])
        for _ in range(steps):
            loss = a / 2 * (w - b) ** 2
            w.grad = None
            loss.sum().backward()
            if correction:
                add_correction_([w.grad], correction)
            with torch.no_grad():
                w -= lr * w.grad
        values = scaffold.client(Job(k, 1, 32), {"w": w.detach().clone()}, x)
        received.append(Received(k, values, 1))
    return received


def test_two_rounds_of_two_clients_equal_the_papers_formulas():
    """N = 3 clients, S = {0, 1}, K = 2 steps of lr 0.1 on f_k = a_k/2 (w - b_k)^2, equal weights; by hand:

        round 1 (c = c_k = 0): y_k = x - lr g_k(x) - lr g_k(y_k'),  c_k+ = (x - y_k) / (K lr),  Delta c_k = c_k+
                               x+ = x + mean_k (y_k - x),  c+ = (|S| / N) mean_k Delta c_k
        round 2: every step adds c - c_k; c_k+ = c_k - c + (x - y_k) / (K lr); Delta c_k = c_k+ - c_k
    """
    lr, K, N = 0.1, 2, 3
    clients = {0: (1.0, 2.0), 1: (3.0, -1.0)}
    scaffold = Scaffold(MeanAggregator(), lr, [K] * N, N)
    x = {"w": torch.tensor([0.5])}

    def local(x0, a, b, corr):  # K corrected steps, written out
        y = x0
        for _ in range(K):
            y = y - lr * (a * (y - b) + corr)
        return y

    c = 0.0
    c_k = {0: 0.0, 1: 0.0}
    for t in (1, 2):
        received = quadratic_round(scaffold, x, clients, lr, K)
        x0 = float(x["w"])
        y = {k: local(x0, a, b, c - c_k[k]) for k, (a, b) in clients.items()}
        plus = {k: c_k[k] - c + (x0 - y[k]) / (K * lr) for k in clients}
        delta_c = {k: plus[k] - c_k[k] for k in clients}
        for r in received:
            assert r.values["w"].item() == pytest.approx(y[r.client], rel=1e-6)
            assert r.values[PREFIX + "w"].item() == pytest.approx(delta_c[r.client], rel=1e-6, abs=1e-6)
            assert scaffold.clients[r.client]["w"].item() == pytest.approx(plus[r.client], rel=1e-6, abs=1e-6)
        x = scaffold.aggregate(t, x, received, [0, 1]).state
        c = c + len(clients) / N * sum(delta_c.values()) / len(clients)
        c_k = plus
        assert x["w"].item() == pytest.approx(sum(y.values()) / 2, rel=1e-6)  # eta_g = 1, equal weights
        assert scaffold.c["w"].item() == pytest.approx(c, rel=1e-6)
        assert PREFIX + "w" not in x  # Delta c never enters the model
    assert c != 0 and c_k[0] != c_k[1]  # the second round really was corrected


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_effective_steps_turn_a_momentum_clients_move_back_into_its_constant_gradient(momentum):
    """torch.optim.SGD with momentum beta, K = 7 steps on a constant gradient g: (x - y) / (K_eff lr) = g."""
    g, lr, K = torch.tensor([0.3, -2.0]), 0.05, 7
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([w], lr=lr, momentum=momentum)
    for _ in range(K):
        w.grad = g.clone()
        opt.step()
    torch.testing.assert_close(-w.detach() / (effective_steps(K, momentum) * lr), g)
    assert (effective_steps(K, momentum) == K) == (momentum == 0.0)


def test_after_one_round_each_c_k_is_the_clients_mean_step_and_c_their_sum_over_N(tiny, tiny_data):
    """In a Federation: c_k = (x - y_k) / (K_k lr), y_k the client's FedAvg weights, and c = sum_k c_k / N."""
    cfg = tiny(scaffold=True, num_clients=5, client_fraction=0.6)
    fed = Federation(cfg, data=tiny_data)
    plain = Federation(cfg.replace(scaffold=False), data=tiny_data)
    x = floats(fed.global_state)
    fed.round(1)
    scaffold, sampled = fed.pipeline.control, plain.sample_clients(1)
    assert sorted(scaffold.clients) == sampled and len(sampled) == 3
    total = {n: torch.zeros_like(v) for n, v in x.items()}
    for k in sampled:
        y = floats(plain.trainer.weights(k, 1, plain.global_state)[0])
        steps = num_steps(plain.sizes[k], cfg.batch_size, cfg.local_epochs)
        for n in x:
            expected = (x[n] - y[n]) / (steps * cfg.lr)
            torch.testing.assert_close(scaffold.clients[k][n], expected, rtol=1e-5, atol=1e-6)
            total[n] += expected
    for n in x:
        torch.testing.assert_close(scaffold.c[n], total[n] / cfg.num_clients, rtol=1e-5, atol=1e-6)


# -- FedAvg at zero correction, and the traffic -----------------------------------------------------
def test_first_round_is_fedavgs_byte_for_byte_and_the_correction_starts_in_round_two(tiny, tiny_data, monkeypatch):
    plain = Federation(tiny(), data=tiny_data)
    expected = plain.round(1).as_dict()
    calls = []
    real = fl_lib.core.trainer.add_correction_
    monkeypatch.setattr(fl_lib.core.trainer, "add_correction_", lambda *a: calls.append(1) or real(*a))
    fed = Federation(tiny(scaffold=True), data=tiny_data)
    got = fed.round(1).as_dict()
    assert not calls  # c = c_k = 0: nothing is added to any gradient
    assert {key for key in got if got[key] != expected[key]} == {"upload_bytes", "download_bytes"}  # twice
    assert all(torch.equal(fed.global_state[n], plain.global_state[n]) for n in plain.global_state)
    fed.round(2)
    plain.round(2)
    assert calls and not all(torch.equal(fed.global_state[n], plain.global_state[n]) for n in plain.global_state)


@pytest.mark.parametrize("bits", [32, 8])
def test_uploads_and_downloads_are_twice_fedavgs(tiny, tiny_data, bits):
    """Delta c_k goes up at the upload's width as a second message of the same tensors, c down in float32."""
    fedavg = Federation(tiny(bits=bits), data=tiny_data).round(1)
    fed = Federation(tiny(bits=bits, scaffold=True), data=tiny_data)
    row = fed.round(1)
    assert row.upload_bytes == 2 * fedavg.upload_bytes
    assert row.download_bytes == 2 * fedavg.download_bytes
    one = len(codec.encode(fed.global_state, bits=bits))  # the 2NN holds float tensors only
    assert row.upload_bytes == 2 * one * row.sampled_clients


def test_the_server_decodes_both_messages_from_the_bytes_alone(tiny, tiny_data):
    """What a pool worker sends back is bytes only: `receive` splits them into the model and Delta c_k."""
    fed = Federation(tiny(bits=8, upload="delta", scaffold=True), data=tiny_data)
    up = fed.client_side.upload(Job(0, 1, 8), fed.global_state)
    decoded = fed.pipeline.transport.receive(up, fed.client_side.reference(fed.global_state), fed.device)
    assert set(decoded) == set(up.received) and any(n.startswith(PREFIX) for n in decoded)
    assert all(torch.equal(decoded[n], up.received[n]) for n in decoded)
    first = codec.message_length(up.blob)
    assert 0 < first < len(up.blob) and codec.decode(up.blob[first:]).keys() == floats(fed.global_state).keys()


# -- checkpoints, engines -------------------------------------------------------------------------
def test_a_run_extended_from_checkpoints_equals_one_in_one_go(tiny, tiny_data, tmp_path):
    cfg = dict(scaffold=True, checkpoint_every=1, num_clients=5, client_fraction=0.6)
    whole = results.run(tiny(num_rounds=5, **cfg), tmp_path / "whole", progress=False, data=tiny_data)
    results.run(tiny(num_rounds=3, **cfg), tmp_path / "grown", progress=False, data=tiny_data)
    stored = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "grown" / "checkpoints")[-1])
    assert set(stored["engine"]["aggregator"]) == {"c", "clients"}  # c and the c_k travel in the checkpoint
    assert len(stored["engine"]["aggregator"]["clients"]) >= 3
    grown = results.run(tiny(num_rounds=5, **cfg), tmp_path / "grown", progress=False, data=tiny_data)
    assert (tmp_path / "grown" / "metrics.csv").read_bytes() == (tmp_path / "whole" / "metrics.csv").read_bytes()
    assert grown.summary["final_test_acc"] == whole.summary["final_test_acc"]


def test_batched_clients_take_the_same_corrected_steps(tiny, tiny_data):
    """Three rounds (two of them corrected), unequal clients, momentum: batched equals sequential to float rounding."""
    cfg = tiny(scaffold=True, momentum=0.9, num_rounds=3)
    feds = [Federation(cfg.replace(engine=engine), data=tiny_data) for engine in ("sequential", "batched")]
    for fed in feds:
        for t in (1, 2, 3):
            fed.round(t)
    seq, bat = feds
    assert bat.backend.name == "batched"
    for n, v in seq.global_state.items():
        torch.testing.assert_close(bat.global_state[n], v, rtol=1e-4, atol=1e-5)
    for n, v in seq.pipeline.control.c.items():
        torch.testing.assert_close(bat.pipeline.control.c[n], v, rtol=1e-3, atol=1e-5)
    assert sorted(seq.pipeline.control.clients) == sorted(bat.pipeline.control.clients)


def test_batched_correction_reaches_the_steps(tiny, tiny_data):
    """train_clients with c set: the stacked corrections change the result; with c = c_k = 0 they are absent."""
    fed = Federation(tiny(scaffold=True), data=tiny_data)
    chosen = fed.sample_clients(1)
    plain = batched.train_clients(fed.trainer, chosen, 1, fed.global_state)
    fed.pipeline.control.c = {n: torch.full_like(v, 0.5) for n, v in floats(fed.global_state).items()}
    moved = batched.train_clients(fed.trainer, chosen, 1, fed.global_state)
    for k in chosen:
        state, _ = fed.trainer.weights(k, 1, fed.global_state)
        for n in floats(state):
            torch.testing.assert_close(moved[k][0][n], state[n], rtol=1e-4, atol=1e-5)
        assert any(not torch.allclose(moved[k][0][n], plain[k][0][n]) for n in floats(state))


@pytest.mark.slow
def test_pool_workers_get_and_return_the_control_variates(tiny, tiny_data):
    """engine=pool sends c and the c_k with the jobs and takes back the c_k+: byte for byte the sequential run."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: then every client's arithmetic is the same
    try:
        cfg = tiny(num_clients=5, alpha=0.5, momentum=0.9, bits=8, upload="delta", scaffold=True)
        seq = Federation(cfg, data=tiny_data)
        expected = [seq.round(t).as_dict() for t in (1, 2)]
        fed = Federation(cfg.replace(engine="pool", workers=2), data=build_tiny_data())  # the pool shares its data
        try:
            got = [fed.round(t).as_dict() for t in (1, 2)]
        finally:
            fed.close()
    finally:
        torch.set_num_threads(before)
    assert got == expected
    for k, own in seq.pipeline.control.clients.items():
        assert all(torch.equal(fed.pipeline.control.clients[k][n], v) for n, v in own.items())


# -- refusals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, message", [
    (dict(algorithm="fedsgd"), "scaffold cannot be combined with server-sgd: FedSGD takes no local steps"),
    (dict(algorithm="fedbuff", link="mobile"), "scaffold cannot be combined with buffer"),
    (dict(dp_clip=1.0), "scaffold cannot be combined with dp-clip"),
    (dict(secure_aggregation=True, bits=8), "scaffold cannot be combined with secure-sum"),
    (dict(aggregator="median"), "scaffold=True with aggregator='median': c is the plain mean"),
    (dict(link="mobile"), "scaffold=True with link='mobile': the clock sizes FedAvg's one-message uploads"),
    (dict(epoch_schedule="decay"), "cannot be combined with scaffold"),  # K_k must be the same every round
], ids=["fedsgd", "fedbuff", "dp", "secagg", "median", "link", "epoch-schedule"])
def test_refused_in_one_line(tiny, kw, message):
    with pytest.raises(ConfigError) as err:
        build.check(tiny(scaffold=True, **kw))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_where_it_runs(tiny):
    for kw in (dict(), dict(engine="pool"), dict(engine="batched"), dict(prox_mu=0.01), dict(bits=4, upload="delta"),
               dict(server_opt="avgm", server_momentum=0.0, server_lr=0.5)):  # the last: eta_g = 0.5
        build.check(tiny(scaffold=True, **kw))
    assert Scaffold not in build.stage_classes(tiny()) and Scaffold in build.all_stage_classes()


def test_flower_refuses_it_in_one_line(tiny):
    pytest.importorskip("flwr", reason="Flower is not installed")
    from fl_lib.runtime.flower import check_flower_config

    with pytest.raises(ConfigError, match="scaffold=True keeps every client's control variate") as err:
        check_flower_config(tiny(scaffold=True))
    assert "\n" not in str(err.value)
