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
# # 06 · What if: label skew against bit width
#
# Lee & Lee report a single point: Dirichlet $\alpha = 0.5$ and INT16. This lesson runs the grid
# around it, every $\alpha$ with every bit width, and summarizes each cell by its final test accuracy
# and the megabytes all clients uploaded. FedAvg itself is McMahan et al.'s (2017). Runs are shared
# with lesson 05 through the results cache whenever the configs agree.

# %% tags=["parameters"] slideshow={"slide_type": "skip"}
preset: str = "quick"  # starting config: quick (small CNN, 1 local epoch) or paper (SqueezeNet 1.0, 5 epochs)
dataset: str = "cifar10"  # cifar10 (torchvision downloads it into data_root), synthetic, or an .npz file
data_root: str = ""  # where datasets are downloaded and built; empty: the project's data/
num_rounds: int = 20  # communication rounds of every run
num_clients: int = 10  # K, clients, all sampled every round
alphas: str = "0.1,0.5,1,100"  # Dirichlet concentrations, comma-separated (smaller: more skew)
bit_widths: str = "32,16,8,4"  # upload bit widths, comma-separated; 32 means float32
aggregator: str = "mean"  # how the server combines uploads: mean (FedAvg's n_k / n) or median (coordinate-wise)
seeds: str = "0"  # comma-separated seeds; runs repeat for each (the lesson says which use the first only)
results_dir: str = ""  # cached runs and attacks, shared by all lessons; empty: the project's data/runs/
figures_dir: str = ""  # where static PNGs are written; empty: the project's figures/
device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda or mps
theme: str = "screen"  # figures for a laptop screen, or a projector (larger fonts, thicker lines): screen or projector
workers: int = 0  # processes that compute this lesson's runs side by side; 0: one per core

# %% slideshow={"slide_type": "subslide"}
from pathlib import Path

import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from fl_lib.core import config
from fl_lib.study import lesson
from fl_lib.study import plots
from fl_lib.core.config import parse_list, parse_seeds
from fl_lib.study.measures import paired_verdicts
from fl_lib.study.sweep import sweep

lesson.setup("lee", "mcmahan", theme=theme)
data_root = lesson.folder("data_root", data_root)
results_dir = lesson.folder("results_dir", results_dir)
figures_dir = lesson.folder("figures_dir", figures_dir)

alpha_list = parse_list(alphas, float)
bits_list = parse_list(bit_widths, int)
seed_list = parse_seeds(seeds)
base = config.preset(preset, dataset=dataset, data_root=data_root, num_rounds=num_rounds,
                     num_clients=num_clients, partition="dirichlet", aggregator=aggregator, device=device)
# one seed has no spread between seeds: the alpha = 0.5 cells (lesson 05's runs) also run with the next seed
spread_alpha = 0.5 if 0.5 in alpha_list else alpha_list[0]
spread_seeds = seed_list if len(seed_list) > 1 else seed_list + [seed_list[0] + 1]
extra_runs = len(bits_list) * (len(spread_seeds) - len(seed_list))
print(f"{len(alpha_list)} alphas x {len(bits_list)} bit widths x {len(seed_list)} seed(s) = "
      f"{len(alpha_list) * len(bits_list) * len(seed_list)} runs of {num_rounds} rounds ({base.model}, "
      f"the server's {base.aggregator} of the uploads)"
      + (f", plus {extra_runs} at alpha = {spread_alpha:g} with seed {spread_seeds[-1]} to measure the spread "
         f"between seeds" if extra_runs else ""))

# %%
# every alpha with every bit width and seed, side by side on the cores; each run cached
axes = [{"alpha": alpha_list, "bits": bits_list, "seed": seed_list}]
if extra_runs:
    axes.append({"alpha": spread_alpha, "bits": bits_list, "seed": spread_seeds[-1]})
all_runs = sweep(base, axes, root=results_dir, workers=workers)
all_cells = all_runs.groupby(["alpha", "bits", "seed"]).agg(  # one row per run: where it ended
    final_test_acc=("test_acc", "last"), best_test_acc=("test_acc", "max"),
    total_upload_mb=("cum_upload_bytes", lambda x: x.iloc[-1] / 1e6))
cells = all_cells[all_cells.index.get_level_values("seed").isin(seed_list)]  # the grid: this lesson's seeds only
grid = cells.groupby(["alpha", "bits"]).mean()
acc_table = grid.final_test_acc.unstack("bits")[bits_list]
mb_table = grid.total_upload_mb.unstack("bits")[bits_list]
acc_table.columns.name = mb_table.columns.name = "bits"
grid.round(4)

# %% slideshow={"slide_type": "subslide"}
plots.grid_heatmap(acc_table, title=f"Final test accuracy after {num_rounds} rounds", fmt=".3f",
                   colorbar="accuracy", name="06_accuracy_grid", figures_dir=figures_dir).show()
plots.grid_heatmap(mb_table, title="Uploaded by all clients (MB)", fmt=".1f", colorbar="MB",
                   name="06_upload_grid", figures_dir=figures_dir).show()

# %% [markdown] slideshow={"slide_type": "slide"}
# ## The headline numbers
#
# Written from the tables above. "Within a point" means the mean final accuracy is at most 0.01
# below FP32's at the same $\alpha$. Whether a difference of that size is more than chance is
# measured, not assumed: for each seed $s$ the paired difference $d_s = \mathrm{acc}(b, s) -
# \mathrm{acc}(32, s)$ (same $\alpha$, same clients and batches), and the spread between seeds is
# the standard deviation $s_d$ of the $d_s$ (`measures.paired_verdicts`). With one seed in `seeds`
# the $\alpha = 0.5$ cells (or the first $\alpha$'s) also run with the next seed to give it; at
# $\alpha = 0.5$ these are lesson 05's runs when its parameters agree, read back from the cache.

# %%
def spread_lines(point=0.01):
    """The spread between seeds of the paired differences to FP32; whether `point` and each difference lie within it."""
    runs = all_cells.reset_index()
    spreads = pd.concat({a: paired_verdicts(runs[runs.alpha == a], reference=32, value="final_test_acc", by="bits")
                         for a in alpha_list}, names=["alpha", "bits"])
    measured = spreads[spreads.seeds >= 2]
    if measured.empty:
        return [f"Spread between seeds: not measured (no cell ran with two seeds), so whether {point:g} is noise "
                f"cannot be judged in this run."]
    s_d = float(np.sqrt((measured["std"] ** 2).mean()))  # pooled over the cells that have a spread
    where = ", ".join(f"alpha = {a:g} at {b} bits" for a, b in measured.index)
    rough = "; two seeds give a rough measure" if measured.seeds.min() < 3 else ""
    out = [f"Spread between seeds of the paired difference to FP32: s_d = {s_d:.4f} (pooled over {where}; "
           f"{int(measured.seeds.min())} seed(s) each{rough}). A difference of {point:g} is within it: "
           f"**{'holds' if point <= s_d else 'does not hold'}** in this run."]
    for (a, b), r in spreads.iterrows():
        within = abs(r["mean"]) <= s_d
        out.append(f"* alpha = {a:g}, {b} bits minus FP32: {r['mean']:+.4f}, the mean over {int(r.seeds)} seed(s); "
                   f"within the spread ({s_d:.4f}): **{'holds' if within else 'does not hold'}**.")
    return ["\n".join(out[:1] + ["", *out[1:]])]


text = [f"Grid of {len(alpha_list)} alphas by {len(bits_list)} bit widths, {num_rounds} rounds of "
        f"{base.model} on {Path(dataset).stem}, {len(seed_list)} seed(s) per cell."]
best = grid.final_test_acc.idxmax()
worst = grid.final_test_acc.idxmin()
text.append(f"Best cell: alpha = {best[0]:g} at {best[1]} bits, accuracy {grid.final_test_acc.max():.4f}; "
            f"worst: alpha = {worst[0]:g} at {worst[1]} bits, {grid.final_test_acc.min():.4f}.")
if 32 in acc_table:
    skew = acc_table[32]
    text.append(f"With FP32 uploads, accuracy goes from {skew.iloc[0]:.4f} at alpha = {skew.index[0]:g} to "
                f"{skew.iloc[-1]:.4f} at alpha = {skew.index[-1]:g}.")
    for b in bits_list:
        if b == 32:
            continue
        d = acc_table[b] - acc_table[32]
        saved = 100 * (1 - mb_table[b].mean() / mb_table[32].mean())
        ok = [f"{a:g}" for a in d.index if d[a] >= -0.01]
        text.append(f"{b} bits: {saved:.1f}% less upload; accuracy minus FP32 from {d.min():+.4f} to "
                    f"{d.max():+.4f} across alphas; within a point of FP32 at alpha = {', '.join(ok) or 'none'}.")
    text += spread_lines()
display(Markdown("\n\n".join(text)))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# Each exercise asks for a prediction first. Write it down, change the variable at the top of the code cell,
# run the cell, and only then open the answer: the cell computes it from the grid above, nothing in it is
# written in advance. Both read the grid's runs, so they take a moment.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 1: where does quantization hurt most?
#
# **Predict:** at `bits_try` bits, at which $\alpha$ of the grid is the accuracy lost against FP32 largest: at the
# most skewed split (the smallest $\alpha$), or elsewhere? Set `bits_try` to one of `bit_widths` and run.

# %%
from fl_lib.core.errors import ConfigError
from fl_lib.study.exercises import answer, holds

bits_try = min(bits_list)  # change me: one of bit_widths other than 32 (the default: the narrowest)
if bits_try not in acc_table or 32 not in acc_table or bits_try == 32:
    raise ConfigError(f"bits_try={bits_try} is not allowed: choose one of bit_widths = {bit_widths} other than 32 "
                      f"(and keep 32 in bit_widths)")
cost = acc_table[bits_try] - acc_table[32]  # per alpha, mean over the seeds
worst_alpha = cost.idxmin()
display(answer(
    f"Final accuracy at {bits_try} bits minus FP32, mean over {len(seed_list)} seed(s): "
    + ", ".join(f"{d:+.4f} at alpha = {a:g}" for a, d in cost.items())
    + (f".\n\nThe largest loss is at alpha = {worst_alpha:g} ({cost.min():+.4f})." if cost.min() < 0 else
       f".\n\nNo alpha lost accuracy at {bits_try} bits in this run.")
    + f" The largest loss is at the most skewed split, alpha = {cost.index.min():g}: "
      f"{holds(cost.min() < 0 and worst_alpha == cost.index.min())} in this run. Set these differences against the "
      f"spread between seeds printed above before reading much into them."))

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 2: fewer bits, lower accuracy?
#
# **Predict:** at one $\alpha$ of the grid, does the final accuracy fall step by step as the bit width narrows, or
# does some narrower width do as well as or better than a wider one? Set `alpha_try` to one of `alphas` and run.

# %%
alpha_try = min(acc_table.index)  # change me: one of alphas (the default: the most skewed)
if alpha_try not in acc_table.index:
    raise ConfigError(f"alpha_try={alpha_try:g} is not allowed: choose one of alphas = {alphas}")
row = acc_table.loc[alpha_try].sort_index(ascending=False)  # widest first
steps = row.diff().dropna()  # narrower minus the next wider width
display(answer(
    f"At alpha = {alpha_try:g}, final accuracy from the widest to the narrowest width: "
    + ", ".join(f"{acc:.4f} at {b} bits" for b, acc in row.items())
    + f".\n\nEvery narrower width lost accuracy against the next wider one: {holds((steps < 0).all())} in this run"
    + ("." if (steps < 0).all() else
       f" (as good or better: {', '.join(f'{b} bits' for b in steps.index[steps >= 0])}).")))
