"""Split a training set over clients: IID, label shards, two Dirichlet label-skew variants, and natural roles.

Every function returns one sorted 1-D np.int64 index array per client; together they hold
every training index exactly once. All randomness comes from np.random.default_rng(seed).
"""
import numpy as np

from .config import PARTITIONS
from .errors import ConfigError, DataError

_MAX_DRAWS = 10  # Dirichlet redraws before the deterministic min_size repair takes over


def _as_labels(labels):
    """Labels as a 1-D int64 numpy array (accepts torch tensors on any device)."""
    labels = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise DataError(f"labels must be a 1-D array of non-negative integers, got dtype "
                        f"{labels.dtype} and shape {labels.shape}")
    return labels.astype(np.int64)


def _check_clients(num_clients, num_samples):
    if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ConfigError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    if num_clients > num_samples:
        raise DataError(f"num_clients={num_clients} exceeds the {num_samples} training samples; "
                        f"every client needs at least one")


def _check_alpha(alpha):
    if not np.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"alpha must be a finite number > 0, got {alpha!r}")


def _groups(owner, num_clients):
    """Turn an owner-per-sample array into one sorted index array per client."""
    order = np.argsort(owner, kind="stable")  # stable: indices stay sorted within a client
    cuts = np.cumsum(np.bincount(owner, minlength=num_clients))[:-1]
    return [part.astype(np.int64) for part in np.split(order, cuts)]


def iid(num_samples, num_clients, seed):
    """Random split into num_clients parts whose sizes differ by at most one."""
    _check_clients(num_clients, num_samples)
    perm = np.random.default_rng(seed).permutation(num_samples)
    return [np.sort(part).astype(np.int64) for part in np.array_split(perm, num_clients)]


def shards(labels, num_clients, shards_per_client, seed):
    """McMahan et al. (2017): sort by label, cut into equal shards, deal shards_per_client to each client."""
    labels = _as_labels(labels)
    _check_clients(num_clients, len(labels))
    if not isinstance(shards_per_client, (int, np.integer)) or shards_per_client < 1:
        raise ConfigError(f"shards_per_client must be an integer >= 1, got {shards_per_client!r}")
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise DataError(f"{num_clients} clients x {shards_per_client} shards = {num_shards} shards "
                        f"but only {len(labels)} samples")
    # array_split gives the first (n mod num_shards) shards one extra sample, so nothing is dropped.
    pieces = np.array_split(np.argsort(labels, kind="stable"), num_shards)
    deal = np.random.default_rng(seed).permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([pieces[s] for s in row])).astype(np.int64) for row in deal]


def _draw_per_class(labels, num_clients, alpha, rng):
    """One draw of the per-class Dirichlet split: returns the owning client of every sample."""
    owner = np.empty(len(labels), dtype=np.int64)
    sizes = np.zeros(num_clients, dtype=np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        p = rng.dirichlet(np.full(num_clients, alpha))
        # As in the FedMA / NIID-Bench reference code: clients already holding more than
        # an equal share take no more, which keeps client sizes from drifting too far apart.
        p = p * (sizes < len(labels) / num_clients)
        p = p / p.sum() if p.sum() > 0 else np.full(num_clients, 1.0 / num_clients)
        cuts = (np.cumsum(p) * len(idx)).astype(np.int64)
        counts = np.diff(np.concatenate([[0], cuts[:-1], [len(idx)]]))
        owner[idx] = np.repeat(np.arange(num_clients), counts)
        sizes += counts
    return owner


def dirichlet(labels, num_clients, alpha, seed, min_size=10):
    """Per-class Dirichlet label skew (Yurochkin et al. 2019; Wang et al. 2020; Li et al. NIID-Bench).

    For every class c, its samples are shuffled and split over the clients in proportions
    p_c ~ Dir(alpha * 1_K). Client sizes therefore vary (small alpha: a few large clients).
    This differs from Hsu et al. (2019), where each client k draws its own class mixture
    q_k ~ Dir(alpha * p) (p the global class prior) and fills a fixed number of samples
    from it; that variant is `dirichlet_per_client`. Small alpha is more skewed in both.

    Every client gets at least min_size samples: up to _MAX_DRAWS draws, then a repair.
    """
    labels = _as_labels(labels)
    _check_alpha(alpha)
    _check_clients(num_clients, len(labels))
    if not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ConfigError(f"min_size must be an integer >= 0, got {min_size!r}")
    if num_clients * min_size > len(labels):
        raise DataError(f"cannot give {num_clients} clients min_size={min_size} samples each: "
                        f"{num_clients} x {min_size} = {num_clients * min_size} > {len(labels)} samples")
    rng = np.random.default_rng(seed)
    for _ in range(_MAX_DRAWS):
        owner = _draw_per_class(labels, num_clients, alpha, rng)
        sizes = np.bincount(owner, minlength=num_clients)
        if sizes.min() >= min_size:
            return _groups(owner, num_clients)
    # The usual "redraw until every client has min_size" loop may never end for tiny alpha.
    # Instead, fill each short client with random samples of the currently largest client.
    # This terminates: while client k is short, the others hold more than (K-1)*min_size
    # samples in total (since K*min_size <= n), so the largest has a surplus >= 1; each
    # step either fills k or brings a donor down to min_size, so there are at most 2K steps.
    for k in np.flatnonzero(sizes < min_size):
        while sizes[k] < min_size:
            donor = int(np.argmax(sizes))
            take = min(min_size - sizes[k], sizes[donor] - min_size)
            moved = rng.choice(np.flatnonzero(owner == donor), size=take, replace=False)
            owner[moved] = k
            sizes[donor] -= take
            sizes[k] += take
    return _groups(owner, num_clients)


def _round_shares(total, w):
    """Integer counts summing to total, closest to total * w (largest remainder rounding)."""
    raw = total * w
    counts = np.floor(raw).astype(np.int64)
    counts[np.argsort(counts - raw, kind="stable")[:total - counts.sum()]] += 1
    return counts


def dirichlet_per_client(labels, num_clients, alpha, seed):
    """Hsu et al. (2019): client k draws q_k ~ Dir(alpha * p) over classes and fills an equal share from it.

    Client k takes round(share * q_k) samples of each class (no extra multinomial noise on top
    of q_k). Classes are drawn without replacement; when a class runs out, q_k is renormalized over
    the classes that remain, so every index is used once. Late clients therefore see
    somewhat more of the leftover classes than q_k asks for.
    """
    labels = _as_labels(labels)
    _check_alpha(alpha)
    _check_clients(num_clients, len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    taken = np.zeros(len(classes), dtype=np.int64)
    prior = counts / counts.sum()
    parts = []
    for need in (len(part) for part in np.array_split(np.arange(len(labels)), num_clients)):
        q = rng.dirichlet(alpha * prior)
        got = np.zeros(len(classes), dtype=np.int64)
        # Each pass either fills the client or exhausts at least one class: at most C+1 passes.
        while need > 0:
            left = counts - taken - got
            w = q * (left > 0)
            w = w / w.sum() if w.sum() > 0 else left / left.sum()
            draw = np.minimum(_round_shares(need, w), left)
            got += draw
            need -= int(draw.sum())
        parts.append(np.sort(np.concatenate([pools[c][taken[c]:taken[c] + got[c]]
                                             for c in range(len(classes))])).astype(np.int64))
        taken += got
    return parts


def label_counts(parts, labels, num_classes=None):
    """Clients x classes matrix of label counts (int64)."""
    labels = _as_labels(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    client = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    flat = client * num_classes + labels[np.concatenate(parts).astype(np.int64)]
    return np.bincount(flat, minlength=len(parts) * num_classes).reshape(len(parts), num_classes)


def roles(groups, num_clients):
    """The data's own clients (Shakespeare: one per role); groups[i] is the client of sample i."""
    groups = _as_labels(groups)
    found = int(groups.max()) + 1
    if num_clients != found:
        raise ConfigError(f"num_clients={num_clients}: partition=roles gives one client per role, and this "
                          f"dataset has {found} roles; set num_clients={found}")
    return _groups(groups, num_clients)


def make_partition(kind, labels, num_clients, seed, alpha=0.5, shards_per_client=2, min_size=10):
    """Dispatch on kind, one of PARTITIONS; the extra arguments are used only by the kinds that need them.

    For text (Shakespeare) `labels` holds each sample's role: `roles` keeps them as clients, `iid`
    deals the same samples evenly over as many clients.
    """
    if kind == "iid":
        return iid(len(_as_labels(labels)), num_clients, seed)
    if kind == "shards":
        return shards(labels, num_clients, shards_per_client, seed)
    if kind == "dirichlet":
        return dirichlet(labels, num_clients, alpha, seed, min_size=min_size)
    if kind == "dirichlet_per_client":
        return dirichlet_per_client(labels, num_clients, alpha, seed)
    if kind == "roles":
        return roles(labels, num_clients)
    raise ConfigError(f"unknown partition kind {kind!r}; allowed: {', '.join(PARTITIONS)}")
