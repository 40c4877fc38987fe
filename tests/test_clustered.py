"""Clustered FL (Sattler et al. 2020): the split criterion and bipartition on hand-made updates, the label-swapped
population, and small runs that must find the two groups, beat one global model, and repeat exactly."""
import itertools

import numpy as np
import pytest
import torch

from fl_lib.core.clustering import (bipartition, cosine_similarities, max_cross_similarity, max_update_norm,
                                    mean_update_norm, same_partition, should_split)
from fl_lib.core.config import RULES, Config
from fl_lib.core.errors import ConfigError
from fl_lib.core.label_swap import client_groups, group_permutation, group_test_labels, swap_labels
from fl_lib.simulator.clustered import ClusteredFederation, check_clustered, run_clustered
from tests.tiny import tiny_config, tiny_data

# Six clients, two alternating groups, IID data: the labelling is the only thing that tells the groups apart.
# eps_1 and eps_2 sit between the whole population's norms and those of one group (measured on this setup:
# mean ~0.09 and max ~0.2 together; ~0.13 and ~0.2 within a group), so exactly one split is expected.
CFL = dict(num_clients=6, partition="iid", num_rounds=30, cfl_eps1=0.11, cfl_eps2=0.18, cfl_min_rounds=3)


def two_opposed_groups():
    """Three updates along +v and three along -v (different lengths), interleaved: clients 0, 2, 4 against 1, 3, 5."""
    v = torch.tensor([1.0, 2.0, -1.0, 0.5])
    scale = torch.tensor([1.0, -2.0, 2.0, -1.0, 3.0, -3.0])
    return scale[:, None] * v


def test_opposed_groups_are_split_into_exactly_those_groups():
    U = two_opposed_groups()
    S = cosine_similarities(U)
    assert torch.allclose(S, torch.sign(torch.outer(U[:, 0], U[:, 0])), atol=1e-6)  # +1 within, -1 across
    part_a, part_b = bipartition(S)
    assert (part_a, part_b) == ([0, 2, 4], [1, 3, 5])
    assert max_cross_similarity(S, part_a, part_b) == pytest.approx(-1.0)
    assert bipartition(S, linkage="complete") == (part_a, part_b)


def test_split_criterion_needs_a_small_mean_and_a_large_single_update():
    U, sizes = two_opposed_groups(), [1] * 6
    v = float(torch.linalg.vector_norm(U[0]))
    assert mean_update_norm(U, sizes) == pytest.approx(0.0, abs=1e-6)  # +1-2+2-1+3-3 = 0: the groups cancel
    assert max_update_norm(U) == pytest.approx(3 * v)
    assert should_split(U, sizes, eps1=0.1, eps2=2 * v)
    assert not should_split(U, sizes, eps1=0.1, eps2=4 * v)  # no update large enough
    assert not should_split(U[[0, 2, 4]], [1, 1, 1], eps1=0.1, eps2=v)  # one group: its mean is large
    assert not should_split(U[:1], [1], eps1=1e9, eps2=0.0)  # one client is never split
    # weights n_k: the mean is FedAvg's, so unequal data sizes move it off zero
    assert mean_update_norm(U, [2, 1, 1, 1, 1, 1]) == pytest.approx(v / 7, rel=1e-5)


def test_bipartition_is_the_papers_optimum_by_brute_force():
    """argmin over all bipartitions of the largest cross similarity (Algorithm 1), checked on random updates."""
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        S = cosine_similarities(torch.randn(7, 5, generator=g))
        a, b = bipartition(S)
        best = min(max_cross_similarity(S, part, [j for j in range(7) if j not in part])
                   for r in range(1, 7) for part in itertools.combinations(range(7), r))
        assert sorted(a + b) == list(range(7)) and a and b and 0 in a
        assert max_cross_similarity(S, a, b) == pytest.approx(best)


def test_bipartition_of_identical_or_zero_updates_still_gives_two_parts():
    for U in (torch.zeros(4, 3), torch.ones(4, 3)):
        a, b = bipartition(cosine_similarities(U))
        assert a and b and sorted(a + b) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="linkage='average'"):
        bipartition(torch.eye(3), linkage="average")


def test_same_partition_ignores_ids_but_not_mixing():
    assert same_partition([3, 1, 3, 1], [0, 1, 0, 1])
    assert not same_partition([0, 0, 0, 0], [0, 1, 0, 1])
    assert not same_partition([0, 1, 2, 1], [0, 1, 0, 1])  # group 0 split over two clusters
    assert not same_partition([0, 1, 1, 1], [0, 1, 0, 1])


def test_label_swap_relabels_only_the_swapped_groups_training_data():
    data = tiny_data()
    assert group_permutation(1, 10).tolist() == [1, 0, 3, 2, 5, 4, 7, 6, 9, 8]
    assert group_permutation(0, 10).tolist() == list(range(10))
    clients = [torch.arange(0, 80), torch.arange(80, 160)]
    groups = client_groups(2, 2)
    swapped = swap_labels(data, clients, groups)
    assert torch.equal(swapped.y_train[:80], data.y_train[:80])
    assert torch.equal(swapped.y_train[80:], data.y_train[80:] ^ 1)
    assert swapped.x_train is data.x_train  # images shared, not copied
    assert torch.equal(group_test_labels(data, 1), data.y_test ^ 1)
    with pytest.raises(ConfigError, match="y XOR 2") as err:
        group_permutation(2, 10)  # 8 XOR 2 = 10 is not a class
    assert "\n" not in str(err.value)


def test_evaluate_on_given_labels_matches_the_default(tiny):
    fed = ClusteredFederation(tiny(**CFL), tiny_data(320, 200))
    state = fed.clusters[0].state
    assert fed.trainer.evaluate(state, fed.data.y_test) == fed.trainer.evaluate(state)
    acc_swapped, _ = fed.trainer.evaluate(state, fed.test_labels[1])
    assert acc_swapped != fed.trainer.evaluate(state)[0]


@pytest.fixture(scope="module")
def runs():
    """The clustered run and FedAvg on the same population (cfl_eps1 = 0 never splits)."""
    data = tiny_data(320, 200)
    cfg = tiny_config(**CFL)
    return data, run_clustered(cfg, data), run_clustered(cfg.replace(cfl_eps1=0.0), data)


def test_cfl_finds_the_two_groups_and_beats_one_global_model(runs):
    _, cfl, fedavg = runs
    assert cfl.groups == [0, 1, 0, 1, 0, 1]
    assert same_partition(cfl.assignments[-1], cfl.groups)
    assert cfl.metrics.num_clusters.iloc[-1] == 2 and cfl.metrics.splits.sum() == 1
    first_split = int(cfl.metrics["round"][cfl.metrics.splits > 0].iloc[0])
    assert CFL["cfl_min_rounds"] < first_split <= 20
    assert (fedavg.metrics.num_clusters == 1).all() and (fedavg.assignments == 0).all()
    # identical up to the split: the same seeded draws from the same model
    before = slice(0, first_split - 1)
    assert cfl.metrics.test_acc.iloc[before].tolist() == fedavg.metrics.test_acc.iloc[before].tolist()
    assert cfl.metrics.test_acc.iloc[-1] > fedavg.metrics.test_acc.iloc[-1] + 0.2


def test_same_seed_same_assignments_and_metrics(runs):
    data, cfl, _ = runs
    again = run_clustered(cfl.config, data)
    assert np.array_equal(again.assignments, cfl.assignments)
    assert again.metrics.equals(cfl.metrics) and again.norms.equals(cfl.norms)


def test_no_split_before_min_rounds(tiny):
    run = run_clustered(tiny(**{**CFL, "num_rounds": 6, "cfl_min_rounds": 6}), tiny_data(320, 200))
    assert (run.metrics.num_clusters == 1).all()


@pytest.mark.parametrize("field,value", [("cfl_eps1", -0.1), ("cfl_eps2", float("nan")), ("cfl_min_rounds", -1),
                                         ("cfl_min_rounds", 2.5)])
def test_bad_cfl_values_are_refused_in_one_line(field, value):
    with pytest.raises(ConfigError) as err:
        Config(**{field: value})
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{field}={value!r}") and RULES[field].describe() in msg


@pytest.mark.parametrize("fields", [dict(aggregator="median"), dict(client_fraction=0.5), dict(bits=8),
                                    dict(prox_mu=0.1), dict(dp_clip=1.0)])
def test_what_cfl_does_not_run_is_refused_in_one_line(tiny, fields):
    with pytest.raises(ConfigError) as err:
        check_clustered(tiny(**fields))
    name = next(iter(fields))
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{name}=")


def test_too_many_groups_refused(tiny):
    with pytest.raises(ConfigError, match="num_groups=7"):
        ClusteredFederation(tiny(**CFL), tiny_data(320, 200), num_groups=7)


def test_a_federation_refuses_the_clustered_thresholds_in_one_line(tiny):
    from fl_lib.core.errors import ConfigError
    from fl_lib.simulator.build import check

    with pytest.raises(ConfigError, match=r"cfl_eps1=0\.2 is read by clustered FL only"):
        check(tiny(cfl_eps1=0.2))
