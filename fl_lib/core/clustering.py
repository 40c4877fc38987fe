"""Clustered FL's math on update vectors (Sattler, Müller & Samek 2020, Algorithm 1): when to split, and how.

A cluster's clients send updates Delta_k = w_k - w (rows of a matrix U, one per
client) with weights n_k. FedAvg has reached a stationary point of the cluster's
joint loss when the weighted mean update is small; if some client's update is
still large there, no single model fits every client, and the cluster is split:

    split  <=>  || sum_k (n_k / n) Delta_k || < eps_1   and   max_k || Delta_k || > eps_2

The two parts are the bipartition whose largest cross-part cosine similarity is
smallest, alpha_ij = <Delta_i, Delta_j> / (||Delta_i|| ||Delta_j||):

    c_1, c_2 = argmin over c_1 + c_2 = c of  max_{i in c_1, j in c_2} alpha_ij

That is the maximum-spacing 2-clustering of the distances 1 - alpha_ij, which single
linkage finds exactly (cutting the largest edge of the minimum spanning tree), so
`bipartition` asks scipy for it. The authors' code uses complete linkage instead, a
heuristic for the same goal; `linkage="complete"` gives theirs.
"""
from __future__ import annotations

import numpy as np
import torch

LINKAGES = ("single", "complete")  # single: the paper's exact bipartition; complete: the authors' code


def flatten_update(new_state: dict, old_state: dict) -> torch.Tensor:
    """Delta = w_new - w_old over every float tensor of two state dicts, as one float32 vector."""
    return torch.cat([(new_state[name].float() - w.float()).reshape(-1)
                      for name, w in old_state.items() if w.is_floating_point()])


def mean_update_norm(updates: torch.Tensor, sizes) -> float:
    """|| sum_k (n_k / n) Delta_k ||: how far FedAvg's step still moves the cluster's model."""
    p = torch.as_tensor(sizes, dtype=updates.dtype, device=updates.device)
    return float(torch.linalg.vector_norm((p / p.sum()) @ updates))


def max_update_norm(updates: torch.Tensor) -> float:
    """max_k || Delta_k ||: the client that still wants to move the most."""
    return float(torch.linalg.vector_norm(updates, dim=1).max())


def should_split(updates: torch.Tensor, sizes, eps1: float, eps2: float) -> bool:
    """The paper's criterion: mean update norm below eps1 while the largest one is above eps2 (and >= 2 clients)."""
    return (len(updates) >= 2 and mean_update_norm(updates, sizes) < eps1
            and max_update_norm(updates) > eps2)


def cosine_similarities(updates: torch.Tensor) -> torch.Tensor:
    """alpha_ij, the (m, m) cosine similarities of the rows; a zero update is similar to nothing (0)."""
    norms = torch.linalg.vector_norm(updates, dim=1, keepdim=True)
    unit = updates / torch.where(norms > 0, norms, torch.ones_like(norms))
    return (unit @ unit.T).clamp(-1.0, 1.0)


def bipartition(similarities: torch.Tensor, linkage: str = "single") -> tuple[list[int], list[int]]:
    """Split m >= 2 items in two by their similarity matrix; the part holding item 0 comes first.

    Deterministic: scipy's agglomeration has no randomness, and each part is returned sorted.
    """
    from scipy.cluster.hierarchy import fcluster, linkage as scipy_linkage  # imported here: scipy loads slowly
    from scipy.spatial.distance import squareform

    if linkage not in LINKAGES:
        raise ValueError(f"linkage={linkage!r} is not allowed: must be one of {', '.join(LINKAGES)}")
    m = similarities.shape[0]
    if m < 2:
        raise ValueError(f"bipartition needs at least 2 items, got {m}")
    distance = (1.0 - similarities.double()).cpu().numpy()
    distance = np.clip((distance + distance.T) / 2, 0.0, 2.0)  # symmetric, non-negative despite rounding
    np.fill_diagonal(distance, 0.0)
    labels = fcluster(scipy_linkage(squareform(distance, checks=False), method=linkage), 2, criterion="maxclust")
    if labels.max() < 2:  # every distance equal (e.g. all zero): fcluster keeps one cluster; split off the last
        labels = np.r_[np.ones(m - 1, dtype=int), 2]
    first = [i for i in range(m) if labels[i] == labels[0]]
    return first, [i for i in range(m) if labels[i] != labels[0]]


def max_cross_similarity(similarities: torch.Tensor, part_a, part_b) -> float:
    """max_{i in a, j in b} alpha_ij: the objective `bipartition` minimizes (small: the parts disagree)."""
    return float(similarities[list(part_a)][:, list(part_b)].max())


def same_partition(assignment, groups) -> bool:
    """Whether clusters and groups split the clients alike (whatever the ids): one cluster per group, no mixing."""
    pairs = set(zip(assignment, groups))
    return len(pairs) == len(set(assignment)) == len(set(groups))
