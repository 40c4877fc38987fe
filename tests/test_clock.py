"""The simulated clock in the engine: round times, deadlines, adaptive bit widths and FedBuff."""
import math
import statistics

import pytest
import torch

from fl_lib.core import codec
from fl_lib.core.aggregators.mean import aggregate
from fl_lib.core.config import Config
from fl_lib.core.errors import ConfigError
from fl_lib.simulator.federation import Federation
from fl_lib.core.links import MBIT, staleness_weight, transfer_seconds
from tests.tiny import tiny_config


@pytest.fixture
def data(tiny_data):
    """The session's shared tiny data (conftest.py): read-only."""
    return tiny_data


def tiny(**kw) -> Config:
    """The shared tiny federation, IID with two local epochs and five rounds, on a lognormal link."""
    return tiny_config(**{**dict(partition="iid", local_epochs=2, num_rounds=5, link="lognormal:2,0"), **kw})


def test_round_time_by_hand(data):
    """Identical clients (sigma 0): T = D / down + n E F / speed + U / up + latency, F counted by hand."""
    fed = Federation(tiny(), data=data)
    # 2NN on 28x28: Linear(784, 200) needs no input gradient (4 i o), the others do (6 i o).
    flops = 4 * 784 * 200 + 6 * 200 * 200 + 6 * 200 * 10
    assert fed.flops_per_sample() == flops
    up, down, latency, speed = 2e6, 2e6 * 68.34 / 8.56, 0.031, math.sqrt(15e9 * 30e9)
    state_bytes = len(codec.encode(fed.global_state, bits=32))
    expected = 8 * state_bytes / down + 40 * 2 * flops / speed + 8 * state_bytes / up + latency
    row = fed.round(1)
    assert row["sim_seconds"] == pytest.approx(expected, rel=1e-12)
    assert row["upload_bytes"] == 4 * state_bytes and row["mean_bits"] == 32.0


def test_deadline_drops_exactly_the_late_clients(data):
    cfg = tiny(link="lognormal:2,1.0", num_clients=8, client_fraction=1.0)
    probe = Federation(cfg, data=data)
    totals = {k: probe.client_time(1, k, 32).total for k in range(8)}
    deadline = sorted(totals.values())[4] + 1e-9  # five clients make it, three do not
    fed = Federation(cfg.replace(deadline=deadline), data=data)
    row = fed.round(1)
    late = [k for k, s in totals.items() if s > deadline]
    assert len(late) == 3 and row["dropped_clients"] == 3
    assert row["sim_seconds"] == deadline
    assert row["upload_bytes"] == 5 * fed.upload_size(32)
    # the global model is the n_k/n mean of exactly the clients that made it
    ref = Federation(cfg, data=data)
    states, weights = [], []
    for k in sorted(set(range(8)) - set(late)):
        sent, _ = ref.local_update(k, 1)
        states.append({n: v.clone() for n, v in sent.items()})
        weights.append(ref.sizes[k])
    expected = aggregate(states, weights)
    for name in expected:
        torch.testing.assert_close(fed.global_state[name], expected[name], rtol=0, atol=0)


def test_without_a_link_there_is_no_clock_and_nothing_is_dropped(data):
    row = Federation(tiny(link="none"), data=data).round(1)
    assert row["sim_seconds"] is None and row["dropped_clients"] == 0 and row["mean_bits"] == 32.0


def own_width_by_hand(fed, t, k, widths=range(16, 1, -1)):
    """The widest width whose upload U(b) / up_k is no longer than the client's download + compute + latency."""
    c = fed.client_time(t, k, 16)
    rest = c.download + c.compute + c.latency
    up = fed.links.state(t, k).up_bps
    return next((b for b in widths if 8 * fed.upload_size(b) / up <= rest), min(widths))


@pytest.mark.parametrize("with_deadline", [False, True])
def test_adaptive_widths_always_fit_the_budget(data, with_deadline):
    cfg = tiny(link="lognormal:0.5,0.3", num_clients=8, bits_policy="adaptive")
    probe = Federation(cfg, data=data)
    deadline = 1.05 * statistics.median(probe.client_time(1, k, 16).total for k in range(8)) if with_deadline else 0.0
    fed = Federation(cfg.replace(deadline=deadline), data=data)
    seen = set()
    for t in range(1, 30):
        chosen = fed.sample_clients(t)
        bits, duration, kept = fed.plan(t, chosen)
        budget = deadline or max(fed.client_time(t, k, own_width_by_hand(fed, t, k)).total for k in chosen)
        for k, keep in zip(chosen, kept):
            if bits[k] is None:
                assert not keep  # a straggler: not even 2 bits fits
                assert fed.client_time(t, k, 2).total > budget
                continue
            assert keep and 2 <= bits[k] <= 16
            assert fed.client_time(t, k, bits[k]).total <= budget  # never a width that misses
            if bits[k] < 16:
                assert fed.client_time(t, k, bits[k] + 1).total > budget  # and the widest that fits
            seen.add(bits[k])
        assert duration <= budget + 1e-12
    assert len(seen) >= 2  # the links really spread the widths


def test_mixed_widths_in_one_round_decode_and_aggregate(data):
    cfg = tiny(link="lognormal:0.5,0.3", num_clients=8, bits_policy="adaptive", upload="delta")
    fed = Federation(cfg, data=data)
    start = {n: v.clone() for n, v in fed.global_state.items()}
    bits, _, kept = fed.plan(1, fed.sample_clients(1))
    widths = {bits[k] for k, keep in zip(fed.sample_clients(1), kept) if keep}
    assert len(widths) >= 2  # mixed
    row = fed.round(1)
    ref = Federation(cfg, data=data)
    states, weights, total = [], [], 0
    for k, keep in zip(ref.sample_clients(1), kept):
        if not keep:
            continue
        sent, _ = ref.local_update(k, 1)
        blob = codec.encode(sent, bits=bits[k], reference=start, generator=None)
        total += len(blob)
        states.append(codec.decode(blob, reference=start))
        weights.append(ref.sizes[k])
    assert row["upload_bytes"] == total
    assert row["mean_bits"] == pytest.approx(sum(bits[k] for k, keep in zip(ref.sample_clients(1), kept) if keep)
                                             / len(states))
    expected = aggregate(states, weights)
    for name in expected:
        torch.testing.assert_close(fed.global_state[name], expected[name], rtol=0, atol=0)


def test_fedbuff_with_zero_staleness_equals_synchronous_fedavg(data):
    """buffer_size = clients per round, identical clients: every update is one FedAvg round."""
    sync = Federation(tiny(), data=data)
    fedbuff = Federation(tiny(algorithm="fedbuff"), data=data)
    for t in (1, 2, 3):
        a, b = sync.round(t), fedbuff.round(t)
        assert b["mean_staleness"] == 0.0
        assert b["sim_seconds"] == pytest.approx(a["sim_seconds"], rel=1e-12)
        assert (a["upload_bytes"], a["download_bytes"]) == (b["upload_bytes"], b["download_bytes"])
        for name in sync.global_state:
            torch.testing.assert_close(fedbuff.global_state[name], sync.global_state[name], rtol=1e-5, atol=1e-6)


def test_fedbuff_staleness_weights_by_hand(data):
    """buffer_size 1: each arrival moves w by n s(tau) delta / n = s(tau) delta, tau = updates since download."""
    fed = Federation(tiny(algorithm="fedbuff", buffer_size=1, link="lognormal:2,1.5"), data=data)
    server = fed.fedbuff
    assert staleness_weight(0) == 1.0 and staleness_weight(1) == pytest.approx(1 / math.sqrt(2))
    assert staleness_weight(3) == pytest.approx(0.5)
    seen, real = [], server._update

    def check(t):  # the buffer and model just before update t, then the update itself
        (job,) = server.buffer
        tau = server.version - job["version"]
        before = {n: v.clone() for n, v in fed.global_state.items()}
        row = real(t)
        assert row["mean_staleness"] == tau
        for name, d in job["delta"].items():
            torch.testing.assert_close(fed.global_state[name], before[name] + d * staleness_weight(tau))
        seen.append(tau)
        return row
    server._update = check
    for t in range(1, 13):
        fed.round(t)
    assert len(seen) == 12
    assert max(seen) >= 1  # some updates really were stale


def test_fedbuff_time_moves_forward_and_counts_traffic(data):
    fed = Federation(tiny(algorithm="fedbuff", buffer_size=2, link="lognormal:2,1.0"), data=data)
    rows = [fed.round(t) for t in range(1, 6)]
    assert all(r["sim_seconds"] >= 0 for r in rows)
    assert all(r["upload_bytes"] == 2 * fed.upload_size(32) for r in rows)
    assert sum(r["download_bytes"] for r in rows) >= fed.model_bytes * (4 + 2 * 4)  # the start, then restarts
    assert transfer_seconds(MBIT / 8, MBIT) == 1.0


def test_runs_with_a_clock_are_deterministic(data):
    cfg = tiny(link="mobile", bits_policy="adaptive", num_clients=4)
    a = [Federation(cfg, data=data).round(1).as_dict() for _ in range(2)]
    assert a[0] == a[1]


def test_replay_clock_equals_the_clock_of_a_real_run(data):
    from fl_lib.simulator.federation import replay_clock

    cfg = tiny(link="none", client_fraction=0.5, bits=8, num_rounds=3)
    fed = Federation(cfg.replace(link="mobile"), data=data)
    real = [fed.round(t)["sim_seconds"] for t in (1, 2, 3)]
    assert replay_clock(cfg, "mobile", data=data) == real
    with pytest.raises(Exception, match="bits_policy='fixed'"):
        replay_clock(cfg.replace(link="mobile", deadline=1.0), "mobile", data=data)


def test_adaptive_without_a_deadline_keeps_every_client(data):
    """The budget is the slowest client's own time at 2 bits: it always fits, to the last float."""
    fed = Federation(tiny(link="mobile", num_clients=8, bits_policy="adaptive"), data=data)
    for t in range(1, 40):
        chosen = fed.sample_clients(t)
        bits, _, kept = fed.plan(t, chosen)
        assert all(kept) and None not in bits.values()


# -- the adaptive policy's budget and min_bits ----------------------------------------------

@pytest.mark.parametrize("link,expected", [("lognormal:200,0", 16), ("lognormal:2,0", None)])
def test_identical_clients_keep_the_width_whose_upload_does_not_dominate(data, link, expected):
    """Identical clients are all the slowest: the old budget (time at 2 bits) pinned all of them to 2 bits.

    On a fast link the 2NN's 16-bit upload is shorter than download + latency, so all send 16 bits;
    on a slow one each is narrowed to the widest width whose upload is no longer than the rest.
    """
    fed = Federation(tiny(link=link, bits_policy="adaptive"), data=data)
    for t in (1, 2):
        chosen = fed.sample_clients(t)
        bits, duration, kept = fed.plan(t, chosen)
        want = expected or own_width_by_hand(fed, t, chosen[0])
        assert 2 < want and all(kept) and set(bits.values()) == {want}
        assert duration == pytest.approx(fed.client_time(t, chosen[0], want).total, rel=1e-12)
    if expected is None:  # the width where the upload stops dominating, by hand
        c, up = fed.client_time(1, 0, 16), fed.links.state(1, 0).up_bps
        rest = c.download + c.compute + c.latency
        assert 8 * fed.upload_size(want) / up <= rest < 8 * fed.upload_size(want + 1) / up


def test_min_bits_is_honoured(data):
    """Identical clients on a slow link all get the width where their upload stops dominating (3 bits here);
    min_bits=6 lifts every one of them to 6, bits=10 caps the widths, and with a deadline a client that
    cannot send min_bits in time is dropped rather than sent narrower."""
    cfg = tiny(link="lognormal:0.05,0", num_clients=8, bits_policy="adaptive")
    free, floored = Federation(cfg, data=data), Federation(cfg.replace(min_bits=6), data=data)
    for t in range(1, 6):
        chosen = free.sample_clients(t)
        assert set(free.plan(t, chosen)[0].values()) == {own_width_by_hand(free, t, chosen[0])} == {3}
        bits, duration, kept = floored.plan(t, chosen)
        assert all(kept) and set(bits.values()) == {6}
        assert duration == pytest.approx(floored.client_time(t, chosen[0], 6).total, rel=1e-12)
    fast = cfg.replace(link="lognormal:200,0")  # 16 bits without a cap (see the test above)
    capped = Federation(fast.replace(bits=10, min_bits=4), data=data)
    assert {b for t in range(1, 4) for b in capped.plan(t, capped.sample_clients(t))[0].values()} == {10}
    # a deadline between a client's time at 2 and at 6 bits: dropped with min_bits=6, kept at 2..5 without
    t, k = 1, free.sample_clients(1)[0]
    d = (free.client_time(t, k, 2).total + free.client_time(t, k, 6).total) / 2
    chosen = free.sample_clients(t)
    with_floor = Federation(cfg.replace(min_bits=6, deadline=d), data=data).plan(t, chosen)
    without = Federation(cfg.replace(deadline=d), data=data).plan(t, chosen)
    assert with_floor[0][k] is None and not with_floor[2][0]
    assert 2 <= without[0][k] < 6 and without[2][0]


@pytest.mark.parametrize("fields", [dict(bits_policy="adaptive", bits=4, min_bits=5),
                                    dict(bits_policy="fixed", min_bits=4)])
def test_min_bits_bad_combinations_are_one_line(fields):
    with pytest.raises(ConfigError) as e:
        tiny(**fields)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"min_bits={fields['min_bits']}")


def test_fedbuff_uses_the_same_adaptive_rule(data):
    """FedBuff's job width is links.adaptive_plan's width over every client at that round's links."""
    from fl_lib.core.links import adaptive_plan, adaptive_widths

    cfg = tiny(algorithm="fedbuff", link="lognormal:0.5,0.3", num_clients=6, bits_policy="adaptive", min_bits=3)
    fed = Federation(cfg, data=data)
    widths = adaptive_widths(cfg.bits, cfg.min_bits)
    for t in (1, 2, 3):
        expected, _ = adaptive_plan([{b: fed.client_time(t, c, b) for b in widths} for c in range(6)])
        assert [fed.clock.job_width(t, c) for c in range(6)] == expected
        assert min(expected) >= 3


# -- secure aggregation on the clock -------------------------------------------------------

@pytest.mark.parametrize("dp", [False, True])
def test_clock_charges_masked_bytes_and_the_protocols_round_trips(data, dp):
    """Identical clients: T = (D + (n-1)(32 + 2*71)) / down + n E F / speed + M / up + 4 latency, M by hand."""
    extra = dict(dp_clip=1.0) if dp else {}
    fed = Federation(tiny(bits=8, secure_aggregation=True, **extra), data=data)
    n = 4
    assert fed.sample_clients(1) == [0, 1, 2, 3] and fed.sizes == [40] * 4
    state = fed.links.state(1, 0)
    num_params = sum(v.numel() for v in fed.global_state.values() if v.is_floating_point())
    # weights: n_k / gcd = 1 each (equal n_k), or uniform under DP: W = 4 either way; the masked
    # values are uniform mod 2^k with k = bit_length(W * q_max) + 1 = bit_length(4 * 127) + 1 = 10
    k = (4 * 127).bit_length() + 1
    assert k == 10
    # the masked vector: the values and the weight, or under DP (dp_quant.py) the rotated update padded
    # to a power of two, without a weight
    values = 2 ** math.ceil(math.log2(num_params)) if dp else num_params + 1
    masked = math.ceil(values * k / 8) + 32 + 2 * (n - 1) * 71 + n * 71  # vector + key + shares out
    received = (n - 1) * (32 + 2 * 71)  # the others' keys and the shares addressed to it
    compute = 40 * 2 * fed.flops_per_sample() / state.flops_per_s
    expected = (8 * (fed.model_bytes + received) / state.down_bps + compute + 8 * masked / state.up_bps
                + 4 * state.latency_s)
    c = fed.client_time(1, 0, 8)
    assert c.latency == 4 * state.latency_s and c.upload == pytest.approx(8 * masked / state.up_bps, rel=1e-12)
    assert c.total == pytest.approx(expected, rel=1e-12)
    plain = Federation(tiny(bits=8, **extra), data=data).client_time(1, 0, 8)
    assert c.total > plain.total and plain.latency == state.latency_s
    row = fed.round(1)
    assert row["sim_seconds"] == pytest.approx(expected, rel=1e-12)
    assert row["upload_bytes"] == n * masked  # the clock charges what the metrics report
