"""The link model: profiles, parsing, deterministic draws, round times, adaptive bits, FedBuff helpers."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_lib.errors import ConfigError
from fl_lib.links import (
    IOT, MOBILE, ClientTime, EventQueue, Links, LinkState, check_link, client_seconds,
    default_budget, parse_link, pick_bits, sigma_from_mean_median, staleness_weight,
    sync_round, train_flops_per_sample, transfer_seconds,
)


# -- profiles and parsing --------------------------------------------------------

def test_none_means_no_clock():
    assert parse_link("none") is None
    check_link("none")


def test_named_profiles_carry_their_sources():
    assert parse_link("mobile") is MOBILE and parse_link("iot") is IOT
    for p in (MOBILE, IOT):
        assert p.source and p.up_mbps > 0 and p.down_mbps > 0 and p.flops_per_s > 0
    assert 1 < MOBILE.up_mbps < 20  # "a few Mbit/s"
    assert IOT.up_mbps < MOBILE.up_mbps / 100 and IOT.latency_s > MOBILE.latency_s


def test_mobile_sigmas_follow_from_ooklas_mean_and_median():
    # mean / median = exp(sigma^2 / 2): 15.48 / 8.56 -> 1.0885, 141.54 / 68.34 -> 1.2067
    assert sigma_from_mean_median(15.48, 8.56) == pytest.approx(1.0885, abs=1e-4)
    assert sigma_from_mean_median(141.54, 68.34) == pytest.approx(1.2067, abs=1e-4)
    # half the uplink log-variance per round, the rest between clients
    assert MOBILE.jitter_sigma == pytest.approx(1.0885 / math.sqrt(2), abs=1e-4)
    assert MOBILE.up_sigma**2 + MOBILE.jitter_sigma**2 == pytest.approx(1.0885**2, abs=1e-3)
    assert MOBILE.down_sigma**2 + MOBILE.jitter_sigma**2 == pytest.approx(1.2067**2, abs=1e-3)


def test_custom_lognormal():
    p = parse_link("lognormal:5,0.5")
    assert (p.up_mbps, p.up_sigma, p.down_sigma) == (5.0, 0.5, 0.5)
    assert p.down_mbps == pytest.approx(5 * 68.34 / 8.56)
    assert p.jitter_sigma == 0 and p.flops_sigma == 0
    assert parse_link("lognormal:0.02,0").up_sigma == 0
    assert parse_link("lognormal:5,3").up_sigma == 3


@pytest.mark.parametrize("spec", [
    "lognormal:", "lognormal:-1,0.5", "lognormal:5", "lognormal:5,9", "wifi7",
    "lognormal:0,0.5", "lognormal:5,-0.1", "lognormal:abc", "lognormal:abc,1", "lognormal:5,1,2",
    "lognormal:nan,1", "lognormal:inf,1", "lognormal:5,nan", "Mobile", "", "-1", 5, None,
])
def test_bad_specs_give_one_line_naming_link(spec):
    with pytest.raises(ConfigError) as e:
        parse_link(spec)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"link={spec!r} is not allowed: must be one of none, mobile, iot, or lognormal:")
    with pytest.raises(ConfigError):
        check_link(spec)


# -- draws -----------------------------------------------------------------------

def test_same_seed_same_draws_and_distinct_otherwise():
    a, b = Links(MOBILE, 20, seed=3), Links(MOBILE, 20, seed=3)
    assert [a.state(t, k) for t in range(4) for k in range(20)] == \
           [b.state(t, k) for t in range(4) for k in range(20)]
    ups = {a.state(t, k).up_bps for t in range(1, 4) for k in range(20)}
    assert len(ups) == 60  # every (round, client) its own draw
    c = Links(MOBILE, 20, seed=4)
    assert all(a.base(k) != c.base(k) for k in range(20))


def test_base_draw_is_once_per_run_and_order_free():
    a = Links(MOBILE, 10, seed=0)
    later_first = a.state(7, 3)  # ask for a late round before anything else
    b = Links(MOBILE, 10, seed=0)
    for t in range(1, 7):
        b.state(t, 3)
    assert b.state(7, 3) == later_first
    assert a.base(3) == b.base(3) == a.state(0, 3)
    # per-round factor multiplies the base; latency and compute are per client
    for t in range(1, 5):
        s = a.state(t, 3)
        assert (s.latency_s, s.flops_per_s) == (a.base(3).latency_s, a.base(3).flops_per_s)
        assert s.up_bps != a.base(3).up_bps


def test_homogeneous_custom_profile_has_identical_clients():
    links = Links(parse_link("lognormal:4,0"), 5, seed=1)
    states = {links.state(t, k) for t in range(3) for k in range(5)}
    assert states == {LinkState(4e6, 4e6 * 68.34 / 8.56, 0.031, math.sqrt(15e9 * 30e9))}


def test_draws_spread_like_the_profile():
    links = Links(MOBILE, 2000, seed=0)
    logs = sorted(math.log(links.base(k).up_bps / 1e6) for k in range(2000))
    median = math.exp(logs[1000])
    sd = (sum((x - sum(logs) / 2000) ** 2 for x in logs) / 1999) ** 0.5
    assert median == pytest.approx(MOBILE.up_mbps, rel=0.06)
    assert sd == pytest.approx(MOBILE.up_sigma, rel=0.05)


def test_client_out_of_range():
    with pytest.raises(IndexError):
        Links(MOBILE, 3, seed=0).state(1, 3)


# -- time ----------------------------------------------------------------------

def test_hand_computed_client_time():
    s = LinkState(up_bps=2e6, down_bps=8e6, latency_s=0.05, flops_per_s=1e9)
    ct = client_seconds(s, download_bytes=1_000_000, upload_bytes=500_000, num_samples=100,
                        local_epochs=2, flops_per_sample=5e6)
    # 8e6 bits / 8e6 = 1 s; 100 * 2 * 5e6 / 1e9 = 1 s; 4e6 bits / 2e6 = 2 s; + 0.05 s
    assert ct == ClientTime(download=1.0, compute=1.0, upload=2.0, latency=0.05, total=4.05)
    assert transfer_seconds(125, 1000) == 1.0


def test_hand_computed_synchronous_round_without_deadline():
    slow = LinkState(1e6, 8e6, 0.0, 1e9)
    fast = LinkState(4e6, 8e6, 0.0, 1e9)
    times = [client_seconds(s, 800_000, 1_000_000, 10, 1, 1e8) for s in (slow, fast)]
    # download 0.8 s each, compute 1 s each, upload 8 s and 2 s
    assert [t.total for t in times] == pytest.approx([9.8, 3.8])
    assert sync_round(times) == (pytest.approx(9.8), [True, True])


def test_deadline_drops_exactly_the_late_clients():
    totals = [3.0, 10.0, 7.5, 7.4999, 12.0]
    duration, kept = sync_round(totals, deadline=7.5)
    assert kept == [True, False, True, True, False] and duration == 7.5
    assert sync_round(totals, deadline=12.0) == (12.0, [True] * 5)  # on time counts
    assert sync_round(totals, deadline=20.0) == (12.0, [True] * 5)  # none late: slowest total
    assert sync_round(totals, deadline=1.0) == (1.0, [False] * 5)  # all dropped: lasts the deadline
    assert sync_round([], deadline=5.0) == (0.0, [])


# -- adaptive bits -------------------------------------------------------------

def _bytes_by_bits(params=10_000, header=100):
    return {b: header + (params * b + 7) // 8 for b in list(range(2, 17)) + [32]}


def test_pick_bits_hand_case():
    s = LinkState(up_bps=8e4, down_bps=1e6, latency_s=0.0, flops_per_s=1e9)  # 10 kB/s up
    sizes = _bytes_by_bits()  # 16 bits: 20,100 B = 2.01 s; 8 bits: 10,100 B = 1.01 s
    assert pick_bits(s, sizes, budget_s=3.0, fixed_s=0.5) == 16
    assert pick_bits(s, sizes, budget_s=2.0, fixed_s=0.5) == 11  # 13,850 B = 1.385 s
    assert pick_bits(s, sizes, budget_s=0.5 + 0.26, fixed_s=0.5) == 2  # 2,600 B = 0.26 s
    assert pick_bits(s, sizes, budget_s=0.5 + 0.25, fixed_s=0.5) is None  # straggler
    assert pick_bits(s, {32: 10}, budget_s=100, fixed_s=0) is None  # 32 is never adaptive


@settings(max_examples=200, deadline=None)
@given(up=st.floats(1e3, 1e9), budget=st.floats(0, 1e4), fixed=st.floats(0, 1e4),
       params=st.integers(1, 10**7))
def test_pick_bits_never_misses_the_budget(up, budget, fixed, params):
    s = LinkState(up, 1e6, 0.0, 1e9)
    sizes = _bytes_by_bits(params)
    bits = pick_bits(s, sizes, budget, fixed)
    fits = [b for b in range(2, 17) if fixed + transfer_seconds(sizes[b], up) <= budget]
    if bits is None:
        assert not fits  # not even 2 bits fits
    else:
        assert bits == max(fits)  # the widest that fits, so also never one that misses


def test_default_budget_is_the_slowest_total_at_2_bits():
    assert default_budget([5.0, 1.0, 3.0]) == 5.0
    assert default_budget([ClientTime(0, 0, 0, 0, 2.0), ClientTime(0, 0, 0, 0, 4.0)]) == 4.0
    with pytest.raises(ValueError):
        default_budget([])


# -- FedBuff -------------------------------------------------------------------

def test_staleness_weights_by_hand():
    assert [staleness_weight(s) for s in (0, 1, 3, 8)] == pytest.approx([1.0, 1 / math.sqrt(2), 0.5, 1 / 3])
    with pytest.raises(ValueError):
        staleness_weight(-1)


def test_event_queue_orders_by_time_then_push_order():
    q = EventQueue()
    for time, client in [(2.0, 5), (1.0, 9), (2.0, 1), (0.5, 7), (2.0, 3), (1.0, 0)]:
        q.push(time, client)
    assert len(q) == 6 and q.peek_time() == 0.5
    out = [q.pop() for _ in range(6)]
    assert out == [(0.5, 7), (1.0, 9), (1.0, 0), (2.0, 5), (2.0, 1), (2.0, 3)]
    assert len(q) == 0


# -- compute -------------------------------------------------------------------

def test_flops_of_linear_models_match_flop_counter_convention():
    i, h, o = 7, 5, 3
    # one layer on data: 2io forward + 2io weight gradient (no gradient for the input)
    assert train_flops_per_sample(torch.nn.Linear(i, o), (i,)) == 4 * i * o
    # a second layer also back-propagates to its input: 6ho
    mlp = torch.nn.Sequential(torch.nn.Linear(i, h), torch.nn.ReLU(), torch.nn.Linear(h, o))
    assert train_flops_per_sample(mlp, (i,)) == 4 * i * h + 6 * h * o


def test_flop_count_leaves_the_model_untouched_and_is_deterministic():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(2 * 4 * 4, 3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    a = train_flops_per_sample(net, (1, 6, 6))
    assert a == train_flops_per_sample(net, (1, 6, 6)) > 0
    # conv: 2 * (2*4*4 outputs) * (1*3*3) forward, same again for the weight gradient
    conv = 2 * 2 * 4 * 4 * 9
    assert a == 2 * conv + 6 * 32 * 3
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
