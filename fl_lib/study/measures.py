"""Numbers read off finished runs: rounds (or time, or megabytes) to a target accuracy, quantization error per layer."""
from __future__ import annotations

import math


def rounds_to_target(acc_by_round, target: float) -> float | None:
    """Rounds until test accuracy first reaches `target`, measured as McMahan et al. (2017) do.

    The curve is first made monotone (the best accuracy so far), then the crossing is found
    by linear interpolation between the two evaluated rounds around it, so the answer can
    be fractional. `acc_by_round` is a {round: accuracy} mapping, a pandas Series indexed
    by round, or a sequence whose i-th entry is round i + 1. Rounds without an evaluation
    (None or NaN) are skipped. Returns None if the target is never reached.
    """
    if hasattr(acc_by_round, "items"):
        points = list(acc_by_round.items())
    else:
        points = list(enumerate(acc_by_round, start=1))
    points = sorted((float(r), float(a)) for r, a in points if a is not None and not math.isnan(a))
    prev_round, best = None, -math.inf  # the last evaluated round and the best accuracy up to it
    for r, a in points:
        if a >= target:  # first crossing: a > best, since best < target
            if prev_round is None:  # reached at the very first evaluation
                return r
            return prev_round + (target - best) / (a - best) * (r - prev_round)
        best, prev_round = max(best, a), r
    return None


def time_to_target(metrics, target: float, x: str = "round") -> float | None:
    """Where on column `x` of a run's metrics the best accuracy so far first reaches `target`, else None.

    `rounds_to_target` read against another clock: x may be the round, the simulated time or
    the megabytes uploaded so far, so "time" is whatever a reader pays for accuracy in. Rows
    without an evaluation are skipped; the crossing is interpolated between evaluations.
    """
    return rounds_to_target(metrics.dropna(subset=["test_acc"]).set_index(x).test_acc, target)


def time_to_target_by(frame, by, target: float, x: str = "round"):
    """`time_to_target` of every run in `frame`, one per group of `by` (a column or a list of them).

    A float Series indexed by the groups in the order they first appear, NaN where the target
    was not reached, so means and counts over seeds (`.mean()`, `.notna().sum()`) need no care.
    """
    import pandas as pd

    reach = {key: time_to_target(m, target, x) for key, m in frame.groupby(by, sort=False)}
    index = pd.MultiIndex.from_tuples(reach, names=by) if isinstance(by, list) else pd.Index(reach, name=by)
    return pd.Series([math.nan if v is None else v for v in reach.values()], index=index, dtype=float)


def best_acc_until(metrics, x: str, until: float) -> float:
    """The best test accuracy a run had reached at `until` on column `x` (NaN if it had no evaluation yet).

    Runs on different clocks (FedAvg and FedBuff in simulated time) are compared at one common
    time this way; `until` may be the last x of one of them, so it is matched with a 1e-12 slack.
    """
    m = metrics.dropna(subset=["test_acc"])
    return m[m[x] <= until + 1e-12].test_acc.max()


def quantization_errors(state_dict, bits_list, min_numel: int = 1):
    """Relative error ||w_hat - w|| / ||w|| of every float tensor, per channel vs per tensor.

    Per channel is the paper's quantizer (one scale s_c per output channel, equations (1)-(3));
    per tensor uses one scale for the whole tensor (the tensor seen as a single channel).
    Returns a DataFrame with columns layer, numel, channels, bits, per_channel, per_tensor.
    """
    import pandas as pd

    from ..core.quant import fake_quantize, num_channels, relative_error

    rows = []
    for name, w in state_dict.items():
        if not w.is_floating_point() or w.numel() < min_numel:
            continue
        for bits in bits_list:
            per_channel = fake_quantize(w, bits)
            per_tensor = fake_quantize(w.reshape(1, -1), bits).reshape(w.shape)
            rows.append({"layer": name, "numel": w.numel(), "channels": num_channels(w.shape), "bits": bits,
                         "per_channel": relative_error(w, per_channel),
                         "per_tensor": relative_error(w, per_tensor)})
    return pd.DataFrame(rows)


def model_quant_error(state_dict, bits: int, per_channel: bool = True) -> float:
    """What an upload of `state_dict` at `bits` loses: `quant.relative_error` over all its float tensors."""
    from ..core.quant import fake_quantize, relative_error

    w = {n: v.detach().float() for n, v in state_dict.items() if v.is_floating_point()}
    if per_channel:
        w_hat = {n: fake_quantize(v, bits) for n, v in w.items()}
    else:
        w_hat = {n: fake_quantize(v.reshape(1, -1), bits).reshape(v.shape) for n, v in w.items()}
    return relative_error(w, w_hat)


def local_updates(local_epochs: int, batch_size, num_samples: int, num_clients: int) -> float:
    """u = E n / (K B), McMahan et al.'s local updates per client per round; B = None (full batch) gives u = E."""
    if batch_size is None:
        return float(local_epochs)
    return local_epochs * num_samples / (num_clients * batch_size)
