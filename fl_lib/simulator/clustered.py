"""Clustered FL (Sattler, Müller & Samek 2020, Algorithm 1): FedAvg in every cluster, and a cluster that
stalls with clients who still disagree is split in two, recursively. The result is one model per cluster.

One round t, for every current cluster c with model w_c (all its clients train, every round):

    train     client k in c trains from w_c (the Trainer, the same seeded streams as a FedAvg round)
              and sends Delta_k = w_k - w_c
    test      after round cfl_min_rounds, c is split when its weighted mean update is small while
              some client's is large:  ||sum_k n_k/n Delta_k|| < eps_1  and  max_k ||Delta_k|| > eps_2
    split     the parts are the bipartition of the cosine similarities of the Delta_k with the
              smallest largest cross-part similarity                  (core/clustering.py)
    average   each cluster (or each part of a split one) takes the n_k / n mean of its members'
              models, as the authors' code does after a split

A split keeps the cluster's id for the part holding its lowest-numbered client and
gives the other part the next free id, so ids are stable from round to round. The
population is the label-swapped one of core/label_swap.py (group g = k mod G
relabels y as y XOR g); a client's accuracy is its cluster model's accuracy on the
test set as its group labels it. cfl_eps1 = 0 never splits, which is FedAvg on the
same population: the baseline, identical to the clustered run up to its first split.

Selected by calling `run_clustered(cfg)` rather than by an `algorithm` value: the
result is several models and a cluster assignment per round, which the Federation
and its checkpoints (one global model per round) do not hold. `run_clustered` here
computes and keeps nothing; fl_lib/runtime/clustered_results.py's `run_clustered`
caches a run in a folder of its own and resumes it from checkpoints of
`ClusteredFederation.state_dict()`. No
randomness is added: training draws from the Trainer's (seed, t, k) streams and the
clustering is deterministic, so the same config and seed give the same assignments.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..core.aggregators.mean import aggregate
from ..core.client import num_targets
from ..core.clustering import (bipartition, cosine_similarities, flatten_update, max_update_norm,
                               mean_update_norm, should_split)
from ..core.config import Config
from ..core.data import Dataset, load_dataset
from ..core.errors import ConfigError
from ..core.label_swap import client_groups, group_test_labels, swap_labels
from ..core.partition import make_partition
from ..core.trainer import Trainer, resolve_device

if TYPE_CHECKING:
    import pandas

# Fields clustered FL leaves at their defaults: it runs plain FedAvg (float32 weights, every client every
# round, one by one) inside each cluster. Set away from the default they are refused, not silently ignored.
PLAIN_FEDAVG = ("algorithm", "aggregator", "server_opt", "prox_mu", "scaffold", "dp_clip", "secure_aggregation",
                "bits", "upload", "link", "client_fraction", "engine")


def check_clustered(cfg: Config) -> None:
    """Refuse, in one line, a config that sets a field clustered FL does not run."""
    defaults = Config()
    for name in (n for n in PLAIN_FEDAVG if hasattr(defaults, n)):  # a field of a remedy not (yet) in Config
        value, default = getattr(cfg, name), getattr(defaults, name)
        if value != default:
            raise ConfigError(f"{name}={value!r} is not run by clustered FL (simulator/clustered.py), which trains "
                              f"plain FedAvg with every client every round inside each cluster: leave it at "
                              f"{default!r}")


@dataclass
class Cluster:
    """A cluster: its stable id, its clients (sorted) and its model."""

    id: int
    members: list[int]
    state: dict


@dataclass
class ClusteredRun:
    """What a clustered run leaves: metrics per round, norms per cluster and round, assignments, final models."""

    config: Config
    groups: list[int]  # true group of each client
    metrics: pandas.DataFrame  # one row per round (ClusteredFederation.round)
    norms: pandas.DataFrame  # one row per round and cluster: the split criterion's two norms
    assignments: np.ndarray  # (rounds, K): the id of client k's cluster after round t (row t - 1)
    clusters: list[Cluster] = field(default_factory=list)  # after the last round
    seconds: list[float] = field(default_factory=list)  # wall time per round (varies run to run)
    folder: object = None  # the cache folder it was stored in (runtime/clustered_results.py); None: not stored


class ClusteredFederation:
    """Clients of the label-swapped population, the current clusters and their models; `round(t)` runs round t."""

    def __init__(self, cfg: Config, data: Dataset | None = None, num_groups: int = 2):
        check_clustered(cfg)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        data = load_dataset(cfg.dataset, cfg.data_root, seed=cfg.seed) if data is None else data
        data = data.to(self.device)
        parts = make_partition(cfg.partition, data.y_train.cpu().numpy(), cfg.num_clients, cfg.seed,
                               alpha=cfg.alpha, shards_per_client=cfg.shards_per_client, min_size=cfg.min_size)
        self.clients = [torch.as_tensor(p, dtype=torch.long, device=self.device) for p in parts]
        self.groups = client_groups(cfg.num_clients, num_groups)
        self.data = swap_labels(data, self.clients, self.groups)  # the partition is made on the true labels
        self.sizes = [num_targets(self.data.y_train[c]) for c in self.clients]
        self.trainer = Trainer(cfg, self.data, self.clients, self.sizes, self.device)
        self.test_labels = [group_test_labels(self.data, g) for g in range(num_groups)]
        start = {k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()}
        self.clusters = [Cluster(0, list(range(cfg.num_clients)), start)]
        self.next_id = 1

    def assignment(self) -> list[int]:
        """The id of each client's cluster."""
        out = [0] * self.cfg.num_clients
        for c in self.clusters:
            for k in c.members:
                out[k] = c.id
        return out

    def round(self, t: int) -> tuple[dict, list[dict]]:
        """Round t (1-based) in every cluster; returns the round's metrics row and one norms row per cluster."""
        clusters, norms, losses, splits = [], [], [], 0
        for c in self.clusters:
            states, updates = [], []
            for k in c.members:
                w, loss = self.trainer.weights(k, t, c.state)
                states.append({name: v.clone() for name, v in w.items()})  # w is the trainer's model: copy it
                updates.append(flatten_update(w, c.state))
                losses.append(float(loss))
            U, sizes = torch.stack(updates), [self.sizes[k] for k in c.members]
            norms.append({"round": t, "cluster": c.id, "clients": len(c.members),
                          "mean_norm": mean_update_norm(U, sizes), "max_norm": max_update_norm(U)})
            parts = [list(range(len(c.members)))]
            if t > self.cfg.cfl_min_rounds and should_split(U, sizes, self.cfg.cfl_eps1, self.cfg.cfl_eps2):
                parts = list(bipartition(cosine_similarities(U)))
                splits += 1
            for i, part in enumerate(parts):
                cid = c.id if i == 0 else self._new_id()
                clusters.append(Cluster(cid, [c.members[j] for j in part],
                                        aggregate([states[j] for j in part], [sizes[j] for j in part])))
        self.clusters = sorted(clusters, key=lambda c: c.id)
        row = {"round": t, "train_loss": float(np.mean(losses)), "num_clusters": len(self.clusters),
               "splits": splits, "test_acc": None, "test_loss": None}
        if t % self.cfg.eval_every == 0 or t == self.cfg.num_rounds:
            row["test_acc"], row["test_loss"] = self.evaluate()
        return row, norms

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def state_dict(self) -> dict:
        """What a checkpoint must keep to resume exactly: every cluster's id, members and model, and the next id.

        The assignments follow from the clusters; training needs nothing else (every draw is keyed by (seed, t, k)).
        """
        return {"clusters": [{"id": c.id, "members": list(c.members),
                              "state": {n: v.detach().cpu() for n, v in c.state.items()}} for c in self.clusters],
                "next_id": self.next_id}

    def load_state_dict(self, state: dict) -> None:
        self.clusters = [Cluster(int(c["id"]), [int(k) for k in c["members"]],
                                 {n: v.to(self.device) for n, v in c["state"].items()}) for c in state["clusters"]]
        self.next_id = int(state["next_id"])

    def evaluate(self) -> tuple[float, float]:
        """Mean over clients of their cluster model's accuracy and loss on the test set as their group labels it."""
        accs, losses = [], []
        for c in self.clusters:
            for g in sorted({self.groups[k] for k in c.members}):
                acc, loss = self.trainer.evaluate(c.state, self.test_labels[g])
                count = sum(1 for k in c.members if self.groups[k] == g)
                accs += [acc] * count
                losses += [loss] * count
        return float(np.mean(accs)), float(np.mean(losses))


def run_clustered(cfg: Config, data: Dataset | None = None, num_groups: int = 2) -> ClusteredRun:
    """Run `cfg.num_rounds` rounds of clustered FL on the population of `num_groups` label-swapped groups."""
    import pandas as pd  # only for the result's tables

    fed = ClusteredFederation(cfg, data, num_groups)
    rows, norms, assignments, seconds = [], [], [], []
    for t in range(1, cfg.num_rounds + 1):
        start = time.perf_counter()
        row, cluster_norms = fed.round(t)
        seconds.append(time.perf_counter() - start)
        rows.append(row)
        norms += cluster_norms
        assignments.append(fed.assignment())
    return ClusteredRun(cfg, fed.groups, pd.DataFrame(rows), pd.DataFrame(norms), np.array(assignments),
                        fed.clusters, seconds)
