"""DP-FedAvg primitives: clipping bound, noise scale, fixed denominator, Opacus's accountant as the oracle."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_lib.privacy.dp import (add_noise, check_dp, clip_update, dp_average, epsilon, epsilon_per_round,
                       update_norm)
from fl_lib.core.errors import ConfigError


def random_update(seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(4, 3, 3, 3, generator=g) * scale,
            "conv.bias": torch.randn(4, generator=g) * scale,
            "fc.weight": torch.randn(10, 36, generator=g, dtype=torch.float64) * scale,
            "steps": torch.tensor(7)}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2 ** 31), log_scale=st.floats(-30, 30), clip=st.floats(1e-6, 1e6))
def test_clipped_norm_is_at_most_clip(seed, log_scale, clip):
    delta = random_update(seed, 10.0 ** (log_scale / 3))
    clipped, before = clip_update(delta, clip)
    assert before == pytest.approx(update_norm(delta))
    assert update_norm(clipped) <= clip
    assert torch.equal(clipped["steps"], delta["steps"])  # counters untouched
    if before <= clip:  # small updates pass unchanged
        assert all(torch.equal(clipped[k], delta[k]) for k in delta)
    else:  # large ones keep their direction and land on the sphere
        assert update_norm(clipped) == pytest.approx(clip, rel=1e-5)
        factor = clipped["fc.weight"].double() / delta["fc.weight"].double()
        assert torch.allclose(factor, factor.flatten()[0].expand_as(factor), rtol=1e-5)


def test_clip_refuses_nonpositive_clip_and_nonfinite_update():
    with pytest.raises(ConfigError, match="dp_clip=0"):
        clip_update(random_update(0), 0)
    bad = random_update(0)
    bad["conv.bias"][0] = float("nan")
    with pytest.raises(ConfigError, match="nan or inf"):
        clip_update(bad, 1.0)


def test_noise_has_the_stated_std():
    z, clip, n = 1.3, 0.7, 400_000
    total = {"w": torch.zeros(n // 4, 4), "b": torch.full((7,), 2.0), "count": torch.tensor(5)}
    noised = add_noise(total, z, clip, torch.Generator().manual_seed(0))
    sample = noised["w"].double().flatten()
    # the std of a sample std is about sigma / sqrt(2n) = 0.11% of sigma here: 1% is ~9 of them
    assert sample.std().item() == pytest.approx(z * clip, rel=0.01)
    assert abs(sample.mean().item()) < 5 * z * clip / math.sqrt(n)
    assert torch.equal(noised["count"], total["count"])
    again = add_noise(total, z, clip, torch.Generator().manual_seed(0))
    assert all(torch.equal(noised[k], again[k]) for k in total)  # deterministic given the generator


def test_dp_average_divides_the_noised_sum_by_a_fixed_denominator():
    ups = [clip_update(random_update(s), 1.0)[0] for s in range(3)]
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    out = dp_average(ups, 0.0, 1.0, expected_clients=5, generator=gen())
    want = sum(u["fc.weight"].double() for u in ups) / 5  # 3 sampled, expected 5: still / 5
    assert torch.allclose(out["fc.weight"].double(), want, atol=1e-6)
    noisy = dp_average(ups, 2.0, 1.0, expected_clients=5, generator=gen())
    noise = torch.randn(4, 3, 3, 3, generator=gen()) * 2.0  # the first tensor's noise, same stream
    conv = sum(u["conv.weight"] for u in ups)
    assert torch.allclose(noisy["conv.weight"], (conv + noise) / 5, atol=1e-5)
    weighted = dp_average(ups, 0.0, 1.0, expected_clients=2.5, generator=gen(), weights=[1.0, 0.5, 0.0])
    want = (ups[0]["conv.bias"] + 0.5 * ups[1]["conv.bias"]) / 2.5
    assert torch.allclose(weighted["conv.bias"], want, atol=1e-6)
    with pytest.raises(ConfigError, match=r"weight=2 .*\[0, 1\]"):
        dp_average(ups, 1.0, 1.0, 3, gen(), weights=[1, 2, 1])


@pytest.mark.parametrize("q,z,steps,delta", [(0.1, 1.1, 100, 1e-5), (1.0, 2.0, 30, 1e-5), (0.01, 0.8, 1000, 1e-6)])
def test_epsilon_equals_opacus_accountant(q, z, steps, delta):
    from opacus.accountants import RDPAccountant
    acc = RDPAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=z, sample_rate=q)
    assert epsilon(q, z, steps, delta) == acc.get_epsilon(delta=delta)


def test_epsilon_per_round_equals_the_accountant_after_each_round():
    from opacus.accountants import RDPAccountant
    q, z, delta, rounds = 0.1, 1.5, 1e-5, 6  # each get_epsilon recomputes the RDP (~0.15 s)
    acc, want = RDPAccountant(), []
    for _ in range(rounds):
        acc.step(noise_multiplier=z, sample_rate=q)
        want.append(acc.get_epsilon(delta=delta))
    got = epsilon_per_round(q, z, rounds, delta)
    assert got == want
    assert all(a < b for a, b in zip(got, got[1:]))  # privacy spent only grows


def test_epsilon_edge_cases():
    assert epsilon(0.5, 1.0, 0, 1e-5) == 0.0
    assert epsilon(0.5, 0.0, 10, 1e-5) == math.inf
    assert epsilon_per_round(0.5, 0.0, 3, 1e-5) == [math.inf] * 3
    assert epsilon_per_round(0.5, 1.0, 0, 1e-5) == []
    assert epsilon(0.1, 4.0, 50, 1e-5) < epsilon(0.1, 1.0, 50, 1e-5)  # more noise, less epsilon
    with pytest.raises(ConfigError, match="q=0"):
        epsilon(0, 1.0, 10, 1e-5)


@pytest.mark.parametrize("clip,noise,delta,field", [
    (-1.0, 0.0, 1e-5, "dp_clip=-1.0"),
    (float("nan"), 0.0, 1e-5, "dp_clip=nan"),
    (1.0, -0.5, 1e-5, "dp_noise=-0.5"),
    (0.0, 1.0, 1e-5, "dp_noise=1.0"),
    (1.0, 1.0, 0.0, "dp_delta=0.0"),
    (1.0, 1.0, 1.0, "dp_delta=1.0"),
    (1.0, 1.0, -1e-5, "dp_delta=-1e-05"),
    (1.0, True, 1e-5, "dp_noise=True"),
])
def test_bad_values_get_one_line_naming_field_value_and_range(clip, noise, delta, field):
    with pytest.raises(ConfigError) as info:
        check_dp(clip, noise, delta)
    text = str(info.value)
    assert text.startswith(field) and "\n" not in text
    assert "must be" in text


@pytest.mark.parametrize("clip,noise,delta", [(0.0, 0.0, 1e-5), (1.0, 0.0, 1e-5), (0.5, 1.1, 0.999), (3, 2, 1e-9)])
def test_good_values_pass(clip, noise, delta):
    check_dp(clip, noise, delta)


# -- accounting for the sampling the engine does --------------------------------------------------

def _dp_accounting_poisson(q, z, steps, delta, orders):
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant
    acc = RdpAccountant(orders=orders)
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("q,z,steps", [(0.1, 1.0, 100), (0.01, 1.0, 1000), (1.0, 1.1, 8), (0.3, 0.8, 20)])
def test_poisson_epsilon_equals_an_independent_accountant(q, z, steps):
    """Opacus's bound (what the engine reports) against Google's dp-accounting on the same RDP orders."""
    from opacus.accountants import RDPAccountant
    want = _dp_accounting_poisson(q, z, steps, 1e-5, RDPAccountant.DEFAULT_ALPHAS)
    # dp-accounting drops the fractional orders whose series it cannot converge (it logs them), so its
    # bound is at most a little larger than Opacus's; 0.5 % covers that (0.11 % at q = 0.3, z = 0.8)
    got = epsilon(q, z, steps, 1e-5)
    assert want * (1 - 1e-6) > got * (1 - 5e-3) and got <= want * (1 + 1e-6)


def test_fixed_size_epsilon_composes_like_the_accountant_and_exceeds_poisson():
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant
    from fl_lib.privacy.dp import fixed_size_epsilon_per_round
    got = fixed_size_epsilon_per_round(100, 10, 1.0, 30, 1e-5)
    for t in (1, 7, 30):
        acc = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
        # replace-one: one client's swap moves the sum by 2S, so the multiplier is z / 2
        acc.compose(dp_accounting.SampledWithoutReplacementDpEvent(100, 10, dp_accounting.GaussianDpEvent(0.5)), t)
        assert got[t - 1] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert all(a < b for a, b in zip(got, got[1:]))
    assert got[-1] > 2 * epsilon(0.1, 1.0, 30, 1e-5)  # the Poisson bound was far too small for this sampling
    assert fixed_size_epsilon_per_round(100, 10, 0.0, 3, 1e-5) == [math.inf] * 3
    with pytest.raises(ConfigError, match=r"clients_per_round=11 is not allowed: must be an int in \[1, 10\]"):
        fixed_size_epsilon_per_round(10, 11, 1.0, 3, 1e-5)


def test_poisson_sample_takes_each_client_with_probability_q():
    import numpy as np
    from fl_lib.privacy.dp import poisson_sample
    counts = [len(poisson_sample(50, 0.2, np.random.default_rng(s))) for s in range(2000)]
    assert abs(np.mean(counts) - 10) < 4 * math.sqrt(50 * 0.2 * 0.8 / 2000)
    assert min(counts) < 10 < max(counts)  # the count varies from round to round
    assert poisson_sample(5, 1.0, np.random.default_rng(0)) == [0, 1, 2, 3, 4]


def test_clients_needed_makes_the_noise_no_larger_than_the_clip():
    from fl_lib.privacy.dp import clients_needed
    assert clients_needed(1.0, 122_570) == 351  # ceil(sqrt(122570)) = 351
    assert clients_needed(0.5, 100) == 5
