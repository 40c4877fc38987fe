"""FedBuff's server step (Nguyen et al. 2022): the 1/K mean, the server learning rate, concurrency, checkpoints."""
import math

import pytest
import torch

from fl_lib.runtime import results
from fl_lib.cli import build_parser, config_from_args
from fl_lib.core.config import Config
from tests.tiny import tiny_config, tiny_data
from fl_lib.core.errors import ConfigError
from fl_lib.simulator.federation import Federation
from fl_lib.simulator.fedbuff import buffer_coefficients
from fl_lib.core.links import staleness_weight


@pytest.fixture(scope="module")
def data():
    return tiny_data(240)


def tiny(**kw) -> Config:
    return tiny_config(**{**dict(alpha=0.5, momentum=0.9, weight_decay=5e-4, num_rounds=5, algorithm="fedbuff",
                                 link="lognormal:2,1.5"), **kw})


class Stop(Exception):
    pass


def floats(state):
    return {n: v.clone() for n, v in state.items() if v.is_floating_point()}


def test_coefficients_by_hand():
    """n = (10, 30), tau = (0, 3), s = (1, 1/2): uniform eta (1, 1/2) / 2; samples eta (10, 15) / 40."""
    assert buffer_coefficients([10, 30], [0, 3], "uniform", 1.0) == [0.5, 0.25]
    assert buffer_coefficients([10, 30], [0, 3], "samples", 1.0) == [0.25, 0.375]
    assert buffer_coefficients([10, 30], [0, 3], "uniform", 0.5) == [0.25, 0.125]
    assert buffer_coefficients([10, 30], [0, 3], "samples", 2.0) == [0.5, 0.75]
    with pytest.raises(ValueError, match="buffer_weights='mean'"):
        buffer_coefficients([1], [0], "mean", 1.0)


def test_one_client_k1_and_eta_1_is_a_plain_local_step(data):
    """One client, K = 1, eta_g = 1: each update sets the model that client trains from the one before."""
    cfg = tiny(num_clients=1, partition="iid", link="lognormal:2,0")
    fed = Federation(cfg, data=data)
    assert (fed.fedbuff.concurrency, fed.fedbuff.buffer_size) == (1, 1)
    plain = Federation(cfg.replace(algorithm="fedavg", link="none"), data=data)
    for t in (1, 2, 3):
        plain.global_state = {n: v.clone() for n, v in fed.global_state.items()}
        trained, _ = plain.local_update(0, t)  # the same client and round t's streams, from the same model
        trained = {n: v.clone() for n, v in trained.items()}
        row = fed.round(t)
        assert row["mean_staleness"] == 0.0
        for name, w in trained.items():  # w + 1 * (1/1) * s(0) * (w_1 - w): w_1 up to float rounding
            torch.testing.assert_close(fed.global_state[name], w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("weights", ["uniform", "samples"])
def test_server_lr_scales_the_step_linearly(data, weights):
    """The first update's clients all start from w_0, so w_1(eta) - w_0 = eta (w_1(1) - w_0)."""
    w0 = floats(Federation(tiny(buffer_weights=weights), data=data).global_state)
    steps = {}
    for eta in (1.0, 0.5, 2.0):
        fed = Federation(tiny(buffer_weights=weights, server_lr=eta), data=data)
        fed.round(1)
        steps[eta] = {n: fed.global_state[n] - w0[n] for n in w0}
    for eta in (0.5, 2.0):
        for n in w0:
            torch.testing.assert_close(steps[eta][n], eta * steps[1.0][n], rtol=1e-5, atol=1e-7)
    assert max(float(steps[1.0][n].abs().max()) for n in w0) > 1e-3  # the step is not trivially 0


def check_updates(fed, weights, eta, rounds):
    """Run `rounds` updates; before each, the buffer and model give the update by hand. Returns the staleness."""
    server, real, seen = fed.fedbuff, fed.fedbuff._update, []

    def by_hand(t):
        good = [j for j in server.buffer if j["delta"] is not None]
        taus = [server.version - j["version"] for j in good]
        before = floats(fed.global_state)
        row = real(t)
        total = sum(j["n"] for j in good)
        for name, w in before.items():
            step = torch.zeros_like(w, dtype=torch.float64)
            for job, tau in zip(good, taus):
                c = 1 / len(good) if weights == "uniform" else job["n"] / total
                step += c * staleness_weight(tau) * job["delta"][name].double()
            torch.testing.assert_close(fed.global_state[name].double(), w.double() + eta * step,
                                       rtol=1e-5, atol=1e-6)
        seen.extend(taus)
        return row
    server._update = by_hand
    for t in range(1, rounds + 1):
        fed.round(t)
    return seen


@pytest.mark.parametrize("weights,eta", [("uniform", 1.0), ("uniform", 0.7), ("samples", 1.0), ("samples", 1.5)])
def test_updates_follow_the_equation_by_hand(data, weights, eta):
    fed = Federation(tiny(buffer_size=2, buffer_weights=weights, server_lr=eta), data=data)
    assert len(set(fed.sizes)) > 1  # unequal n_i, so the two weightings differ
    seen = check_updates(fed, weights, eta, 8)
    assert len(seen) == 16 and max(seen) >= 1  # some updates really were stale


def test_samples_with_eta_1_is_the_earlier_rule_bit_for_bit(data):
    """fl_lib's FedBuff before the paper's normalization, written out: w + sum_i delta_i * (n_i s(tau_i) / sum n)."""
    fed = Federation(tiny(buffer_size=2, buffer_weights="samples", server_lr=1.0, bits=8, upload="delta"), data=data)
    server, real, checked = fed.fedbuff, fed.fedbuff._update, []

    def earlier(t):
        good = [j for j in server.buffer if j["delta"] is not None]
        taus = [server.version - j["version"] for j in good]
        total = float(sum(j["n"] for j in good))
        expected = {}
        for name, w in fed.global_state.items():
            acc = w.float().clone()
            for job, tau in zip(good, taus):
                acc.add_(job["delta"][name], alpha=job["n"] * staleness_weight(tau) / total)
            expected[name] = acc.to(w.dtype)
        row = real(t)
        assert all(torch.equal(fed.global_state[n], expected[n]) for n in expected)
        checked.append(max(taus))
        return row
    server._update = earlier
    for t in range(1, 9):
        fed.round(t)
    assert len(checked) == 8 and max(checked) >= 1


def test_uniform_and_samples_differ_on_unequal_sizes_as_the_equations_say(data):
    """Same buffer at update 1: w_u - w_s = sum_i (1/K - n_i / sum n) Delta_i."""
    feds = {w: Federation(tiny(buffer_weights=w), data=data) for w in ("uniform", "samples")}
    captured = {}
    real = feds["uniform"].fedbuff._update

    def capture(t):
        captured["buffer"] = list(feds["uniform"].fedbuff.buffer)
        return real(t)
    feds["uniform"].fedbuff._update = capture
    for fed in feds.values():
        fed.round(1)
    buffer = captured["buffer"]
    sizes = [j["n"] for j in buffer]
    assert len(buffer) == 4 and len(set(sizes)) > 1
    gap = 0.0
    for name, d in feds["uniform"].global_state.items():
        if not d.is_floating_point():
            continue
        expected = sum((1 / len(buffer) - j["n"] / sum(sizes)) * j["delta"][name].double() for j in buffer)
        got = d.double() - feds["samples"].global_state[name].double()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
        gap = max(gap, float(got.abs().max()))
    assert gap > 1e-4  # the two rules really moved the model differently


def test_a_diverged_upload_leaves_the_mean_over_the_finite_ones(data):
    """K counts the finite uploads: with one of three lost the step is their mean (1/2 each), not 1/3."""
    fed = Federation(tiny(buffer_size=3), data=data)
    server, real = fed.fedbuff, fed.fedbuff._update
    kept = {}

    def drop_first(t):
        server.buffer[0] = {**server.buffer[0], "delta": None}
        kept["jobs"], kept["before"] = server.buffer[1:], floats(fed.global_state)
        return real(t)
    server._update = drop_first
    row = fed.round(1)
    assert row["dropped_clients"] == 1
    for name, w in kept["before"].items():
        expected = w + sum(j["delta"][name] for j in kept["jobs"]) / 2  # tau = 0 at update 1
        torch.testing.assert_close(fed.global_state[name], expected, rtol=1e-5, atol=1e-6)


def test_concurrency_above_k_keeps_more_clients_in_flight(data):
    """concurrency 6, K = 2 of 8 clients: after every restart 6 jobs are in flight, and 2 uploads make an update."""
    fed = Federation(tiny(num_clients=8, client_fraction=0.25, concurrency=6, buffer_size=2), data=data)
    server = fed.fedbuff
    assert (server.concurrency, server.buffer_size) == (6, 2)
    in_flight, real = [], server._restart

    def count(clients):
        real(clients)
        in_flight.append(len(server.jobs))
    server._restart = count
    rows = [fed.round(t) for t in range(1, 7)]
    assert in_flight[0] == 6 and set(in_flight) == {6}  # filled to the concurrency at the start and after
    assert len(server.jobs) + len(server.idle) == 6  # the last update's arrivals restart on the next step
    assert all(r["upload_bytes"] == 2 * fed.upload_size(32) for r in rows)
    assert max(r["mean_staleness"] for r in rows) >= 1  # with more in flight than K, updates arrive stale
    default = Federation(tiny(num_clients=8, client_fraction=0.25, buffer_size=2), data=data)
    default.round(1)
    assert default.fedbuff.concurrency == 2 and len(default.fedbuff.jobs) + len(default.fedbuff.idle) == 2


def test_the_first_jobs_are_fedavgs_sample_drawn_to_the_concurrency(data):
    fed = Federation(tiny(num_clients=8, client_fraction=0.25), data=data)
    assert fed.fedbuff._sample(1) == fed.sample_clients(1)  # concurrency m: FedAvg's very sample
    wide = Federation(tiny(num_clients=8, client_fraction=0.25, concurrency=5), data=data)
    first = wide.fedbuff._sample(1)
    assert len(first) == 5 == len(set(first)) and first == sorted(first) and first == wide.fedbuff._sample(1)


@pytest.mark.parametrize("fields,needle", [
    (dict(buffer_size=2), "buffer_size=2 applies to algorithm='fedbuff' only"),
    (dict(concurrency=3), "concurrency=3 applies to algorithm='fedbuff' only"),
    (dict(server_lr=0.5), "server_lr=0.5 applies to algorithm='fedbuff' or a server_opt only"),
    (dict(buffer_weights="samples"), "buffer_weights='samples' applies to algorithm='fedbuff' only"),
    (dict(algorithm="fedbuff", link="mobile", num_clients=4, concurrency=5), r"concurrency=5 must be in 0\.\.num_"),
])
def test_fedbuff_fields_are_checked(fields, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        Config(**fields)
    assert "\n" not in str(err.value)


def test_fedbuff_fields_reach_the_cli_and_the_cache_key():
    cfg = tiny()
    for change in (dict(server_lr=0.5), dict(concurrency=3), dict(buffer_weights="samples"), dict(buffer_size=2)):
        assert cfg.replace(**change).key() != cfg.key()
    assert cfg.replace(concurrency=4, buffer_size=2).buffer_size == 2  # K above or below the concurrency is allowed
    assert tiny(concurrency=2, buffer_size=3).buffer_size == 3
    args = build_parser().parse_args(["run", "--preset", "smoke", "--algorithm", "fedbuff", "--link", "mobile",
                                      "--server-lr", "0.5", "--concurrency", "3", "--buffer-weights", "samples",
                                      "--buffer-size", "2"])
    got = config_from_args(args)
    assert (got.server_lr, got.concurrency, got.buffer_weights, got.buffer_size) == (0.5, 3, "samples", 2)


@pytest.mark.parametrize("kw", [dict(concurrency=4, buffer_size=2, server_lr=0.7),
                                dict(concurrency=3, buffer_size=4, buffer_weights="samples", server_lr=1.3)],
                         ids=["paper-k-below-concurrency", "variant-k-above-concurrency"])
def test_resume_and_extend_are_exact_with_the_new_fields(tmp_path, monkeypatch, kw):
    cfg = tiny(link="iot", checkpoint_every=1, **kw)
    whole = results.run(cfg, tmp_path / "whole", progress=False)
    real = Federation.round

    def cut(self, t):
        if t == 3:
            raise Stop
        return real(self, t)
    with monkeypatch.context() as m:
        m.setattr(Federation, "round", cut)
        with pytest.raises(Stop):
            results.run(cfg, tmp_path / "cut", progress=False)
    logs = []
    results.run(cfg, tmp_path / "cut", progress=False, log=logs.append)
    assert logs and logs[0].startswith("resuming from round 2")
    assert (tmp_path / "cut" / "metrics.csv").read_bytes() == (tmp_path / "whole" / "metrics.csv").read_bytes()
    results.run(cfg.replace(num_rounds=3), tmp_path / "grown", progress=False)
    grown = results.run(cfg, tmp_path / "grown", progress=False)
    assert (tmp_path / "grown" / "metrics.csv").read_bytes() == (tmp_path / "whole" / "metrics.csv").read_bytes()
    assert grown.summary["final_test_acc"] == whole.summary["final_test_acc"]
    assert math.isfinite(whole.summary["final_test_acc"])
