"""The link model: profiles, parsing, deterministic draws, round times, adaptive bits, FedBuff helpers."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_lib.core.errors import ConfigError
from fl_lib.core.links import (
    IOT, MOBILE, SECAGG_ROUND_TRIPS, ClientTime, EventQueue, Links, LinkState, adaptive_plan, adaptive_widths,
    check_link, client_seconds, default_budget, own_width, parse_link, pick_width,
    sigma_from_mean_median, staleness_weight, sync_round, train_flops_per_sample, transfer_seconds,
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


def _times(state, sizes, rest_bytes=0, samples=0, flops=0.0, widths=range(2, 17)):
    """{width: ClientTime} of one client: download rest_bytes, compute samples * flops, upload sizes[width]."""
    return {b: client_seconds(state, rest_bytes, sizes[b], samples, 1, flops) for b in widths}


def test_adaptive_policy_by_hand():
    """A slow-computing client keeps 16 bits; a slow uplink is narrowed until its upload stops dominating."""
    sizes = _bytes_by_bits()  # 16 bits: 20,100 B; 4 bits: 5,100 B; 2 bits: 2,600 B
    # A: 10 kB/s up, 4 s of compute: its 16-bit upload (2.01 s) is shorter than the rest (4 s)
    a = _times(LinkState(up_bps=8e4, down_bps=1e9, latency_s=0.0, flops_per_s=1e9), sizes, samples=4, flops=1e9)
    # B: 1 kB/s up, 1 s of compute: 16 bits take 20.1 s; 3 bits 3,850 B = 3.85 s; 2 bits 2.6 s; rest 1 s
    b = _times(LinkState(up_bps=8e3, down_bps=1e9, latency_s=0.0, flops_per_s=1e9), sizes, samples=1, flops=1e9)
    assert own_width(a) == 16  # 2.01 <= 4
    assert own_width(b) == 2  # even 2 bits (2.6 s) dominate its 1 s: the narrowest
    # tau = max(4 + 2.01, 1 + 2.6) = 6.01 s: A is the slowest client and still sends 16 bits
    assert default_budget([a, b]) == pytest.approx(6.01)
    widths, tau = adaptive_plan([a, b])
    assert tau == a[16].total
    # B may use the 6.01 s too: 1 + u <= 6.01 -> u <= 5.01 s -> 5,010 B -> 4 bits (5,100 B) misses, 3 bits fits
    assert widths == [16, 3]
    # the earlier budget, the slowest client's total at 2 bits (4.26 s), pinned A to 2 bits
    assert max(a[2].total, b[2].total) == pytest.approx(4.26)
    assert pick_width(a, 4.26) == 2
    # a deadline replaces the budget; a client that fits no width is a straggler
    assert adaptive_plan([a, b], deadline=3.0) == ([None, None], 3.0)
    # A: 4 + 0.51 s (4 bits) <= 4.6 < 4 + 0.635 s (5 bits); B: 1 + 2.6 s (2 bits) <= 4.6 < 1 + 3.85 s (3 bits)
    assert adaptive_plan([a, b], deadline=4.6) == ([4, 2], 4.6)
    assert adaptive_plan([]) == ([], 0.0)
    with pytest.raises(ValueError):
        default_budget([])


def test_own_width_counts_download_and_latency_as_the_rest():
    sizes = _bytes_by_bits()
    s = LinkState(up_bps=8e4, down_bps=8e4, latency_s=0.5, flops_per_s=1e9)
    c = _times(s, sizes, rest_bytes=10_000)  # download 1 s + latency 0.5 s: 1.5 s of rest
    # widest upload <= 1.5 s: 15,000 B -> 11 bits (13,850 B) fits, 12 bits (15,100 B) does not
    assert own_width(c) == 11


def test_adaptive_widths_ceiling_and_floor():
    assert adaptive_widths(32) == tuple(range(16, 1, -1))  # 32 counts as 16
    assert adaptive_widths(8, 4) == (8, 7, 6, 5, 4)
    assert adaptive_widths(16, 16) == (16,)
    with pytest.raises(ConfigError, match="min_bits=9"):
        adaptive_widths(8, 9)


@settings(max_examples=200, deadline=None)
@given(clients=st.lists(st.tuples(st.floats(1e3, 1e8), st.floats(0, 100), st.floats(0, 1)), min_size=1, max_size=8),
       params=st.integers(1, 10**6), min_bits=st.integers(2, 16))
def test_adaptive_policy_bounds(clients, params, min_bits):
    """tau lies between the narrowest and widest rounds, nobody is dropped, each width is the widest that fits."""
    sizes = _bytes_by_bits(params)
    widths = adaptive_widths(16, min_bits)
    times = [_times(LinkState(up, 1e9, lat, 1e9), sizes, samples=1, flops=compute * 1e9, widths=widths)
             for up, compute, lat in clients]
    picked, tau = adaptive_plan(times)
    lo, hi = min(widths), max(widths)
    assert max(t[lo].total for t in times) <= tau <= max(t[hi].total for t in times)
    rest = [t[lo].download + t[lo].compute + t[lo].latency for t in times]
    assert tau <= max(max(t[lo].total for t in times), 2 * max(rest)) * (1 + 1e-12)
    for t, b, r in zip(times, picked, rest):
        assert b is not None and min_bits <= b <= 16 and b >= own_width(t)
        assert t[b].total <= tau and (b == hi or t[b + 1].total > tau)
        if t[hi].upload <= r:  # an upload that does not dominate is never narrowed
            assert b == hi


# -- secure aggregation on the clock ---------------------------------------------

def test_secagg_round_trips_and_received_bytes_by_hand():
    s = LinkState(up_bps=1e6, down_bps=4e6, latency_s=0.1, flops_per_s=1e9)
    # 9 other clients: 9 keys of 32 B and 18 shares of 71 B come in
    from fl_lib.privacy.secagg import received_bytes
    assert received_bytes(10) == 9 * 32 + 18 * 71 == 1566
    assert received_bytes(1) == 0
    ct = client_seconds(s, download_bytes=500_000, upload_bytes=250_000, num_samples=10, local_epochs=1,
                        flops_per_sample=1e8, round_trips=SECAGG_ROUND_TRIPS)
    # 4e6 bits / 4e6 = 1 s; 1e9 / 1e9 = 1 s; 2e6 bits / 1e6 = 2 s; 4 round trips of 0.1 s
    assert ct == ClientTime(download=1.0, compute=1.0, upload=2.0, latency=0.4, total=4.4)
    assert SECAGG_ROUND_TRIPS == 4


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
