"""Numbers read off finished runs: rounds (or time, or megabytes) to a target accuracy, quantization error per layer,
client drift from a stored model, and paired verdicts of methods against a reference over seeds."""
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


# -- client drift and paired verdicts (lesson 10) ------------------------------------
def drift_stats(updates, sizes) -> dict:
    """How far, and how much in agreement, the clients of one round moved: a measure of client drift.

    `updates` holds one client's update Delta_k = w_k - w_global per row (all float parameters,
    flattened), `sizes` its n_k. With p_k = n_k / n and the FedAvg step Delta = sum_k p_k Delta_k:

        update_norm  sum_k p_k ||Delta_k||             how far a client moves on its own
        mean_update  ||Delta||                         how far FedAvg moves the global model
        agreement    ||Delta|| / sum_k p_k ||Delta_k||  1: all move one way; near 0: they cancel out
        spread       sum_k p_k ||Delta_k - Delta||     how far the clients' models lie from their average
        rms_update   ||Delta|| / sqrt(d)               the FedAvg step per coordinate (d parameters)

    Client drift (Karimireddy et al. 2020) is each client's walk towards its own optimum: it
    shows as a large spread and a low agreement, the average of long walks in different
    directions being a short step. By the triangle inequality agreement lies in [0, 1]; it is
    NaN when no client moved.
    """
    import torch

    u = torch.as_tensor(updates, dtype=torch.float64)
    n_k = torch.as_tensor([float(s) for s in sizes], dtype=torch.float64)
    if u.ndim != 2 or len(n_k) != u.shape[0] or not n_k.sum() > 0:
        raise ValueError(f"drift_stats needs one row per client and sample counts summing to a positive number: "
                         f"got updates of shape {tuple(u.shape)} and {len(n_k)} sizes summing to {n_k.sum().item()}")
    p = n_k / n_k.sum()
    step = p @ u
    norms = torch.linalg.vector_norm(u, dim=1)
    update_norm = float(p @ norms)
    mean_update = float(torch.linalg.vector_norm(step))
    return {"update_norm": update_norm, "mean_update": mean_update,
            "agreement": mean_update / update_norm if update_norm > 0 else math.nan,
            "spread": float(p @ torch.linalg.vector_norm(u - step, dim=1)),
            "rms_update": mean_update / math.sqrt(u.shape[1])}


def client_updates(cfg, global_state: dict, t: int, data=None):
    """Every client's update Delta_k = w_k - w_global in round t of a run of `cfg` started at `global_state`.

    Each client trains as round t of that run would (its E local epochs, its batches from
    generators seeded by (seed, t, client)), so the result is deterministic; all clients train,
    whatever the client fraction, and nothing is encoded, aggregated or stored. `data`: the
    dataset, loaded from cfg if None. Returns (updates, sizes, losses): one row per client (all
    float parameters flattened, float32 on the CPU), its n_k and its mean local loss.
    """
    import torch

    from ..simulator.federation import Federation

    fed = Federation(cfg, data=data)
    start = {name: v.to(fed.device) for name, v in global_state.items()}
    floats = [name for name, v in start.items() if v.is_floating_point()]
    rows, losses = [], []
    try:
        for k in range(len(fed.clients)):
            weights, loss = fed.trainer.weights(k, t, start)  # views of the one model: flattened at once
            rows.append(torch.cat([(weights[n].float() - start[n].float()).flatten() for n in floats]).cpu())
            losses.append(float(loss))
    finally:
        fed.close()
    return torch.stack(rows), list(fed.sizes), losses


def stored_model(cfg, root=None) -> tuple[int, dict]:
    """(round, global model) of the last checkpoint of `cfg`'s cached run: where that run stopped, or would go on."""
    from ..core.errors import FLError
    from ..runtime import checkpoint, results

    folder = results.run_dir(cfg, root) / "checkpoints"
    state = checkpoint.latest(folder, cfg.key())
    if state is None:
        raise FLError(f"no checkpoint of this config in {folder}: run it first (results.run or sweep)")
    return state["round"], state["global"]


def paired_verdicts(runs, reference: str, value: str, by: str = "label", seed: str = "seed"):
    """Each method of `runs` against `reference`, paired by seed: the differences, their mean and spread, a verdict.

    `runs` has one row per run: its method (column `by`), its `seed` and the number compared
    (`value`, e.g. final accuracy). For method m and each seed s that both ran,
    d_s = value(m, s) - value(reference, s); the verdict compares the mean d of the d_s with their
    sample standard deviation s_d (n - 1 in the denominator):

        helps          d > s_d
        hurts          d < -s_d
        no difference  otherwise
        one seed       only one paired seed: there is no spread to compare with

    This is a rule of thumb for a lesson, not a significance test: with two seeds s_d rests on
    one degree of freedom. Returns a DataFrame indexed by method, in the order of first
    appearance, with one column per seed and columns mean, std, seeds, verdict.
    """
    import pandas as pd

    table = runs.pivot_table(index=by, columns=seed, values=value, aggfunc="first", sort=False)
    if reference not in table.index:
        raise ValueError(f"reference {reference!r} is not among the {by} values: {', '.join(map(str, table.index))}")
    rows = {}
    for method in [m for m in dict.fromkeys(runs[by]) if m != reference]:
        d = (table.loc[method] - table.loc[reference]).dropna()
        mean, std = (d.mean(), d.std()) if len(d) else (math.nan, math.nan)
        if len(d) < 2:
            verdict = "one seed" if len(d) == 1 else "no paired seed"
        else:
            verdict = "helps" if mean > std else "hurts" if mean < -std else "no difference"
        rows[method] = {**{f"seed {s}": d.get(s, math.nan) for s in table.columns},
                        "mean": mean, "std": std, "seeds": len(d), "verdict": verdict}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(by)


# -- early convergence (lesson 05) ----------------------------------------------------
def early_auc(metrics, rounds: float, x: str = "round") -> float:
    """Mean test accuracy over the first `rounds` rounds: the area under the accuracy curve, divided by its width.

    "Converges faster early on" is a claim about the whole early curve, which the rounds to one
    target see at a single height only. The area covers the evaluated rows with 1 <= x <= rounds,
    by trapezoids between consecutive evaluations (rows without one are skipped), divided by
    the x they span, so it stays an accuracy: two runs evaluated on the same rounds compare
    directly, and a pair of runs per seed gives a paired difference. One evaluation gives its
    accuracy; none gives NaN.
    """
    if not rounds >= 1:
        raise ValueError(f"early_auc: rounds={rounds!r} is not allowed: must be >= 1")
    m = metrics.dropna(subset=["test_acc"])
    m = m[(m[x] >= 1) & (m[x] <= rounds)].sort_values(x)
    xs, acc = m[x].astype(float).tolist(), m.test_acc.astype(float).tolist()
    if len(xs) < 2:
        return acc[0] if acc else math.nan
    area = sum((x1 - x0) * (a0 + a1) / 2 for x0, x1, a0, a1 in zip(xs, xs[1:], acc, acc[1:]))
    return area / (xs[-1] - xs[0])


def early_auc_by(frame, by, rounds: float, x: str = "round"):
    """`early_auc` of every run in `frame`, one per group of `by`, as a float Series (like `time_to_target_by`)."""
    import pandas as pd

    auc = {key: early_auc(m, rounds, x) for key, m in frame.groupby(by, sort=False)}
    index = pd.MultiIndex.from_tuples(auc, names=by) if isinstance(by, list) else pd.Index(auc, name=by)
    return pd.Series(list(auc.values()), index=index, dtype=float)


EARLY_FRACTIONS = (0.5, 0.75, 0.9)  # early-convergence targets, as fractions of FP32's best accuracy


def early_convergence(metrics, rounds: int, fractions=EARLY_FRACTIONS):
    """Lesson 05's check of "INT16 rises faster early on": every width against FP32, paired by seed.

    `metrics` holds runs labelled "FP32", "INT16", ... (columns label, seed, bits, round,
    test_acc). Two measures per run: the rounds to targets at `fractions` of FP32's best
    accuracy (mean over seeds), negated so that a positive gain is faster, and `early_auc`
    over the first `rounds` rounds. Returns (table, targets): `paired_verdicts` of each measure
    against FP32, with "helps"/"hurts" read as "faster"/"slower".
    """
    import pandas as pd

    fp32_best = metrics[metrics.bits == 32].groupby("seed").test_acc.max().mean()
    targets = [round(f * fp32_best, 4) for f in fractions]
    per_run = pd.DataFrame({f"gain to {t:.4f}": -time_to_target_by(metrics, ["label", "seed"], t) for t in targets})
    per_run[f"early area, R = {rounds}"] = early_auc_by(metrics, ["label", "seed"], rounds)
    per_run = per_run.reset_index()
    table = pd.concat({measure: paired_verdicts(per_run, "FP32", measure)[["mean", "std", "seeds", "verdict"]]
                       for measure in per_run.columns[2:]}, names=["measure"])
    table["verdict"] = table.verdict.replace({"helps": "faster", "hurts": "slower"})
    return table, targets


def early_verdict(table, rounds: int, width: str = "INT16", where: str = "this run") -> str:
    """The paper's claim checked on `early_convergence`'s table: holds / does not hold in `where`, with the numbers
    behind it."""
    rows = table.xs(width, level="label")
    area = rows.loc[f"early area, R = {rounds}"]
    gains = rows[rows.index.str.startswith("gain")]
    return (f"**{width} rises faster than FP32 in the first {rounds} rounds** (mean accuracy over them, {width} "
            f"minus FP32, paired over {area.seeds} seed(s): {area['mean']:+.4f}, std {area['std']:.4f}): "
            + (f"**{'holds' if area.verdict == 'faster' else 'does not hold'}** in {where} ({area.verdict})"
               if area.seeds > 1 else "cannot be judged with one seed (no spread)")
            + ". Rounds gained to the targets: "
            + "; ".join(f"{m[len('gain to '):]}: {r['mean']:+.2f} ("
                        + (f"std {r['std']:.2f}, {r.seeds} seeds, {r.verdict})" if r.seeds > 1 else f"{r.verdict})")
                        for m, r in gains.iterrows()) + ".")
