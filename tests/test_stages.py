"""Contract tests of the pipeline's stages and aggregators, each on a few tensors and without a Federation."""
import math

import pytest
import torch

from fl_lib.core.aggregators.base import Aggregator, Received
from fl_lib.core.aggregators.buffer import BufferAggregator
from fl_lib.core.aggregators.mean import MeanAggregator, aggregate
from fl_lib.core.aggregators.median import MedianAggregator, coordinate_median
from fl_lib.core.aggregators.registry import AGGREGATORS, aggregator_class
from fl_lib.core.aggregators.server_sgd import ServerSGD
from fl_lib.core.config import Config
from fl_lib.core.errors import CodecError, ConfigError
from fl_lib.core.stages import CodecTransport, Job, Upload, check_conflicts, weights_to_update
from fl_lib.privacy import dp
from fl_lib.privacy.stages import DPClip, DPMean, DPSecureSum, MaskedValues, SecureSum
from fl_lib.privacy import dp_quant
from fl_lib.core.rng import SERVER, Stream, torch_generator


def states(*rows):
    """One state dict per row: a float 'w' of the row's values and an integer counter 'n'."""
    return [{"w": torch.tensor(r, dtype=torch.float32), "n": torch.tensor(i)} for i, r in enumerate(rows)]


def received(values, weights=None):
    return [Received(k, v, w) for k, (v, w) in enumerate(zip(values, weights or [1] * len(values)))]


GLOBAL = {"w": torch.zeros(3), "n": torch.tensor(7)}


# -- aggregators ------------------------------------------------------------------
def test_mean_is_the_nk_over_n_weighted_mean():
    s = states([0.0, 2.0, 4.0], [4.0, 6.0, 8.0])
    out = MeanAggregator().aggregate(1, GLOBAL, received(s, [1, 3]), [0, 1]).state
    torch.testing.assert_close(out["w"], torch.tensor([3.0, 5.0, 7.0]))
    assert out["n"] == 0  # integer buffers come from the first upload


def test_median_takes_the_middle_value_of_each_coordinate():
    odd = states([0.0, 10.0, 1.0], [1.0, -5.0, 2.0], [100.0, 0.0, 3.0])
    torch.testing.assert_close(coordinate_median(odd)["w"], torch.tensor([1.0, 0.0, 2.0]))
    even = states([0.0, 4.0], [2.0, 8.0], [10.0, 5.0], [3.0, 6.0])
    torch.testing.assert_close(coordinate_median(even)["w"], torch.tensor([2.5, 5.5]))  # the two middle ones


def test_median_ignores_sample_counts_and_one_extreme_client():
    honest = states([1.0, 1.0], [1.1, 0.9], [0.9, 1.1])
    attacker = states([1e6, -1e6])[0]
    out = MedianAggregator().aggregate(1, GLOBAL, received(honest + [attacker], [1, 1, 1, 1000]), []).state
    assert out["w"].abs().max() < 1.2  # the mean would be pulled to about 1e6 by the heavy attacker
    mean = MeanAggregator().aggregate(1, GLOBAL, received(honest + [attacker], [1, 1, 1, 1000]), []).state
    assert mean["w"].abs().max() > 1e5


def test_server_sgd_steps_against_the_aggregated_gradient():
    grads = [{"w": torch.tensor([1.0, 2.0, 3.0])}, {"w": torch.tensor([3.0, 2.0, 1.0])}]  # parameters only
    start = {"w": torch.ones(3), "n": torch.tensor(7)}
    out = ServerSGD(MeanAggregator(), lr=0.5).aggregate(1, start, received(grads, [1, 1]), []).state
    torch.testing.assert_close(out["w"], torch.ones(3) - 0.5 * torch.tensor([2.0, 2.0, 2.0]))
    assert out["n"] == 7  # buffers have no gradient: they stay as they were


@pytest.mark.parametrize("weights", ["uniform", "samples"])
def test_buffer_with_fresh_updates_and_unit_lr_is_the_mean_step(weights):
    deltas = [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 3.0])}]
    agg = BufferAggregator(weights, server_lr=1.0)
    out = agg.aggregate(1, {"w": torch.zeros(2)}, [Received(0, deltas[0], 1), Received(1, deltas[1], 3)], [])
    expect = torch.tensor([0.5, 1.5]) if weights == "uniform" else torch.tensor([0.25, 2.25])
    torch.testing.assert_close(out.state["w"], expect)


def test_buffer_down_weights_a_stale_update_by_one_over_sqrt_one_plus_tau():
    agg = BufferAggregator("uniform", server_lr=2.0)
    out = agg.aggregate(1, {"w": torch.zeros(1)}, [Received(0, {"w": torch.ones(1)}, 5, staleness=3)], [])
    torch.testing.assert_close(out.state["w"], torch.tensor([2.0 / math.sqrt(4.0)]))


# -- client stages and transports -------------------------------------------------
def test_dp_clip_bounds_the_update_norm_and_leaves_small_ones_alone():
    base = {"w": torch.zeros(4), "n": torch.tensor(1)}
    big = {"w": torch.tensor([3.0, 4.0, 0.0, 0.0]), "n": torch.tensor(2)}
    out = DPClip(1.0).client(None, big, base)
    torch.testing.assert_close(out["w"], torch.tensor([0.6, 0.8, 0.0, 0.0]))
    assert out["n"] == 2  # integer buffers pass untouched
    small = {"w": torch.tensor([0.1, 0.0, 0.0, 0.0]), "n": torch.tensor(2)}
    torch.testing.assert_close(DPClip(1.0).client(None, small, base)["w"], small["w"])


@pytest.mark.parametrize("bits", [32, 8])
def test_codec_transport_sends_what_the_server_receives(bits):
    values = {"w": torch.linspace(-1, 1, 12).reshape(3, 4)}
    t = CodecTransport(seed=0, rounding="nearest", device=torch.device("cpu"))
    up = t.send(Job(0, 1, bits), values, Upload(0, bits, 5, 0.1, None, None), None)
    assert up.blob is not None and not up.diverged
    again = t.receive(up, None, torch.device("cpu"))
    torch.testing.assert_close(again["w"], up.received["w"])
    assert (up.error == 0.0) == (bits == 32) and up.error < 0.01
    up.blob = up.blob[:-3]
    with pytest.raises(CodecError):
        t.receive(up, None, torch.device("cpu"))


def test_masked_values_keep_the_plain_values_for_the_secure_sum():
    values = {"w": torch.ones(3)}
    up = MaskedValues().send(Job(0, 1, 8), values, Upload(0, 8, 5, 0.1, None, None), None)
    assert up.blob is None and torch.equal(up.received["w"], values["w"])
    assert up.received["w"].data_ptr() != values["w"].data_ptr()  # a copy: the trainer reuses its model


# -- privacy aggregators ------------------------------------------------------------
def test_dp_mean_is_clipped_sum_plus_noise_over_the_fixed_m():
    start = {"w": torch.zeros(3)}
    ups = [{"w": torch.tensor([3.0, 4.0, 0.0])}, {"w": torch.tensor([0.1, 0.0, 0.0])}]
    agg = DPMean(clip=1.0, noise=0.5, expected_clients=4.0, seed=3, num_params=3)
    out = agg.aggregate(2, start, received(ups), [0, 1]).state
    clipped = [dp.clip_update(weights_to_update(u, start), 1.0)[0] for u in ups]
    step = dp.dp_average(clipped, 0.5, 1.0, 4.0, torch_generator(3, 2, SERVER, Stream.DP_NOISE))
    torch.testing.assert_close(out["w"], step["w"])
    assert agg.steps_when_empty  # a Poisson round that sampled nobody still adds the noise
    empty = agg.aggregate(2, start, [], []).state
    assert not torch.equal(empty["w"], start["w"])


def test_dp_mean_names_the_clients_the_noise_needs_when_runs_diverge():
    cfg = Config(dp_clip=1.0, dp_noise=1.0, num_clients=10, device="cpu")
    cause = DPMean(1.0, 1.0, 10.0, 0, num_params=10_000).divergence_cause(cfg)
    assert f"m >= z sqrt(d) = {dp.clients_needed(1.0, 10_000):,}" in cause
    assert MeanAggregator().divergence_cause(cfg) is None


def test_secure_sum_of_survivors_is_their_weighted_mean_on_the_grid():
    start = {"w": torch.tensor([1.0, -1.0, 0.5, 0.25])}
    ups = [{"w": torch.tensor([0.5, -0.5, 0.2, 0.1])}, {"w": torch.tensor([1.0, -1.0, 0.4, 0.3])},
           {"w": torch.tensor([9.0, 9.0, 9.0, 9.0])}]
    sizes = [1, 3, 2]
    agg = SecureSum(bits=16, seed=0, sizes=sizes, num_params=4)
    survivors = [Received(0, ups[0], 1), Received(1, ups[1], 3)]  # client 2 was sampled but dropped out
    out = agg.aggregate(1, start, survivors, cohort=[0, 1, 2])
    torch.testing.assert_close(out.state["w"], aggregate(ups[:2], [1, 3])["w"], atol=1e-3, rtol=0)
    assert out.upload_bytes > 0 and len(out.errors) == 2


def test_dp_secure_sum_without_noise_is_the_mean_of_clipped_updates():
    start = {"w": torch.zeros(8)}
    ups = [{"w": torch.full((8,), 0.1)}, {"w": torch.full((8,), -0.05)}]
    grid = dp_quant.dp_grid(8, 16, 1.0, "stochastic")
    agg = DPSecureSum(grid, clip=1.0, noise=0.0, expected_clients=2.0, seed=0, num_params=8)
    out = agg.aggregate(1, start, received(ups), cohort=[0, 1]).state
    torch.testing.assert_close(out["w"], torch.full((8,), 0.025), atol=2e-3, rtol=0)


# -- conflicts and the registry -------------------------------------------------------
def test_a_stage_refuses_a_stage_it_declares_it_cannot_work_with():
    with pytest.raises(ConfigError, match="median cannot be combined with secure-sum") as err:
        check_conflicts([MedianAggregator(), SecureSum(8, 0, [1], 1)])
    assert "\n" not in str(err.value)
    check_conflicts([MeanAggregator(), SecureSum(8, 0, [1], 1)])  # no declared conflict: fine


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_every_registered_name_is_an_aggregator_of_that_name(name):
    cls = aggregator_class(name)
    assert issubclass(cls, Aggregator) and cls.name == name
    assert Config(aggregator=name).aggregator == name


def test_config_refuses_an_unregistered_aggregator_naming_the_choices():
    with pytest.raises(ConfigError, match="aggregator") as err:
        Config(aggregator="mode")
    assert "median" in str(err.value) and "mean" in str(err.value)


def test_the_mean_default_keeps_every_stored_runs_cache_key():
    assert Config().key() == Config(aggregator="mean").key()
    assert Config(aggregator="median").key() != Config().key()


@pytest.mark.parametrize("fields,other", [(dict(secure_aggregation=True, bits=8), "secure-sum"),
                                          (dict(secure_aggregation=True, bits=8, dp_clip=1.0), "dp-secure-sum"),
                                          (dict(dp_clip=1.0), "dp-mean"),
                                          (dict(algorithm="fedbuff", link="mobile"), "buffer")])
def test_a_federation_refuses_the_median_with_private_or_buffered_aggregation(tiny, tiny_data, fields, other):
    from fl_lib.simulator.build import check
    from fl_lib.simulator.federation import Federation
    cfg = tiny(aggregator="median", **fields)  # each field is fine on its own: the stages refuse the combination
    with pytest.raises(ConfigError, match=f"^median cannot be combined with {other}: .*aggregator='mean'"):
        check(cfg)
    with pytest.raises(ConfigError, match="median cannot be combined"):
        Federation(cfg, data=tiny_data)


@pytest.mark.parametrize("fields,needle", [
    (dict(dp_clip=1.0, algorithm="fedsgd"), "dp-clip cannot be combined with server-sgd: DP-FedAvg and secure"),
    (dict(secure_aggregation=True, bits=8, algorithm="fedbuff", link="mobile"), "masked-values cannot be combined "
                                                                                "with buffer"),
    (dict(secure_aggregation=True), "secure_aggregation needs every client's integer codes on one grid"),
    (dict(secure_aggregation=True, bits=8, bits_policy="adaptive", link="mobile"), "bits_policy='adaptive'"),
    (dict(secure_aggregation=True, bits=8, upload="delta"), "needs a public bound on the update"),
])
def test_stages_refuse_settings_they_cannot_run_with_in_one_line(tiny, fields, needle):
    from fl_lib.simulator.build import check
    cfg = tiny(**fields)
    with pytest.raises(ConfigError) as err:
        check(cfg)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_median_federation_runs_and_differs_from_the_mean(tiny, tiny_data):
    from fl_lib.simulator.federation import Federation
    rows = {}
    for name in ("mean", "median"):
        fed = Federation(tiny(aggregator=name, num_rounds=2), data=tiny_data)
        rows[name] = [fed.round(t) for t in (1, 2)]
        assert all(r.test_acc is not None for r in rows[name])
    assert rows["mean"][1].test_loss != rows["median"][1].test_loss
