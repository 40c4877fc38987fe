"""Partitions: exact coverage (every index once), label skew against alpha, shards, min_size, determinism."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from fl_lib.core.errors import ConfigError, DataError
from fl_lib.core.config import PARTITIONS
from fl_lib.core.partition import (dirichlet, dirichlet_per_client, iid, label_counts, make_partition,
                              shards)

LABELS = np.random.default_rng(0).choice(10, size=3000, p=np.linspace(1, 2, 10) / 15)  # mildly imbalanced


def assert_exact_cover(parts, n):
    """The oracle: sorted int64 arrays whose union is range(n) with no repeats."""
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1 and (np.diff(p) > 0).all()
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))


def mean_tv(parts, labels):
    """Mean total-variation distance of the clients' label mixes from the global one."""
    counts = label_counts(parts, labels)
    mix = counts / counts.sum(1, keepdims=True)
    prior = np.bincount(labels) / len(labels)
    return 0.5 * np.abs(mix - prior).sum(1).mean()


@pytest.mark.parametrize("kind", [p for p in PARTITIONS if p != "roles"])  # roles: test_shakespeare
@pytest.mark.parametrize("alpha", [0.01, 0.1, 1.0, 1000.0])
@pytest.mark.parametrize("num_clients", [1, 7, 100])
def test_every_kind_covers_every_index_once(kind, alpha, num_clients):
    parts = make_partition(kind, LABELS, num_clients, seed=3, alpha=alpha, min_size=5)
    assert len(parts) == num_clients
    assert_exact_cover(parts, len(LABELS))


@settings(max_examples=40, deadline=None)
@given(alpha=st.floats(0.005, 2000), num_clients=st.integers(1, 60), seed=st.integers(0, 2**32 - 1),
       n=st.integers(600, 1500), num_classes=st.integers(1, 12))
def test_dirichlet_variants_cover_and_terminate(alpha, num_clients, seed, n, num_classes):
    labels = np.random.default_rng(seed).integers(0, num_classes, n)
    parts = dirichlet(labels, num_clients, alpha, seed, min_size=10)
    assert_exact_cover(parts, n)
    assert min(map(len, parts)) >= 10
    parts = dirichlet_per_client(labels, num_clients, alpha, seed)
    assert_exact_cover(parts, n)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("partition", [dirichlet, dirichlet_per_client])
def test_label_skew_falls_as_alpha_grows(partition):
    tv = [np.mean([mean_tv(partition(LABELS, 20, alpha, seed), LABELS) for seed in range(3)])
          for alpha in (0.05, 1.0, 100.0)]
    assert tv[0] > tv[1] > tv[2]
    # Hsu et al.'s alpha is the total concentration of q_k, so alpha=100 still leaves some skew.
    assert tv[0] > 0.5 and tv[2] < (0.1 if partition is dirichlet else 0.2)


def test_min_size_respected_for_tiny_alpha():
    parts = dirichlet(LABELS, 100, 0.01, seed=0, min_size=25)
    assert min(map(len, parts)) >= 25
    assert_exact_cover(parts, len(LABELS))


def test_impossible_min_size_names_the_numbers():
    with pytest.raises(DataError, match=r"20 x 10 = 200 > 150 samples"):
        dirichlet(LABELS[:150], 20, 0.5, seed=0, min_size=10)


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf")])
def test_bad_alpha_raises(alpha):
    for partition in (dirichlet, dirichlet_per_client):
        with pytest.raises(ConfigError, match="alpha must be a finite number > 0"):
            partition(LABELS, 10, alpha, 0)


def test_bad_num_clients_and_kind_raise():
    with pytest.raises(ConfigError, match="num_clients must be an integer >= 1, got 0"):
        iid(100, 0, seed=0)
    with pytest.raises(DataError, match="num_clients=101 exceeds the 100"):
        iid(100, 101, seed=0)
    with pytest.raises(ConfigError, match="allowed: iid, shards, dirichlet, dirichlet_per_client"):
        make_partition("pathological", LABELS, 10, seed=0)


def test_iid_sizes_differ_by_at_most_one():
    parts = iid(1003, 10, seed=0)
    assert_exact_cover(parts, 1003)
    assert {len(p) for p in parts} == {100, 101}


def test_shards_mcmahan_layout():
    labels = np.random.default_rng(1).integers(0, 10, 6000)
    parts = shards(labels, 100, 2, seed=0)
    assert_exact_cover(parts, 6000)
    assert {len(p) for p in parts} == {60}
    num_labels = (label_counts(parts, labels) > 0).sum(1)
    # A shard holds one label unless it straddles one of the 9 label boundaries.
    assert num_labels.max() <= 4 and (num_labels <= 2).sum() >= 91


def test_shards_spread_the_remainder():
    parts = shards(LABELS[:2999], 10, 3, seed=0)
    assert_exact_cover(parts, 2999)
    assert max(map(len, parts)) - min(map(len, parts)) <= 3
    with pytest.raises(DataError, match="2000 shards but only 1000 samples"):
        shards(LABELS[:1000], 1000, 2, seed=0)


@pytest.mark.parametrize("kind", [p for p in PARTITIONS if p != "roles"])  # roles: test_shakespeare
def test_deterministic_per_seed(kind):
    a, b, c = (make_partition(kind, LABELS, 10, seed=s) for s in (5, 5, 6))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_per_client_mix_follows_prior_for_large_alpha():
    parts = dirichlet_per_client(LABELS, 10, 1e4, seed=0)
    assert mean_tv(parts, LABELS) < 0.05


def test_label_counts_against_a_loop():
    parts = dirichlet(LABELS, 8, 0.3, seed=2, min_size=1)
    counts = label_counts(parts, LABELS, num_classes=12)
    expected = [[int((LABELS[p] == c).sum()) for c in range(12)] for p in parts]
    assert counts.dtype == np.int64 and counts.tolist() == expected
    assert np.array_equal(counts.sum(0)[:10], np.bincount(LABELS))
    assert np.array_equal(counts.sum(1), [len(p) for p in parts])


def test_accepts_torch_labels():
    parts = make_partition("dirichlet", torch.from_numpy(LABELS), 10, seed=0)
    assert_exact_cover(parts, len(LABELS))
