"""Contract tests of the robust aggregators (trimmed mean, cosine, soft clip), with Flower as the oracle where
it ships the same rule, plus one short Federation run each on the tiny fixture."""
import math

import numpy as np
import pytest
import torch

from fl_lib.core.aggregators.base import Received
from fl_lib.core.aggregators.cosine import CosineAggregator, cosine_weights, flat_updates
from fl_lib.core.aggregators.mean import MeanAggregator
from fl_lib.core.aggregators.median import MedianAggregator
from fl_lib.core.aggregators.registry import aggregator_class
from fl_lib.core.aggregators.soft_clip import SoftClipAggregator, middle, soft_clip_weights
from fl_lib.core.aggregators.trimmed_mean import TrimmedMeanAggregator
from fl_lib.core.config import Config
from fl_lib.core.errors import ConfigError

ROBUST = ("trimmed_mean", "cosine", "soft_clip")


def received(values, weights=None):
    return [Received(k, v, w) for k, (v, w) in enumerate(zip(values, weights or [1] * len(values)))]


def random_models(n, seed=0):
    """n state dicts of a 2-layer shape (float weight and bias) and an integer counter, as numpy and torch."""
    rng = np.random.default_rng(seed)
    layers = [[rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]
              for _ in range(n)]
    states = [{"w": torch.from_numpy(w.copy()), "b": torch.from_numpy(b.copy()), "n": torch.tensor(k)}
              for k, (w, b) in enumerate(layers)]
    return layers, states


def around(global_state, updates, weights=None):
    """Uploads w_k = w_global + Delta_k for the rows Delta_k of `updates` (a single float tensor 'w')."""
    return received([{"w": global_state["w"] + u, "n": torch.tensor(k)} for k, u in enumerate(updates)], weights)


ZERO = {"w": torch.zeros(8), "n": torch.tensor(7)}


# -- trimmed mean and median against Flower ---------------------------------------------
@pytest.mark.parametrize("n,beta", [(5, 0.1), (5, 0.2), (5, 0.35), (7, 0.3), (9, 0.4),  # 1.75, 3.6: floor, not round
                                    (10, 0.25), (10, 0.45), (4, 0.0)])
def test_trimmed_mean_matches_flowers_trimmed_average(n, beta):
    legacy = pytest.importorskip("flwr.server.strategy.aggregate")
    current = pytest.importorskip("flwr.serverapp.strategy.fedtrimmedavg")
    layers, states = random_models(n, seed=n)
    sizes = list(range(1, n + 1))  # Flower ignores them, and so must we
    out = TrimmedMeanAggregator(beta).aggregate(1, {}, received(states, sizes), []).state
    expected = legacy.aggregate_trimmed_avg(list(zip(layers, sizes)), beta)
    for name, flower in zip(("w", "b"), expected):
        np.testing.assert_allclose(out[name].numpy(), flower, rtol=1e-6, atol=1e-7)
        stacked = np.stack([layer[("w", "b").index(name)] for layer in layers])
        np.testing.assert_allclose(out[name].numpy(), current.trim_mean(stacked, beta), rtol=1e-6, atol=1e-7)
    assert out["n"] == 0  # integer buffers come from the first upload


@pytest.mark.parametrize("n", [1, 4, 5])
def test_median_matches_flowers_median(n):
    legacy = pytest.importorskip("flwr.server.strategy.aggregate")
    layers, states = random_models(n, seed=10 + n)
    out = MedianAggregator().aggregate(1, {}, received(states, [3] * n), []).state
    for name, flower in zip(("w", "b"), legacy.aggregate_median([(layer, 3) for layer in layers])):
        np.testing.assert_allclose(out[name].numpy(), flower, rtol=1e-6, atol=1e-7)


def test_trimmed_mean_that_trims_nothing_is_the_unweighted_mean():
    _, states = random_models(4, seed=3)
    out = TrimmedMeanAggregator(0.1).aggregate(1, {}, received(states, [1, 2, 3, 50]), []).state  # int(0.4) = 0
    torch.testing.assert_close(out["w"], torch.stack([s["w"] for s in states]).mean(dim=0))
    weighted = MeanAggregator().aggregate(1, {}, received(states, [1, 2, 3, 50]), []).state
    assert not torch.allclose(out["w"], weighted["w"])  # one client, one vote: n_k is ignored


def test_trimmed_mean_drops_the_extreme_values_of_each_coordinate():
    honest = [{"w": torch.tensor([1.0, 2.0]) + 0.1 * k} for k in range(4)]
    attacker = {"w": torch.tensor([1e6, -1e6])}
    out = TrimmedMeanAggregator(0.2).aggregate(1, {}, received(honest + [attacker]), []).state  # drops 1 each side
    torch.testing.assert_close(out["w"], torch.tensor([1.2, 2.1]))  # the mean of the 3 middle values


@pytest.mark.parametrize("beta", [0.5, -0.1, 0.7])
def test_trimmed_mean_refuses_a_fraction_that_leaves_nothing_in_one_line(beta):
    with pytest.raises(ConfigError, match="trim_fraction") as err:
        TrimmedMeanAggregator(beta)
    assert "\n" not in str(err.value) and "0.5" in str(err.value)


# -- cosine -------------------------------------------------------------------------------
def test_cosine_weights_do_not_change_when_every_update_is_scaled_by_one_positive_constant():
    updates = torch.randn(5, 40, generator=torch.Generator().manual_seed(0))
    sizes = [10, 20, 5, 40, 25]
    a = cosine_weights(updates, sizes, temperature=0.5)
    torch.testing.assert_close(cosine_weights(3.7 * updates, sizes, 0.5), a)
    torch.testing.assert_close(cosine_weights(1e-3 * updates, sizes, 0.5), a)
    assert a.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert not torch.allclose(a, torch.tensor(sizes, dtype=torch.float64) / 100)  # they do differ from n_k/n


def test_cosine_scaling_the_updates_scales_the_step():
    start = {"w": torch.linspace(-1, 1, 8), "n": torch.tensor(7)}
    updates = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    agg = CosineAggregator(1.0)
    step = agg.aggregate(1, start, around(start, updates, [1, 2, 3, 4]), []).state["w"] - start["w"]
    bigger = agg.aggregate(1, start, around(start, 5 * updates, [1, 2, 3, 4]), []).state["w"] - start["w"]
    torch.testing.assert_close(bigger, 5 * step, rtol=1e-5, atol=1e-6)


def test_cosine_gives_fedavgs_weights_and_mean_when_all_updates_point_the_same_way():
    direction = torch.randn(8, generator=torch.Generator().manual_seed(2))
    updates = torch.stack([s * direction for s in (0.5, 1.0, 2.0, 4.0)])
    sizes = [3, 1, 4, 2]
    torch.testing.assert_close(cosine_weights(updates, sizes, 0.1), torch.tensor(sizes, dtype=torch.float64) / 10)
    ups = around(ZERO, updates, sizes)
    out = CosineAggregator(0.1).aggregate(1, ZERO, ups, []).state
    torch.testing.assert_close(out["w"], MeanAggregator().aggregate(1, ZERO, ups, []).state["w"])
    assert out["n"] == 0


def test_cosine_down_weights_an_update_against_the_others_and_temperature_sets_how_much():
    updates = torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.9, 0.0], [-1.0, 0.0]])
    sizes = [1, 1, 1, 1]
    for t in (0.1, 1.0, 10.0):
        a = cosine_weights(updates, sizes, t)
        assert a[3] < 0.25 < a[2]  # the opposed update weighs less than n_k/n, the aligned ones more
    assert cosine_weights(updates, sizes, 0.1)[3] < cosine_weights(updates, sizes, 1.0)[3]  # colder: less weight
    torch.testing.assert_close(cosine_weights(updates, sizes, 1e3), torch.full((4,), 0.25, dtype=torch.float64),
                               atol=1e-3, rtol=0)  # hot: FedAvg's n_k/n


def test_cosine_takes_a_zero_update_as_orthogonal_and_all_zero_updates_as_fedavg():
    updates = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    a = cosine_weights(updates, [1, 1, 1], 1.0)
    assert torch.isfinite(a).all()
    assert a[2].item() == pytest.approx(1 / (2 * math.e + 1))  # c = 0 next to two c = 1
    zeros = cosine_weights(torch.zeros(3, 2), [1, 2, 1], 1.0)  # r = 0 too: every c_k = 0
    torch.testing.assert_close(zeros, torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64))


def test_cosine_and_soft_clip_under_fedsgd_weigh_the_uploaded_gradients_themselves(tiny):
    far = {"w": torch.full((2,), 1e4)}  # a global model far from the gradients must not matter
    grads = received([{"w": torch.tensor(g)} for g in ([1.0, 0.0], [0.0, 1.0], [1.0, 1.0])])
    stacked = torch.stack([r.values["w"] for r in grads])
    for name, rule in (("cosine", lambda u: cosine_weights(u, [1, 1, 1], 1.0)),
                       ("soft_clip", lambda u: soft_clip_weights(u, [1, 1, 1], 2.0))):
        agg = aggregator_class(name).from_config(tiny(aggregator=name, algorithm="fedsgd"))
        assert agg.gradients
        torch.testing.assert_close(agg.weights(far, grads), rule(stacked))
        torch.testing.assert_close(flat_updates(far, grads, gradients=True), stacked)


# -- soft clip ----------------------------------------------------------------------------
def test_soft_clip_is_the_mean_when_no_update_is_an_outlier():
    gen = torch.Generator().manual_seed(3)
    common = torch.randn(200, generator=gen)
    updates = common + 0.01 * torch.randn(6, 200, generator=gen)  # alike, with 200 coordinates of small noise
    sizes = [5, 1, 3, 8, 2, 4]
    torch.testing.assert_close(soft_clip_weights(updates, sizes, 2.0), torch.tensor(sizes, dtype=torch.float64) / 23)
    start = {"w": torch.zeros(200), "n": torch.tensor(7)}
    ups = around(start, updates, sizes)
    out = SoftClipAggregator(2.0).aggregate(1, start, ups, []).state
    torch.testing.assert_close(out["w"], MeanAggregator().aggregate(1, start, ups, []).state["w"])
    same = soft_clip_weights(torch.ones(3, 5), [1, 2, 1], 2.0)  # every d_k = 0: the n_k/n mean, no 0/0
    torch.testing.assert_close(same, torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64))


def test_soft_clip_gently_ignores_one_far_outlier_however_far():
    gen = torch.Generator().manual_seed(4)
    honest = 1.0 + 0.1 * torch.randn(4, 8, generator=gen)
    sizes = [1, 1, 1, 1, 4]  # the outlier even claims as much data as the others together
    results = []
    for scale in (1e3, 1e9):
        updates = torch.cat([honest, torch.full((1, 8), scale)])
        ups = around(ZERO, updates, sizes)
        out = SoftClipAggregator(2.0).aggregate(1, ZERO, ups, []).state["w"]
        assert torch.linalg.vector_norm(out - honest.mean(dim=0)) < 1.0  # the pull is bounded by the threshold s
        a = soft_clip_weights(updates, sizes, 2.0)
        assert 0 < a[4] < 1e-2 and torch.all(a[:4] > 0.2)  # down-weighted, not dropped
        mean = MeanAggregator().aggregate(1, ZERO, ups, []).state["w"]
        assert (mean - honest.mean(dim=0)).abs().min() > scale / 10  # the mean follows the outlier
        results.append(out)
    torch.testing.assert_close(results[0], results[1], atol=1e-2, rtol=0)  # a million times further: same pull


def test_soft_clip_threshold_is_the_multiple_of_the_median_distance_to_the_median_update():
    updates = torch.tensor([[0.0], [1.0], [2.0], [10.0]])  # median update 1.5; distances 1.5, 0.5, 0.5, 8.5
    torch.testing.assert_close(middle(updates), torch.tensor([1.5]))
    a = soft_clip_weights(updates, [1, 1, 1, 1], 1.0)  # s = 1 * median(1.5, 0.5, 0.5, 8.5) = 1.0
    raw = torch.tensor([1.0 / 1.5, 1.0, 1.0, 1.0 / 8.5], dtype=torch.float64)
    torch.testing.assert_close(a, raw / raw.sum())


# -- settings, refusals and the registry ------------------------------------------------------
@pytest.mark.parametrize("name,field,value,default,attr", [("trimmed_mean", "trim_fraction", 0.2, 0.1, "beta"),
                                                           ("cosine", "cosine_temperature", 0.5, 1.0, "temperature"),
                                                           ("soft_clip", "soft_clip", 3.0, 2.0, "soft_clip")])
def test_each_setting_is_read_by_its_aggregator_and_refused_without_it(tiny, name, field, value, default, attr):
    from fl_lib.simulator.build import check
    cfg = tiny(aggregator=name, **{field: value})
    check(cfg)  # its own aggregator takes it
    agg = aggregator_class(name).from_config(cfg)
    assert getattr(agg, attr) == value and getattr(aggregator_class(name).from_config(tiny()), attr) == default
    for other in ("mean", "median", *(n for n in ROBUST if n != name)):
        with pytest.raises(ConfigError) as err:
            check(tiny(aggregator=other, **{field: value}))
        assert str(err.value) == (f"{field}={value!r} applies to aggregator='{name}' only: leave it at {default!r}")


@pytest.mark.parametrize("name", ROBUST)
@pytest.mark.parametrize("fields,other", [(dict(secure_aggregation=True, bits=8), "secure-sum"),
                                          (dict(secure_aggregation=True, bits=8, dp_clip=1.0), "dp-secure-sum"),
                                          (dict(dp_clip=1.0), "dp-mean"),
                                          (dict(algorithm="fedbuff", link="mobile"), "buffer")])
def test_robust_aggregators_refuse_private_or_buffered_aggregation_in_one_line(tiny, name, fields, other):
    from fl_lib.simulator.build import check
    with pytest.raises(ConfigError, match=f"^{name} cannot be combined with {other}: .*aggregator='mean'") as err:
        check(tiny(aggregator=name, **fields))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ROBUST)
def test_a_robust_name_is_a_config_choice_and_changes_the_cache_key(name):
    assert aggregator_class(name).name == name
    assert Config(aggregator=name).key() != Config().key()


# -- a short federation each ------------------------------------------------------------------
@pytest.fixture(scope="module")
def mean_rows(tiny_data):
    from fl_lib.simulator.federation import Federation
    from tests.tiny import tiny_config
    fed = Federation(tiny_config(num_rounds=2), data=tiny_data)
    return [fed.round(t) for t in (1, 2)]


@pytest.mark.parametrize("name,fields", [("trimmed_mean", {}), ("trimmed_mean", dict(trim_fraction=0.25)),
                                         ("cosine", {}), ("soft_clip", dict(soft_clip=0.5))])
def test_a_robust_federation_runs_two_rounds_and_differs_from_the_mean(tiny, tiny_data, mean_rows, name, fields):
    from fl_lib.simulator.federation import Federation
    fed = Federation(tiny(aggregator=name, num_rounds=2, **fields), data=tiny_data)
    rows = [fed.round(t) for t in (1, 2)]
    assert all(r.test_acc is not None and math.isfinite(r.test_loss) for r in rows)
    assert rows[1].test_loss != mean_rows[1].test_loss


def test_a_cosine_fedsgd_federation_weighs_gradients_and_differs_from_fedsgds_mean(tiny, tiny_data):
    from fl_lib.simulator.federation import Federation
    losses = {}
    for name in ("mean", "cosine"):
        fed = Federation(tiny(aggregator=name, algorithm="fedsgd", num_rounds=2), data=tiny_data)
        rows = [fed.round(t) for t in (1, 2)]
        assert all(math.isfinite(r.test_loss) for r in rows)
        losses[name] = rows[1].test_loss
    assert losses["cosine"] != losses["mean"]
