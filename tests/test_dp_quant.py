"""DP under secure aggregation (dp_quant.py): the rotation, the rounding's norm bound the noise is sized for,
the aggregate's error, refused settings, the masked path against the clear one, and the engine's round."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from fl_lib.privacy import dp
from fl_lib.privacy import dp_quant
from fl_lib.core.config import Config
from tests.tiny import tiny_config
from fl_lib.core.errors import ConfigError
from fl_lib.core.stages import weights_to_update
from fl_lib.simulator.federation import Federation
from fl_lib.core.quant import q_max
from fl_lib.core.rng import SERVER, Stream, torch_generator
from fl_lib.privacy.secagg import KEY_BYTES, SHARE_BYTES, masked_upload_bytes, modulus_bits


def gaussian_updates(num_clients, d, clip=1.0, seed=0):
    """Independent random updates, each of norm `clip` (every one at the clip: the rounding's worst scale)."""
    g = torch.Generator().manual_seed(seed)
    return [dp.clip_update({"w": torch.randn(d, generator=g) * 10}, clip)[0]["w"] for _ in range(num_clients)]


@pytest.mark.parametrize("n", [1, 2, 8, 256])
def test_hadamard_is_the_orthonormal_walsh_hadamard_matrix(n):
    x = np.random.default_rng(n).standard_normal(n)
    np.testing.assert_allclose(dp_quant.hadamard(x), scipy.linalg.hadamard(n) @ x / math.sqrt(n), atol=1e-12)
    np.testing.assert_allclose(dp_quant.hadamard(dp_quant.hadamard(x)), x, atol=1e-12)  # H H = I
    with pytest.raises(ValueError, match="power of two"):
        dp_quant.hadamard(np.ones(6))


def test_grid_matches_its_equations():
    grid = dp_quant.dp_grid(122_570, 8, 2.0, "stochastic")
    n = 2 ** 17
    c = 127 * math.sqrt(n / (2 * math.log(2 * n / dp_quant.FLATTEN_BETA)))  # (G)
    assert grid.size == n and grid.clip_steps == pytest.approx(c) and grid.step == pytest.approx(2.0 / c)
    b2 = c * c + n / 4 + 1.0 * (c + math.sqrt(n) / 2)  # (B) with sqrt(2 ln(1/beta)) = 1
    assert grid.norm_bound == pytest.approx(min(math.sqrt(b2), c + math.sqrt(n)))
    assert grid.sensitivity == pytest.approx(2.0 * grid.norm_bound / c) and grid.sensitivity > 2.0
    assert grid.noise_std(1.5) == pytest.approx(1.5 * grid.sensitivity)
    assert grid.clamp_probability == pytest.approx(dp_quant.FLATTEN_BETA)
    assert grid.error_bound == pytest.approx(math.sqrt(n) / (2 * c)) and grid.error_bound < 0.03
    near = dp_quant.dp_grid(122_570, 8, 2.0, "nearest")
    assert near.norm_bound == pytest.approx(c + math.sqrt(n) / 2)  # (B')
    small = dp_quant.dp_grid(10, 8, 1.0)  # n = 16: C = q_max, |y_i| <= ||y|| never clamps
    assert small.clip_steps == q_max(8) and small.clamp_probability == 0.0


def adversarial(grid, signs, frac=0.5 + 1e-6, seed=0):
    """An update at the clip whose rotated coordinates all sit just over half a step: |y_i| = a_i + frac."""
    n, c = grid.size, grid.clip_steps
    a = math.floor(c / math.sqrt(n) - frac)
    # m coordinates one step higher, as many as keep ||y|| <= C: the norm ends within a step of the clip
    m = int((c * c - n * (a + frac) ** 2) // ((a + 1 + frac) ** 2 - (a + frac) ** 2))
    mags = np.where(np.arange(n) < m, a + 1 + frac, a + frac)
    y = np.random.default_rng(seed).choice([-1.0, 1.0], n) * mags
    x = signs * dp_quant.hadamard(y * grid.step)  # rotate(x) = y, since (H D)^-1 = D H
    return x, y


@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_worst_case_rounding_stays_within_the_sensitivity_the_noise_is_sized_for(rounding):
    grid = dp_quant.dp_grid(1024, 8, 1.0, rounding)  # d = n: every rotated vector is reachable
    signs = dp_quant.rotation_signs(0, 1, grid.size)
    x, y = adversarial(grid, signs)
    assert np.linalg.norm(x) <= 1.0 and np.linalg.norm(y) > 0.999 * grid.clip_steps
    for seed in range(40):
        z = dp_quant.encode(x, grid, signs, np.random.default_rng(seed))
        assert int(np.dot(z, z)) <= grid.norm_bound ** 2
        assert np.linalg.norm(dp_quant.decode(z, grid, signs)) <= grid.sensitivity * (1 + 1e-12)
    if rounding == "nearest":  # every coordinate moves by its half step, away from 0: the bound (B') is tight
        assert np.linalg.norm(z) > np.linalg.norm(y) + 0.99 * math.sqrt(grid.size) / 2
    else:  # the condition binds: plain stochastic rounding of this vector breaks (B) in some draws
        rng = np.random.default_rng(1)
        low = np.floor(y)
        plain = [np.sum((low + (rng.random(grid.size) < y - low)) ** 2) for _ in range(200)]
        assert sum(p > grid.norm_bound ** 2 for p in plain) >= 5
    # The plain shared grid of the old path doubles a small update's norm on this input (all just over a half step).
    step = 1.0 / q_max(8)
    half = np.full(1024, step * (0.5 + 1e-6))
    assert np.linalg.norm(np.rint(half / step) * step) > 1.99 * np.linalg.norm(half)


def test_an_update_inside_the_clip_stays_inside_and_nothing_over_it_escapes():
    grid = dp_quant.dp_grid(3000, 6, 0.5)
    signs = dp_quant.rotation_signs(3, 2, grid.size)
    x = np.random.default_rng(0).standard_normal(3000) * 100  # far over the clip: encode clips it to S first
    z = dp_quant.encode(x, grid, signs, np.random.default_rng(0))
    assert np.abs(z).max() <= q_max(6) and np.dot(z, z) <= grid.norm_bound ** 2
    assert np.array_equal(dp_quant.encode(np.zeros(3000), grid, signs, np.random.default_rng(0)),
                          np.zeros(grid.size, dtype=np.int64))
    with pytest.raises(ConfigError, match="nan or inf"):
        dp_quant.encode(np.full(3000, np.nan), grid, signs, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="3001 values"):
        dp_quant.encode(np.zeros(3001), grid, signs, np.random.default_rng(0))


def test_dp_secagg_aggregate_error_is_small_at_int16_and_far_below_the_plain_grid_at_int8():
    ups = gaussian_updates(10, 10_000)
    assert dp_quant.dp_secagg_error(ups, 16, 1.0) < 1e-3
    new8 = dp_quant.dp_secagg_error(ups, 8, 1.0)
    old8 = dp_quant.dp_secagg_error(ups, 8, 1.0, rotate=False)
    assert new8 < 0.05 and new8 < old8 / 5  # the plain grid (step S / q_max) rounds small coordinates to 0
    assert dp_quant.dp_secagg_error(ups, 8, 1.0, rounding="nearest") < 0.05


def test_rounding_is_unbiased_enough_that_repeats_average_out():
    grid = dp_quant.dp_grid(512, 4, 1.0)  # INT4: about one grid step per coordinate, rho ~ 0.4
    signs = dp_quant.rotation_signs(0, 1, grid.size)
    x = gaussian_updates(1, 512)[0].double().numpy()
    draws = [dp_quant.decode(dp_quant.encode(x, grid, signs, np.random.default_rng(s)), grid, signs)
             for s in range(400)]
    one = np.linalg.norm(draws[0] - x) / np.linalg.norm(x)
    mean = np.linalg.norm(np.mean(draws, axis=0) - x) / np.linalg.norm(x)
    assert 0.1 < one <= 2 * grid.error_bound and mean < 3 * one / math.sqrt(400)


@pytest.mark.parametrize("bits,d", [(2, 10_000), (3, 122_570)])
def test_a_setting_that_would_lose_the_update_is_refused_with_one_line(bits, d):
    with pytest.raises(ConfigError) as err:
        dp_quant.dp_grid(d, bits, 1.0)
    msg = str(err.value)
    assert f"bits={bits}" in msg and f"{d:,} parameters" in msg and "use bits >= 4" in msg and "\n" not in msg
    assert dp_quant.dp_grid(d, 4, 1.0).error_bound <= dp_quant.MAX_ERROR


@pytest.mark.parametrize("dropped", [(), (1,), (0, 4)])
def test_the_masked_path_equals_the_clear_sum_bit_for_bit(dropped):
    ups = [u.double().numpy() for u in gaussian_updates(5, 700, clip=0.3)]
    grid = dp_quant.dp_grid(700, 8, 0.3)
    codes = dp_quant.client_codes(ups, grid, seed=4, round=3, clients=[2, 5, 7, 8, 11], dropped=dropped)
    masked = dp_quant.masked_total(codes, grid, 4, 3, dropped=dropped)
    clear = dp_quant.clear_total(codes, grid, 4, 3, dropped=dropped)
    assert np.array_equal(masked, clear)
    kept = [u for i, u in enumerate(ups) if i not in dropped]
    assert np.linalg.norm(masked - np.sum(kept, axis=0)) < 0.05 * np.linalg.norm(np.sum(kept, axis=0))
    assert all(not codes[i].any() for i in dropped)


def test_same_seed_same_codes_and_a_new_round_a_new_rotation():
    ups = [u.numpy() for u in gaussian_updates(3, 300)]
    grid = dp_quant.dp_grid(300, 8, 1.0)
    a = dp_quant.client_codes(ups, grid, 1, 2)
    b = dp_quant.client_codes(ups, grid, 1, 2)
    c = dp_quant.client_codes(ups, grid, 1, 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not any(np.array_equal(x, y) for x, y in zip(a, c))
    assert not np.array_equal(dp_quant.rotation_signs(1, 2, 512), dp_quant.rotation_signs(1, 3, 512))
    other = dp_quant.client_codes(ups, grid, 1, 2, clients=[5, 6, 7])  # a client rounds with its own stream
    assert not np.array_equal(a[0], other[0])


def test_rotated_upload_bytes_count_the_padded_vector():
    k = modulus_bits(8, 5)
    protocol = KEY_BYTES + 2 * 4 * SHARE_BYTES + 5 * SHARE_BYTES
    assert masked_upload_bytes(1000, 8, 5, rotated=True) == math.ceil(1024 * k / 8) + protocol
    assert masked_upload_bytes(1024, 8, 5, rotated=True) == math.ceil(1024 * k / 8) + protocol
    assert dp_quant.dp_grid(1000, 8, 1.0).upload_bytes(5) == masked_upload_bytes(1000, 8, 5, rotated=True)


# -- inside the engine ------------------------------------------------------------------------

@pytest.fixture
def data(tiny_data):
    """The session's shared tiny data (conftest.py): read-only."""
    return tiny_data


def tiny(**kw) -> Config:
    """The shared tiny federation with DP under 8-bit secure aggregation, fixed-size client sampling."""
    return tiny_config(**{**dict(dp_clip=0.5, dp_noise=0.3, secure_aggregation=True, bits=8, dp_sampling="fixed"),
                          **kw})


@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_a_dp_secagg_round_is_the_decoded_sum_plus_noise_sized_for_delta(data, rounding):
    cfg = tiny(rounding=rounding)
    ref = Federation(cfg, data=data)
    sampled = ref.sample_clients(1)
    start = {n: v.clone() for n, v in ref.global_state.items()}
    flats = []
    for k in sampled:
        sent, _ = ref.local_update(k, 1)
        clipped = ref.pipeline.stages[0].client(None, sent, ref.global_state)  # DPClip, the client's own stage
        flats.append(dp_quant.flatten(weights_to_update(clipped, ref.global_state)))  # what the client sends
    grid = dp_quant.dp_grid(len(flats[0]), 8, 0.5, rounding)
    codes = dp_quant.client_codes(flats, grid, cfg.seed, 1, clients=sampled)
    total = dp_quant.unflatten(dp_quant.clear_total(codes, grid, cfg.seed, 1), start)
    step = dp.add_noise(total, 0.3, grid.sensitivity, torch_generator(cfg.seed, 1, SERVER, Stream.DP_NOISE))
    fed = Federation(cfg, data=data)
    row = fed.round(1)
    for n in start:
        assert torch.equal(fed.global_state[n], (start[n].float() + step[n] / fed.dp_expected_clients))
    assert row["upload_bytes"] == grid.upload_bytes(len(sampled)) * len(sampled)
    signs = dp_quant.rotation_signs(cfg.seed, 1, grid.size)
    errors = [dp_quant.upload_error(f, z, grid, signs) for f, z in zip(flats, codes)]
    assert row["quant_error"] == pytest.approx(np.mean(errors)) and row["quant_error"] < 0.2


def test_the_engine_refuses_a_width_that_would_lose_the_update(data):
    with pytest.raises(ConfigError) as err:
        fed = Federation(tiny(bits=3), data=data)  # refused when built, or at the latest by its first round
        fed.round(1)
    assert "bits=3" in str(err.value) and "use bits >= 4" in str(err.value) and "\n" not in str(err.value)


def test_a_late_client_drops_out_of_the_masked_dp_sum(data):
    cfg = tiny(num_clients=6, link="lognormal:2,1.0")
    probe = Federation(cfg, data=data)
    sampled = probe.sample_clients(1)
    times = {k: probe.client_time(1, k, 8).total for k in sampled}
    slowest = sorted(times.values())
    cfg = cfg.replace(deadline=(slowest[-1] + slowest[-2]) / 2)  # exactly one client is late
    late = max(times, key=times.get)
    ref = Federation(cfg, data=data)
    start = {n: v.clone() for n, v in ref.global_state.items()}
    grid = ref.dp_grid
    clip = ref.pipeline.stages[0]  # DPClip: the client's own clipping
    sent = {k: clip.client(None, ref.local_update(k, 1)[0], ref.global_state) for k in sampled}
    flats = [np.zeros(grid.num_params) if k == late else dp_quant.flatten(weights_to_update(sent[k], ref.global_state)) for k in sampled]
    gone = [sampled.index(late)]
    codes = dp_quant.client_codes(flats, grid, cfg.seed, 1, clients=sampled, dropped=gone)
    total = dp_quant.unflatten(dp_quant.clear_total(codes, grid, cfg.seed, 1, dropped=gone), start)
    step = dp.add_noise(total, 0.3, grid.sensitivity, torch_generator(cfg.seed, 1, SERVER, Stream.DP_NOISE))
    fed = Federation(cfg, data=data)
    row = fed.round(1)
    assert row["dropped_clients"] == 1 and row["upload_bytes"] == grid.upload_bytes(len(sampled)) * (len(sampled) - 1)
    for n in start:
        assert torch.equal(fed.global_state[n], start[n].float() + step[n] / fed.dp_expected_clients)


def test_a_round_without_senders_adds_the_noise_for_delta_alone(data):
    fed = Federation(tiny(), data=data)
    start = {n: v.clone() for n, v in fed.global_state.items()}
    result = fed.pipeline.aggregator.aggregate(2, fed.global_state, [], [])
    assert (result.upload_bytes, result.errors) == (0, [])
    fed.global_state = result.state
    grid = fed.dp_grid
    zeros = {n: torch.zeros_like(v) for n, v in start.items()}
    step = dp.add_noise(zeros, 0.3, grid.sensitivity, torch_generator(fed.cfg.seed, 2, SERVER, Stream.DP_NOISE))
    for n in start:
        assert torch.equal(fed.global_state[n], start[n] + step[n] / fed.dp_expected_clients)
