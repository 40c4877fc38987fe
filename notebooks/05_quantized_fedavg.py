# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] slideshow={"slide_type": "slide"}
# # 05 · FedAvg with quantized uploads: the paper's experiment
#
# Lee & Lee train SqueezeNet 1.0 on CIFAR-10 with FedAvg (McMahan et al. 2017): 10 clients with a
# Dirichlet ($\alpha = 0.5$) label split, 5 local epochs, 300 rounds, every client uploading its model
# quantized channel-wise to 16 bits. They report that INT16 halves the upload (Table 1: 28.41 MB
# against 14.66 MB per round, -48.4%) and that its accuracy is equal to or slightly above FP32's in
# every round, rising faster early on (Figure 1).
#
# Here the same experiment runs as *paired* runs: for a given seed, the FP32 run and the quantized
# runs share the initialization, the partition, the sampled clients, the batch order and the
# augmentation; only the upload codec differs. Each pair is repeated over several seeds, so a
# difference between bit widths can be set against the spread between seeds. The default `preset`
# is `quick` (a small CNN, 1 local epoch), sized for a CPU; `paper` is the full setup.

# %% tags=["parameters"] slideshow={"slide_type": "skip"}
preset: str = "quick"  # starting config: quick (small CNN, 1 local epoch) or paper (SqueezeNet 1.0, 5 epochs)
dataset: str = "cifar10"  # cifar10 (torchvision downloads it into data_root), synthetic, or an .npz file
data_root: str = ""  # where datasets are downloaded and built; empty: the project's data/
num_rounds: int = 20  # communication rounds of every run (the paper: 300)
num_clients: int = 10  # K, clients, all sampled every round (the paper: 10)
alpha: float = 0.5  # Dirichlet concentration of the label split (the paper: 0.5)
bit_widths: str = "32,16,8,4"  # upload bit widths, comma-separated; 32 means float32 (the paper: 32, 16)
delta_bit_widths: str = "4"  # bit widths, comma-separated, at which quantized weights and updates are compared
seeds: str = "0,1,2"  # comma-separated seeds; runs repeat for each (the lesson says which use the first only)
final_rounds: int = 3  # a reference run's final accuracy: its mean test accuracy over its last final_rounds rounds
early_rounds: int = 0  # R, the first rounds whose mean accuracy the early-convergence check compares; 0: a quarter of num_rounds (at least 2)
results_dir: str = ""  # cached runs and attacks, shared by all lessons; empty: the project's data/runs/
figures_dir: str = ""  # where static PNGs are written; empty: the project's figures/
device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda or mps
theme: str = "screen"  # figures for a laptop screen, or a projector (larger fonts, thicker lines): screen or projector
workers: int = 0  # processes that compute this lesson's runs side by side; 0: one per core

# %% slideshow={"slide_type": "subslide"}
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from fl_lib.core import config
from fl_lib.study import lesson
from fl_lib.study import plots
from fl_lib.core.config import parse_list, parse_seeds
from fl_lib.core.errors import ConfigError
from fl_lib.study.measures import EARLY_FRACTIONS, early_auc_by, early_convergence, early_verdict, paired_verdicts
from fl_lib.study.sweep import sweep

lesson.setup("lee", "mcmahan", theme=theme)
data_root = lesson.folder("data_root", data_root)
results_dir = lesson.folder("results_dir", results_dir)
figures_dir = lesson.folder("figures_dir", figures_dir)

bits_list = parse_list(bit_widths, int)
delta_list = parse_list(delta_bit_widths, int)
seed_list = parse_seeds(seeds)
if final_rounds < 1:
    raise ConfigError(f"final_rounds={final_rounds} is not allowed: must be 1 or more")
if not 0 <= early_rounds <= num_rounds:
    raise ConfigError(f"early_rounds={early_rounds} is not allowed: must be between 0 and num_rounds = {num_rounds}")
base = config.preset(preset, dataset=dataset, data_root=data_root, num_rounds=num_rounds,
                     num_clients=num_clients, alpha=alpha, partition="dirichlet", device=device)
label = {b: "FP32" if b == 32 else f"INT{b}" for b in sorted(set(bits_list + delta_list + [32]))}
shown = ["model", "dataset", "num_clients", "partition", "alpha", "client_fraction", "local_epochs", "batch_size",
         "lr", "momentum", "weight_decay", "augment", "num_rounds"]
pd.DataFrame([{k: getattr(base, k) for k in shown}], index=["base config"])

# %% [markdown] slideshow={"slide_type": "subslide"}
# Every run of this lesson goes through `sweep`: it makes each combination of the values it is given
# (here every bit width with every seed), runs them side by side on the machine's cores and caches each
# one, and returns one table of every run's metrics, with a column per setting. A stored run is not
# computed again, and a longer `num_rounds` continues a stored run from its last round.

# %%
metrics = sweep(base, {"seed": seed_list, "bits": bits_list}, label=lambda c: label[c["bits"]], root=results_dir,
                workers=workers)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Accuracy over rounds (the paper's Figure 1)
#
# Mean over the seeds, with a band of one standard deviation.

# %% slideshow={"slide_type": "subslide"}
plots.accuracy_over_rounds(metrics, title=f"{base.model}, {Path(dataset).stem}, Dirichlet alpha={alpha:g}",
                           name="05_accuracy", figures_dir=figures_dir).show()

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Accuracy per uploaded megabyte
#
# The same curves against the data all clients uploaded so far (MB = $10^6$ bytes, as fl_lib's
# codec counts them: bit-packed codes plus one float32 scale per channel).

# %% slideshow={"slide_type": "subslide"}
plots.accuracy_vs_upload(metrics, title="Test accuracy against cumulative upload",
                         name="05_accuracy_vs_mb", figures_dir=figures_dir).show()
last = metrics[metrics["round"] == num_rounds]
per_bits = last.groupby("bits").agg(final_test_acc=("test_acc", "mean"), final_test_acc_std=("test_acc", "std"),
                                    upload_mb_per_round=("upload_bytes", lambda x: x.mean() / 1e6),
                                    total_upload_mb=("cum_upload_bytes", lambda x: x.mean() / 1e6))
per_bits["upload vs FP32 (%)"] = 100 * (per_bits.total_upload_mb / per_bits.total_upload_mb.get(32, float("nan")) - 1)
per_bits.sort_index(ascending=False).round(4)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Quantized minus FP32, paired by seed
#
# For each seed and round, the difference in test accuracy between the b-bit run and the FP32 run
# with the same seed; then its mean and standard deviation over the seeds:
#
# $$\Delta_t = \mathrm{acc}_t^{\mathrm{INT}b} - \mathrm{acc}_t^{\mathrm{FP32}}$$
#
# Pairing removes what the two runs of one seed share (initialization, partition, batches), so the spread
# of the differences should be smaller than the spread of either curve alone. The cell after the
# table checks it: for each round, the standard deviation over the seeds of $\Delta_t$, of the b-bit
# accuracy and of the FP32 accuracy, each averaged over the rounds.

# %% slideshow={"slide_type": "subslide"}
acc = metrics.dropna(subset=["test_acc"]).pivot_table(index=["seed", "round"], columns="bits", values="test_acc")
diffs = []
if 32 in acc:
    for b in bits_list:
        if b != 32:
            diffs.append(pd.DataFrame({"round": acc.index.get_level_values("round"),
                                       "seed": acc.index.get_level_values("seed"),
                                       "difference": (acc[b] - acc[32]).to_numpy(), "label": f"{label[b]} - FP32"}))
if diffs:
    diffs = pd.concat(diffs, ignore_index=True)
    plots.lines(diffs, "round", "difference", "label", title="Accuracy difference to FP32 (paired by seed)",
                ylabel="test accuracy difference", name="05_difference", figures_dir=figures_dir).show()
    final = diffs[diffs["round"] == diffs["round"].max()]
    summary = pd.DataFrame({
        "mean over rounds": diffs.groupby("label").difference.mean(),
        "final round: mean": final.groupby("label").difference.mean(),
        "final round: std over seeds": final.groupby("label").difference.std(),
        "rounds above FP32 (%)": diffs.groupby(["label", "round"]).difference.mean().gt(0)
                                 .groupby("label").mean() * 100,
        "rounds below FP32 (%)": diffs.groupby(["label", "round"]).difference.mean().lt(0)
                                 .groupby("label").mean() * 100})
    display(summary.round(4))

# %%
if len(diffs) and len(seed_list) > 1:
    per_round_sd = acc.groupby(level="round").std()  # over the seeds, one column per bit width
    checks = []
    for b in [b for b in bits_list if b != 32]:
        paired_sd = (acc[b] - acc[32]).groupby(level="round").std().mean()
        alone_b, alone_32 = per_round_sd[b].mean(), per_round_sd[32].mean()
        holds = paired_sd < min(alone_b, alone_32)
        checks.append(f"* {label[b]} - FP32: {paired_sd:.4f}, against {alone_b:.4f} for {label[b]} alone and "
                      f"{alone_32:.4f} for FP32 alone: **{'holds' if holds else 'does not hold'}** in this run")
    display(Markdown(f"**The paired spread is smaller than either curve's** (standard deviation over the "
                     f"{len(seed_list)} seeds, mean over {acc.index.get_level_values('round').nunique()} rounds):\n\n"
                     + "\n".join(checks)))
elif len(diffs):
    print(f"{len(seed_list)} seed: no spread over seeds, so the paired spread cannot be compared; run with two or more seeds")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Does INT16 rise faster in the early rounds? (the paper's second claim)
#
# Lee & Lee report that INT16's accuracy rises faster than FP32's early on (their Figure 1). Two measures,
# each taken per run and paired with the FP32 run of the same seed:
#
# * **Rounds to a target**, `time_to_target_by` (the best accuracy so far, interpolated between rounds, as
#   in lesson 01), for targets at fixed fractions of the best accuracy FP32 reached (mean over the seeds).
#   The gain is FP32's rounds minus the b-bit run's: positive means faster. A seed whose two runs did not
#   both reach a target is left out of that pair.
# * **Early area**, `early_auc`: the area under the accuracy curve over the first R rounds divided by its
#   width, that is the mean accuracy over those rounds (trapezoids between the evaluated rounds
#   $t_1 < \dots < t_J \le R$):
#
# $$\bar{a}_R = \frac{1}{t_J - t_1} \sum_{j=1}^{J-1} (t_{j+1} - t_j) \, \frac{a_{t_j} + a_{t_{j+1}}}{2}$$
#
# The verdict is `paired_verdicts`' rule of thumb: *faster* when the mean paired gain is larger than its
# standard deviation over the seeds, *slower* when it is below minus that, *no difference* in between.

# %%
R = early_rounds or min(num_rounds, max(2, num_rounds // 4))
early_table = None
if 32 in bits_list:
    early_table, targets = early_convergence(metrics, R)
    print(f"R = {R} of {num_rounds} rounds; targets {', '.join(f'{t:.4f}' for t in targets)} "
          f"({', '.join(f'{f:g}' for f in EARLY_FRACTIONS)} x FP32's best accuracy, mean over "
          f"{len(seed_list)} seed(s)); gains in rounds, early area in accuracy")
    display(early_table.round(4))
else:
    print("the early-convergence check needs FP32 among bit_widths")

# %%
if early_table is not None and 16 in bits_list:
    display(Markdown(early_verdict(early_table, R)))
elif early_table is not None:
    print("the paper's claim is about INT16: add 16 to bit_widths to check it")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## The same experiment, run longer: reference runs
#
# A class cannot wait for long runs, so the project ships finished ones (`reference/README.md` gives each one's
# command, data, rounds and wall time; `python -m fl_lib reference` checks their checksums):
#
# * `reference/quantized-fedavg/`: this lesson's default setting (the quick preset) carried further, drawn
#   beside this lesson's runs;
# * `reference/paper-fig1/`: Lee & Lee's own setting (the `paper` preset; each figure's title prints it), FP32
#   against INT16, on the CIFAR-10 subset, since their full run on every image needs a GPU.
#
# On each, both of the paper's claims are checked as above: the final accuracy (mean of the last
# `final_rounds` rounds, paired by seed) and the early-convergence check with R a quarter of their rounds.

# %% slideshow={"slide_type": "subslide"}
from fl_lib.study import reference


def reference_claims(prefix, live=None, name="05_reference"):
    """Draw the reference runs under `prefix` (beside `live` runs, if given), table them, check both claims on them.
    Returns the verdict sentences, or None where no FP32 and INT16 reference is published."""
    ref = reference.frame(prefix)
    if ref.empty:
        print(f"No reference runs are published in reference/{prefix}.")
        return None
    ref["label"] = ref.bits.map(lambda b: "FP32" if b == 32 else f"INT{b}")
    rounds = int(ref["round"].max())
    cfg = reference.load(reference.names(prefix=prefix)[0]).config
    setting = (f"{cfg.model}, {cfg.num_clients} clients, Dirichlet {cfg.alpha:g}, E = {cfg.local_epochs}, "
               f"B = {cfg.batch_size}, {rounds} rounds")
    drawn = ref if live is None else pd.concat([live.assign(label="live: " + live.label),
                                                ref.assign(label="reference: " + ref.label)])
    plots.accuracy_over_rounds(drawn, title=f"Reference runs ({setting})" if live is None else
                               f"This lesson's runs ({num_rounds} rounds) and the reference runs ({setting})",
                               name=name, figures_dir=figures_dir).show()
    display(reference.table(prefix))
    if not {"FP32", "INT16"} <= set(ref.label):
        print("the claims need FP32 and INT16 reference runs")
        return None
    tail = ref.dropna(subset=["test_acc"]).groupby(["label", "seed"], sort=False).tail(final_rounds)
    final = tail.groupby(["label", "seed"], sort=False).test_acc.mean().reset_index()
    v = paired_verdicts(final, "FP32", "test_acc").loc["INT16"]
    accurate = (f"**INT16 is as accurate as FP32** ({setting}; final accuracy, mean of the last {final_rounds} "
                f"rounds): INT16 minus FP32 {v['mean']:+.4f}" + ("" if pd.isna(v["std"]) else f" (std {v['std']:.4f})")
                + f" over {v.seeds} seed(s) (verdict: {v.verdict}): **{'holds' if v.verdict != 'hurts' else 'does not hold'}** "
                "on these reference runs.")
    ref_R = max(2, rounds // 4)
    ref_early, _ = early_convergence(ref, ref_R)
    display(ref_early.round(4))
    verdicts = [accurate, early_verdict(ref_early, ref_R, where=f"these reference runs ({setting})")]
    display(Markdown("\n\n".join(verdicts)))
    return verdicts


ref_verdicts = reference_claims("quantized-fedavg/", live=metrics)

# %% slideshow={"slide_type": "subslide"}
paper_verdicts = reference_claims("paper-fig1/", name="05_reference_paper")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Quantized weights or quantized updates?
#
# With `upload="weights"` a client sends its quantized model $\hat{w}^k$. With `upload="delta"` it
# sends the quantized update $w^k_{t+1} - w_t$, and the server adds it to $w_t$, which it already
# holds. The quantization error is proportional to the largest value in a channel, and an update is
# much smaller than the weights, so at a low bit width the delta should lose less. `quant_error`
# is the relative error $\|\hat{w} - w\| / \|w\|$ of what the server reconstructs, averaged over the
# clients of a round.

# %% slideshow={"slide_type": "subslide"}
compared = {f"{label[b]}, {u}": {"bits": b, "upload": u} for b in delta_list for u in ("weights", "delta")}
uploads = sweep(base, [{"seed": seed_list, "label": compared}, {"seed": seed_list, "label": {"FP32": {"bits": 32}}}],
                root=results_dir, workers=workers)
plots.accuracy_over_rounds(uploads, title="Quantized weights vs quantized updates",
                           name="05_weights_vs_delta", figures_dir=figures_dir).show()
pd.DataFrame({"final_test_acc": uploads[uploads["round"] == num_rounds].groupby("label").test_acc.mean(),
              "mean quant_error": uploads.groupby("label").quant_error.mean()}).round(5)

# %%
err = uploads.groupby("label").quant_error.mean()
final_uploads = uploads[uploads["round"] == num_rounds]
delta_checks = []
for b in [b for b in delta_list if b != 32]:
    w_label, d_label = f"{label[b]}, weights", f"{label[b]}, delta"
    v = paired_verdicts(final_uploads, w_label, "test_acc").loc[d_label]
    delta_checks.append(
        f"* {label[b]}: mean quant_error {err[d_label]:.3g} (delta) against {err[w_label]:.3g} (weights), "
        f"{err[w_label] / err[d_label]:.1f}x less: **{'holds' if err[d_label] < err[w_label] else 'does not hold'}** "
        f"in this run. Final accuracy, delta minus weights, paired over {v.seeds} seed(s): {v['mean']:+.4f} "
        f"(std {v['std']:.4f}; {v.verdict}).")
display(Markdown("**The delta upload loses less than the weights upload:**\n\n" + "\n".join(delta_checks))
        if delta_checks else Markdown("No quantized bit width in `delta_bit_widths`: nothing to compare."))

# %%
fp32 = per_bits.loc[32] if 32 in per_bits.index else None
lines_out = []
for b in bits_list:
    if b == 32 or fp32 is None:
        continue
    row = per_bits.loc[b]
    d = summary.loc[f"{label[b]} - FP32"] if len(diffs) else None
    lines_out.append(
        f"* **{label[b]}**: {row.upload_mb_per_round:.2f} MB per round against {fp32.upload_mb_per_round:.2f} "
        f"({-row['upload vs FP32 (%)']:.1f}% less); final accuracy {row.final_test_acc:.4f} against "
        f"{fp32.final_test_acc:.4f}; paired difference in the last round {d['final round: mean']:+.4f} "
        f"(std {d['final round: std over seeds']:.4f} over {len(seed_list)} seed(s)); averaged over the seeds "
        f"it was above FP32 in {d['rounds above FP32 (%)']:.0f}% of the rounds and below in "
        f"{d['rounds below FP32 (%)']:.0f}%.")
for found in (ref_verdicts, paper_verdicts):  # the claims on the reference runs, where published
    lines_out += [f"* {v}" for v in found or []]
display(Markdown(f"### In short ({base.model}, {Path(dataset).stem}, {num_rounds} rounds, {len(seed_list)} seed(s))\n\n"
                 + "\n".join(lines_out)))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# Each exercise asks for a prediction first. Write it down, change the variable at the top of the code cell,
# run the cell, and only then open the answer: the cell computes it from the runs, nothing in it is written in
# advance. A bit width among `bit_widths` is read back from the results cache; another one trains its runs first.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 1: does quantization regularize?
#
# The quantization paper explains the quantized model's accuracy, equal to or above FP32's, by the rounding noise
# acting as a regularizer. A regularizer narrows the gap between the accuracy on the training data and on the
# test data. **Predict:** is the final global model's gap (training accuracy minus test accuracy) smaller at
# `bits_try` bits than at FP32, paired by seed? Set `bits_try` and run; `train_images` caps the training images
# scored.

# %%
from fl_lib.core.data import load_dataset
from fl_lib.study.exercises import answer, holds, train_test_accuracy
from fl_lib.study.measures import stored_model

bits_try = min(bits_list)  # change me: the quantized width set against FP32 (one of bit_widths is read back from the cache)
train_images = 5000  # change me: training images scored per model (0: all, slower)
if not 2 <= bits_try <= 16:
    raise ConfigError(f"bits_try={bits_try} is not allowed: choose a quantized width, 2..16, to set against FP32")
sweep(base, {"seed": seed_list, "bits": [32, bits_try]}, root=results_dir, workers=workers)  # cached: reads back
gaps = []
for s in seed_list:
    data_s = load_dataset(dataset, data_root, seed=s)
    for b in (32, bits_try):
        cfg_s = base.replace(seed=s, bits=b)
        at_round, state = stored_model(cfg_s, results_dir)
        train_acc, test_acc = train_test_accuracy(cfg_s, state, data_s, train_images)
        gaps.append({"seed": s, "bits": b, "round": at_round, "train_acc": train_acc, "test_acc": test_acc,
                     "gap": train_acc - test_acc})
gaps = pd.DataFrame(gaps)
display(gaps.round(4))
gap_by = gaps.pivot(index="seed", columns="bits", values="gap")
d_gap = gap_by[bits_try] - gap_by[32]
display(answer(
    f"Final global models (round {gaps['round'].max()}), training accuracy on "
    f"{'all' if train_images <= 0 else f'the first {train_images}'} training images minus test accuracy: "
    + "; ".join(f"seed {s}: {gap_by.loc[s, bits_try]:+.4f} at {bits_try} bits against {gap_by.loc[s, 32]:+.4f} at FP32"
                for s in gap_by.index)
    + f".\n\nThe gap at {bits_try} bits minus FP32's, mean over {len(d_gap)} seed(s): {d_gap.mean():+.4f}"
    + (f" (std {d_gap.std():.4f})" if len(d_gap) > 1 else "")
    + f"; smaller in {int((d_gap < 0).sum())} of {len(d_gap)} seed(s). Quantization narrows the train/test gap, "
      f"as a regularizer would: {holds((d_gap < 0).all())} in this run"
    + (" (a mean difference within one standard deviation of zero is not a clear effect)."
       if len(d_gap) > 1 and abs(d_gap.mean()) <= d_gap.std() else ".")))

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 2: how early is "early"?
#
# The early-convergence check above averages the accuracy over the first R rounds. **Predict:** if the run at
# `early_bits_try` bits leads FP32 early on, does its lead grow or shrink as the window R widens towards
# `num_rounds`? Set `early_bits_try` and `R_try` and run: the cell computes the paired lead for every R.

# %%
early_bits_try = 16  # change me: the quantized bit width set against FP32
R_try = 2  # change me: the early window, 1..num_rounds
if not 2 <= early_bits_try <= 16:
    raise ConfigError(f"early_bits_try={early_bits_try} is not allowed: choose a quantized width, 2..16")
early_runs = sweep(base, {"seed": seed_list, "bits": [32, early_bits_try]}, root=results_dir, workers=workers)


def early_lead(r):
    """Mean over the seeds of the early area over the first r rounds, quantized minus FP32 of the same seed."""
    area = early_auc_by(early_runs, ["bits", "seed"], r)
    return (area.xs(early_bits_try, level="bits") - area.xs(32, level="bits")).mean()


lead = pd.DataFrame({"R": range(1, num_rounds + 1)})
lead["lead"] = [early_lead(r) for r in lead.R]
lead["label"] = f"INT{early_bits_try} - FP32"
plots.lines(lead, "R", "lead", "label", title="Early area: quantized minus FP32, paired by seed, mean over seeds",
            xlabel="early window R (rounds)", ylabel="mean accuracy difference").show()
R_try = min(max(R_try, 1), num_rounds)
at_r, at_end = lead.set_index("R").lead[R_try], lead.lead.iloc[-1]
display(answer(
    f"Mean accuracy over the first R rounds, INT{early_bits_try} minus FP32, paired over {len(seed_list)} seed(s): "
    f"{at_r:+.4f} at R = {R_try}, {at_end:+.4f} over all {num_rounds} rounds.\n\n"
    f"* INT{early_bits_try} leads at R = {R_try}: {holds(at_r > 0)} in this run.\n"
    f"* The lead shrinks as the window widens (smaller over all rounds than at R = {R_try}): "
    f"{holds(at_end < at_r)} in this run."))
