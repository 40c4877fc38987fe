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

# %% [markdown]
# # 04 · FedAvg with quantized uploads: the paper's experiment
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

# %% tags=["parameters"]
preset: str = "quick"  # starting config: quick (small CNN, 1 local epoch) or paper (SqueezeNet 1.0, 5 epochs)
dataset: str = "cifar10"  # cifar10 (torchvision downloads it into data_root), synthetic, or an .npz file
data_root: str = ""  # where datasets are downloaded and built; empty: the project's data/
num_rounds: int = 20  # communication rounds of every run (the paper: 300)
num_clients: int = 10  # K, clients, all sampled every round (the paper: 10)
alpha: float = 0.5  # Dirichlet concentration of the label split (the paper: 0.5)
bit_widths: str = "32,16,8,4"  # upload bit widths, comma-separated; 32 means float32 (the paper: 32, 16)
delta_bit_widths: str = "4"  # bit widths, comma-separated, at which quantized weights and updates are compared
seeds: str = "0,1,2"  # comma-separated seeds; runs repeat for each (the lesson says which use the first only)
results_dir: str = ""  # cached runs and attacks, shared by all lessons; empty: the project's data/runs/
figures_dir: str = ""  # where static PNGs are written; empty: the project's figures/
device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda or mps
workers: int = 0  # processes that compute this lesson's runs side by side; 0: one per core

# %%
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from fl_lib.core import config
from fl_lib.study import lesson
from fl_lib.study import plots
from fl_lib.core.config import parse_list, parse_seeds
from fl_lib.study.sweep import sweep

lesson.setup("lee", "mcmahan")
data_root = lesson.folder("data_root", data_root)
results_dir = lesson.folder("results_dir", results_dir)
figures_dir = lesson.folder("figures_dir", figures_dir)

bits_list = parse_list(bit_widths, int)
delta_list = parse_list(delta_bit_widths, int)
seed_list = parse_seeds(seeds)
base = config.preset(preset, dataset=dataset, data_root=data_root, num_rounds=num_rounds,
                     num_clients=num_clients, alpha=alpha, partition="dirichlet", device=device)
label = {b: "FP32" if b == 32 else f"INT{b}" for b in sorted(set(bits_list + delta_list + [32]))}
shown = ["model", "dataset", "num_clients", "partition", "alpha", "client_fraction", "local_epochs", "batch_size",
         "lr", "momentum", "weight_decay", "augment", "num_rounds"]
pd.DataFrame([{k: getattr(base, k) for k in shown}], index=["base config"])

# %% [markdown]
# Every run of this lesson goes through `sweep`: it makes each combination of the values it is given
# (here every bit width with every seed), runs them side by side on the machine's cores and caches each
# one, and returns one table of every run's metrics, with a column per setting. A stored run is not
# computed again, and a longer `num_rounds` continues a stored run from its last round.

# %%
metrics = sweep(base, {"seed": seed_list, "bits": bits_list}, label=lambda c: label[c["bits"]], root=results_dir,
                workers=workers)

# %% [markdown]
# ## Accuracy over rounds (the paper's Figure 1)
#
# Mean over the seeds, with a band of one standard deviation.

# %%
plots.accuracy_over_rounds(metrics, title=f"{base.model}, {Path(dataset).stem}, Dirichlet alpha={alpha:g}",
                           name="04_accuracy", figures_dir=figures_dir).show()

# %% [markdown]
# ## Accuracy per uploaded megabyte
#
# The same curves against the data all clients uploaded so far (MB = $10^6$ bytes, as fl_lib's
# codec counts them: bit-packed codes plus one float32 scale per channel).

# %%
plots.accuracy_vs_upload(metrics, title="Test accuracy against cumulative upload",
                         name="04_accuracy_vs_mb", figures_dir=figures_dir).show()
last = metrics[metrics["round"] == num_rounds]
per_bits = last.groupby("bits").agg(final_test_acc=("test_acc", "mean"), final_test_acc_std=("test_acc", "std"),
                                    upload_mb_per_round=("upload_bytes", lambda x: x.mean() / 1e6),
                                    total_upload_mb=("cum_upload_bytes", lambda x: x.mean() / 1e6))
per_bits["upload vs FP32 (%)"] = 100 * (per_bits.total_upload_mb / per_bits.total_upload_mb.get(32, float("nan")) - 1)
per_bits.sort_index(ascending=False).round(4)

# %% [markdown]
# ## Quantized minus FP32, paired by seed
#
# For each seed and round, the difference in test accuracy between the b-bit run and the FP32 run
# with the same seed; then its mean and standard deviation over the seeds:
#
# $$\Delta_t = \mathrm{acc}_t^{\mathrm{INT}b} - \mathrm{acc}_t^{\mathrm{FP32}}$$
#
# Pairing removes what the seeds share (initialization, partition, batches), so this spread is smaller
# than the spread of either curve alone.

# %%
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
                ylabel="test accuracy difference", name="04_difference", figures_dir=figures_dir).show()
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

# %% [markdown]
# ## Quantized weights or quantized updates?
#
# With `upload="weights"` a client sends its quantized model $\hat{w}^k$. With `upload="delta"` it
# sends the quantized update $w^k_{t+1} - w_t$, and the server adds it to $w_t$, which it already
# holds. The quantization error is proportional to the largest value in a channel, and an update is
# much smaller than the weights, so at a low bit width the delta should lose far less. `quant_error`
# is the relative error $\|\hat{w} - w\| / \|w\|$ of what the server reconstructs, averaged over the
# clients of a round.

# %%
compared = {f"{label[b]}, {u}": {"bits": b, "upload": u} for b in delta_list for u in ("weights", "delta")}
uploads = sweep(base, [{"seed": seed_list, "label": compared}, {"seed": seed_list, "label": {"FP32": {"bits": 32}}}],
                root=results_dir, workers=workers)
plots.accuracy_over_rounds(uploads, title="Quantized weights vs quantized updates",
                           name="04_weights_vs_delta", figures_dir=figures_dir).show()
pd.DataFrame({"final_test_acc": uploads[uploads["round"] == num_rounds].groupby("label").test_acc.mean(),
              "mean quant_error": uploads.groupby("label").quant_error.mean()}).round(5)

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
display(Markdown(f"### In short ({base.model}, {Path(dataset).stem}, {num_rounds} rounds, {len(seed_list)} seed(s))\n\n"
                 + "\n".join(lines_out)))
