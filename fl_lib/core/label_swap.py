"""A population that no single model can fit: groups of clients that label the same images differently.

Client k belongs to group g = k mod G. Group g relabels every label y as y XOR g:
group 0 keeps the labels, group 1 swaps the pairs (0, 1), (2, 3), ..., group 2 the
pairs (0, 2), (1, 3), ... Each relabelling is its own inverse, and two groups
disagree on every image, so one global model can at best get the pair right and
guess within it, while a model per group can be right everywhere. This is the
setting of Sattler et al. (2020)'s label-swapped experiments, in which clustered
FL should find the groups from the updates alone.

The swap is applied to the training labels the clients hold (a copy of the dataset;
the images are shared, not copied) and, for evaluation, to the test labels of the
group a client belongs to (`group_test_labels`).
"""
from __future__ import annotations

import dataclasses

import torch

from .errors import ConfigError, DataError


def client_groups(num_clients: int, num_groups: int) -> list[int]:
    """Group of each client, k mod G: the groups alternate, so any partition spreads them evenly."""
    if not isinstance(num_groups, int) or not 1 <= num_groups <= num_clients:
        raise ConfigError(f"num_groups={num_groups!r} is not allowed: must be an integer in 1..num_clients="
                          f"{num_clients}")
    return [k % num_groups for k in range(num_clients)]


def group_permutation(g: int, num_classes: int) -> torch.Tensor:
    """perm[y] = y XOR g, group g's label for an image of class y; refused if it leaves 0..num_classes - 1."""
    perm = torch.arange(num_classes) ^ g
    if int(perm.max()) >= num_classes:
        raise ConfigError(f"label group {g} swaps y with y XOR {g}, which leaves the {num_classes} classes "
                          f"(e.g. {int(torch.argmax(perm))} -> {int(perm.max())}): use fewer groups")
    return perm


def swap_labels(data, clients: list[torch.Tensor], groups: list[int]):
    """A copy of `data` whose training labels are relabelled per client group; the images are shared."""
    if data.is_text:
        raise DataError(f"label swapping relabels images; dataset {data.name!r} holds text")
    y = data.y_train.clone()
    for g in sorted(set(groups)):
        perm = group_permutation(g, data.num_classes).to(y.device)
        idx = torch.cat([clients[k] for k in range(len(clients)) if groups[k] == g])
        y[idx] = perm[data.y_train[idx]]
    return dataclasses.replace(data, y_train=y)


def group_test_labels(data, g: int) -> torch.Tensor:
    """The test labels as group g writes them: what that group's clients call a correct answer."""
    return group_permutation(g, data.num_classes).to(data.y_test.device)[data.y_test]
