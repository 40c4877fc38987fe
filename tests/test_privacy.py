"""DP-FedAvg and secure aggregation inside the engine: the steps a round takes, by hand."""
import pytest
import torch

from fl_lib.privacy import dp
from fl_lib.privacy import secagg
from fl_lib.core.errors import ConfigError
from fl_lib.privacy.stages import SECAGG_MARGIN
from fl_lib.simulator.federation import Federation
from fl_lib.core.rng import SERVER, Stream, torch_generator


@pytest.fixture
def data(tiny_data):
    """The session's shared tiny data (conftest.py): read-only."""
    return tiny_data


def client_weights(cfg, data, t=1):
    """Each sampled client's weights after local training from the same start, as the engine trains them."""
    ref = Federation(cfg, data=data)
    out = {}
    for k in ref.sample_clients(t):
        sent, _ = ref.local_update(k, t)
        out[k] = {n: v.clone() for n, v in sent.items()}
    return ref, out


@pytest.mark.parametrize("upload", ["weights", "delta"])
def test_dp_round_is_clipped_updates_plus_noise_over_a_fixed_denominator(tiny, data, upload):
    cfg = tiny(dp_clip=0.5, dp_noise=0.3, upload=upload, bits=32)
    ref, trained = client_weights(cfg, data)
    start = ref.global_state
    updates = [dp.clip_update({n: w[n] - start[n] for n in w}, 0.5)[0] for w in trained.values()]
    assert all(dp.update_norm(u) <= 0.5 + 1e-6 for u in updates)
    noise = torch_generator(cfg.seed, 1, SERVER, Stream.DP_NOISE)
    step = dp.dp_average(updates, 0.3, 0.5, cfg.clients_per_round, noise)
    fed = Federation(cfg, data=data)
    row = fed.round(1)
    for n in start:
        torch.testing.assert_close(fed.global_state[n], start[n] + step[n], rtol=1e-5, atol=1e-6)
    assert row["epsilon"] == pytest.approx(dp.epsilon(1.0, 0.3, 1, 1e-5))


def test_epsilon_column_follows_opacus_round_by_round(tiny, data):
    cfg = tiny(dp_clip=1.0, dp_noise=1.1, client_fraction=0.5, num_clients=8)
    fed = Federation(cfg, data=data)
    for t in (1, 2, 3):
        assert fed.round(t)["epsilon"] == dp.epsilon(0.5, 1.1, t, 1e-5)


def test_dp_with_clipping_only_has_no_epsilon_and_bounded_steps(tiny, data):
    cfg = tiny(dp_clip=0.01, dp_noise=0.0)
    fed = Federation(cfg, data=data)
    start = {n: v.clone() for n, v in fed.global_state.items()}
    row = fed.round(1)
    assert row["epsilon"] is None  # no noise: no privacy guarantee to report
    step = {n: fed.global_state[n] - start[n] for n in start}
    assert dp.update_norm(step) <= 0.01 + 1e-6  # the mean of updates clipped to 0.01


def test_secure_aggregation_equals_the_shared_scale_mean_without_masks(tiny, data):
    cfg = tiny(bits=8, secure_aggregation=True)
    ref, trained = client_weights(cfg, data)
    bound = secagg.channel_bound(ref.global_state, margin=SECAGG_MARGIN)
    clear = secagg.shared_scale_mean([{n: v.float() for n, v in w.items()} for w in trained.values()],
                                     [ref.sizes[k] for k in trained], 8, bound)
    fed = Federation(cfg, data=data)
    row = fed.round(1)
    for n in clear:
        assert torch.equal(fed.global_state[n], clear[n])  # the masks cancel exactly
    assert row["upload_bytes"] > 4 * fed.upload_size(8)  # masked values cost more than 8 bits each


def test_secure_aggregation_survives_a_client_dropping_out(tiny, data):
    cfg = tiny(bits=8, secure_aggregation=True, num_clients=6, link="lognormal:2,1.0")
    probe = Federation(cfg, data=data)
    totals = sorted(probe.client_time(1, k, 8).total for k in range(6))
    cfg = cfg.replace(deadline=(totals[-1] + totals[-2]) / 2)  # exactly one client is late
    ref, trained = client_weights(cfg, data)
    late = max(trained, key=lambda k: probe.client_time(1, k, 8).total)
    kept = [k for k in trained if k != late]
    bound = secagg.channel_bound(ref.global_state, margin=SECAGG_MARGIN)
    clear = secagg.shared_scale_mean([{n: v.float() for n, v in trained[k].items()} for k in kept],
                                     [ref.sizes[k] for k in kept], 8, bound)
    fed = Federation(cfg, data=data)
    row = fed.round(1)
    assert row["dropped_clients"] == 1
    for n in clear:
        assert torch.equal(fed.global_state[n], clear[n])


@pytest.mark.parametrize("fields,needle", [
    (dict(dp_clip=-1.0), "dp_clip=-1.0 is not allowed: must be float in [0, 1000000]"),
    (dict(dp_noise=1.0), "dp_noise=1.0 needs dp_clip > 0"),
    (dict(dp_clip=1.0, dp_delta=1.0), "dp_delta=1.0 is not allowed: must be float in (0, 1)"),
    (dict(dp_clip=1.0, dp_delta=0.0), "dp_delta=0.0 is not allowed"),
])  # combinations (secure sums with float32, FedSGD with DP, ...): tests/test_stages.py
def test_bad_privacy_settings_get_one_line(tiny, fields, needle):
    with pytest.raises(ConfigError) as err:
        tiny(**fields)
    assert needle in str(err.value) and "\n" not in str(err.value)


# -- which clients a DP round takes, and the epsilon for that sampling ---------------------------

def test_poisson_rounds_have_the_expected_mean_count_and_are_recorded(tiny, data):
    cfg = tiny(num_clients=40, partition="iid", client_fraction=0.25, dp_clip=1.0, dp_noise=1.0, num_rounds=2)
    fed = Federation(cfg, data=data)
    counts = [len(fed.sample_clients(t)) for t in range(1, 801)]
    mean, sd = sum(counts) / len(counts), (40 * 0.25 * 0.75 / len(counts)) ** 0.5
    assert abs(mean - 10) < 4 * sd
    assert len(set(counts)) > 3
    assert fed.sample_clients(5) == Federation(cfg, data=data).sample_clients(5)  # seeded
    assert fed.dp_expected_clients == 10.0
    row = fed.round(1)
    assert row["sampled_clients"] == counts[0]
    assert row["epsilon"] == dp.epsilon(0.25, 1.0, 1, 1e-5)


def test_fixed_size_dp_takes_m_clients_and_reports_the_without_replacement_bound(tiny, data):
    cfg = tiny(num_clients=8, client_fraction=0.5, dp_clip=1.0, dp_noise=1.1, dp_sampling="fixed")
    fed = Federation(cfg, data=data)
    plain = Federation(cfg.replace(dp_clip=0.0, dp_noise=0.0, dp_sampling="poisson"), data=data)
    assert all(fed.sample_clients(t) == plain.sample_clients(t) for t in range(1, 20))  # today's draw
    assert fed.round(1)["epsilon"] == dp.fixed_size_epsilon_per_round(8, 4, 1.1, 4, 1e-5)[0]
    assert fed.round(2)["epsilon"] > dp.epsilon(0.5, 1.1, 2, 1e-5)


def test_a_poisson_round_that_samples_nobody_still_adds_the_noise(tiny, data):
    cfg = tiny(num_clients=4, client_fraction=0.1, dp_clip=0.5, dp_noise=1.0, num_rounds=30)
    fed = Federation(cfg, data=data)
    t = next(t for t in range(1, 31) if not fed.sample_clients(t))
    start = {n: v.clone() for n, v in fed.global_state.items()}
    row = fed.round(t)
    assert row["sampled_clients"] == 0 and row["train_loss"] is None and row["epsilon"] > 0
    zeros = [{n: torch.zeros_like(v) for n, v in start.items()}]
    step = dp.dp_average(zeros, 1.0, 0.5, 0.4, torch_generator(cfg.seed, t, SERVER, Stream.DP_NOISE))
    for n in start:  # w + N(0, (z S)^2) / (q K), q K = 0.4
        torch.testing.assert_close(fed.global_state[n], start[n] + step[n])


def test_dp_divergence_says_how_many_clients_per_round_the_epsilon_needs(tiny, data):
    from fl_lib.core.errors import DivergenceError
    cfg = tiny(dp_clip=1.0, dp_noise=1.0)
    fed = Federation(cfg, data=data)
    fed.dead_rounds = 2
    d = sum(v.numel() for v in fed.global_state.values() if v.is_floating_point())
    need = dp.clients_needed(1.0, d)
    with pytest.raises(DivergenceError, match=f"needs m >= z sqrt\\(d\\) = {need:,} clients per round") as err:
        fed.count_dead_round(3)
    assert "\n" not in str(err.value) and f"num_clients >= {need:,}" in str(err.value)
