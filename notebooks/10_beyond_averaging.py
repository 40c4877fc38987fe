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
# # 10 · Beyond plain averaging: FedProx, server optimizers and robust aggregation
#
# The presentation of McMahan et al. (2017) that this project follows ends with a table of FedAvg's limits.
# Three of them are about the average itself:
#
# - **non-IID data**: clients whose label distributions differ pull the model towards different optima, and
#   their plain average can be worse than any of them, or fail to converge;
# - **too much local training**: with a large number of local epochs $E$ each client over-fits its own data,
#   and the global model generalizes worse (the field calls this *client drift*, Karimireddy et al. 2020);
# - **averaging ignores direction**: $\sum_k \frac{n_k}{n} w_k$ weighs a client by its data alone, whichever
#   way its update points, so in a non-convex problem the average can land on a meaningless point.
#
# The presentation proposes *direction-aware* averaging (weights that grow with the cosine similarity of the
# updates $\Delta w$) and *soft clipping* (updates far from the others gently ignored). The field's own
# remedies are older and better tested: FedProx (Li et al. 2020) holds local training near the global
# model; server optimizers (FedAvgM, Hsu et al. 2019; FedAdam and FedYogi, Reddi et al. 2021) give the
# server a memory across rounds; robust aggregation (the coordinate-wise median and trimmed mean, Yin et
# al. 2018) keeps one extreme client from dragging a coordinate.
#
# This lesson runs each of them against FedAvg on a strongly skewed split (Dirichlet $\alpha$ = `alpha`; at
# the default 0.1 most clients hold a few classes), in runs paired by seed: for a given seed every method
# starts from the same model, partition, sampled clients and batches, so the difference between a method
# and FedAvg on the same seed is the method's doing. Then it runs FedAvg at growing $E$ and measures the
# client drift directly, and schedules $E$ over the rounds against a fixed $E$ at equal client compute.

# %% tags=["parameters"] slideshow={"slide_type": "skip"}
preset: str = "quick"  # starting config: quick (small CNN, 1 local epoch) or paper (SqueezeNet 1.0, 5 epochs)
dataset: str = "cifar10"  # cifar10 (torchvision downloads it into data_root), synthetic, or an .npz file
data_root: str = ""  # where datasets are downloaded and built; empty: the project's data/
num_rounds: int = 20  # communication rounds of every run
num_clients: int = 10  # K, clients, all sampled every round
alpha: float = 0.1  # Dirichlet concentration of the label split (0.1: most clients hold a few classes)
methods: str = "FedAvg,FedProx,SCAFFOLD,FedAvgM,FedAdam,FedYogi,median,trimmed_mean,cosine,soft_clip"  # comma-separated methods to run; FedAvg, the reference, always runs
prox_mu: float = 0.01  # mu of FedProx's proximal term (Li et al. pick it from 0.001, 0.01, 0.1 and 1)
server_momentum: float = 0.9  # beta_1, the server's momentum in FedAvgM, FedAdam and FedYogi
avgm_server_lr: float = 1.0  # eta of FedAvgM (1: the server adds the momentum in full, as Flower's default)
adaptive_server_lr: float = 0.01  # eta of FedAdam and FedYogi: about the step per coordinate and round
trim_fraction: float = 0.1  # beta of the trimmed mean: share of the largest and of the smallest values dropped
cosine_temperature: float = 1.0  # T of cosine-weighted averaging (large: FedAvg; small: the best aligned client)
soft_clip: float = 2.0  # c of soft clipping: updates beyond c times the median distance are down-weighted
target: float = 0.3  # test accuracy whose rounds and megabytes to reach are tabled
final_rounds: int = 3  # final accuracy of a run: its mean test accuracy over its last final_rounds rounds
epoch_values: str = "1,5,20"  # E values, comma-separated, of the FedAvg runs of the large-E section (first seed)
schedules: str = "decay,loss,batch"  # schedules of the adaptive-computation section (decay, loss, batch), comma-separated
schedule_epochs: int = 4  # E_1, the local epochs the epoch schedules (decay, loss) start from
epoch_halving: int = 5  # h of the decay schedule: rounds between two halvings of E
epoch_min_drop: float = 0.01  # theta of the loss schedule: relative drop of the training loss below which E halves
batch_doubling: int = 2  # h_B of the batch schedule: rounds between two doublings of the local batch size B
cfl_rounds: int = 20  # rounds of each of the clustered-FL section's two runs (CFL, and one global model)
cfl_model: str = "2nn"  # model of the clustered-FL section (2nn: a small MLP, fast enough for the section's budget)
cfl_images: int = 5000  # training images of the clustered-FL section (the dataset's first; 0: all), test: a fifth
cfl_eps1: float = 0.35  # eps_1: a cluster may split once the norm of its weighted mean update is below this
cfl_eps2: float = 0.7  # eps_2: ... and the norm of its largest client update is above this
cfl_min_rounds: int = 5  # rounds of plain FedAvg before the first split is allowed
seeds: str = "0,1"  # comma-separated seeds; runs repeat for each (the lesson says which use the first only)
results_dir: str = ""  # cached runs and attacks, shared by all lessons; empty: the project's data/runs/
figures_dir: str = ""  # where static PNGs are written; empty: the project's figures/
device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda or mps
theme: str = "screen"  # figures for a laptop screen, or a projector (larger fonts, thicker lines): screen or projector
workers: int = 0  # processes that compute this lesson's runs side by side; 0: one per core

# %% slideshow={"slide_type": "subslide"}
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from IPython.display import Image, Markdown, display

from fl_lib.core import config
from fl_lib.core.aggregators.base import Received
from fl_lib.core.aggregators.cosine import cosine_weights
from fl_lib.core.aggregators.registry import aggregator_class
from fl_lib.core.aggregators.soft_clip import middle, soft_clip_weights
from fl_lib.core.config import parse_list, parse_seeds
from fl_lib.core.clustering import same_partition
from fl_lib.core.data import head, load_dataset
from fl_lib.core.errors import ConfigError
from fl_lib.core.schedule import batch_sizes_per_round, epochs_per_round
from fl_lib.simulator.build import stage_classes
from fl_lib.runtime.clustered_results import run_clustered
from fl_lib.study import lesson
from fl_lib.study import plots
from fl_lib.study.measures import client_updates, drift_stats, paired_verdicts, stored_model, time_to_target
from fl_lib.study.sweep import sweep
from fl_lib.study.widgets import CurveExplorer
from fl_lib.study import reference

lesson.setup("mcmahan", "hsu", "fedprox", "reddi", "yin", "scaffold", "huber", "fedadp", "sattler", theme=theme)
data_root = lesson.folder("data_root", data_root)
results_dir = lesson.folder("results_dir", results_dir)
figures_dir = lesson.folder("figures_dir", figures_dir)

seed_list = parse_seeds(seeds)
epoch_list = parse_list(epoch_values, int)
base = config.preset(preset, dataset=dataset, data_root=data_root, num_rounds=num_rounds, num_clients=num_clients,
                     alpha=alpha, partition="dirichlet", device=device)
METHODS = {  # each method is FedAvg's config with these fields changed
    "FedAvg": {},
    "FedProx": {"prox_mu": prox_mu},
    "SCAFFOLD": {"scaffold": True},
    "FedAvgM": {"server_opt": "avgm", "server_lr": avgm_server_lr, "server_momentum": server_momentum},
    "FedAdam": {"server_opt": "adam", "server_lr": adaptive_server_lr, "server_momentum": server_momentum},
    "FedYogi": {"server_opt": "yogi", "server_lr": adaptive_server_lr, "server_momentum": server_momentum},
    "median": {"aggregator": "median"},
    "trimmed_mean": {"aggregator": "trimmed_mean", "trim_fraction": trim_fraction},
    "cosine": {"aggregator": "cosine", "cosine_temperature": cosine_temperature},
    "soft_clip": {"aggregator": "soft_clip", "soft_clip": soft_clip},
}
asked = parse_list(methods, str)
unknown = [m for m in asked if m not in METHODS]
if unknown:
    raise ConfigError(f"methods={methods!r}: {unknown[0]!r} is not a method of this lesson; choose from "
                      f"{', '.join(METHODS)}")
chosen = list(dict.fromkeys(["FedAvg"] + asked))  # FedAvg first: every verdict is against it
shown = ["model", "dataset", "num_clients", "partition", "alpha", "client_fraction", "local_epochs", "batch_size",
         "lr", "momentum", "num_rounds"]
display(pd.DataFrame([{k: getattr(base, k) for k in shown}], index=["base config (FedAvg)"]))
pd.DataFrame([{"method": m, "changes to FedAvg's config": ", ".join(f"{k}={v}" for k, v in METHODS[m].items()) or "-",
               "stages of its pipeline": " > ".join(c.name for c in stage_classes(base.replace(**METHODS[m])))}
              for m in chosen]).set_index("method")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## What FedAvg computes, and what it ignores
#
# In round $t$ client $k$ trains from the global model $w_t$ for $E$ epochs on its $n_k$ samples and sends
# $w^k_{t+1}$; with $n = \sum_k n_k$ the server takes
#
# $$w_{t+1} = \sum_k \frac{n_k}{n}\, w^k_{t+1} = w_t + \sum_k \frac{n_k}{n}\, \Delta_k, \qquad \Delta_k = w^k_{t+1} - w_t$$
#
# A client's weight depends on its data size only. One client with many samples and an update that points
# the other way moves every coordinate in proportion to its share.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Robust and direction-aware averaging
#
# **Coordinate-wise median and trimmed mean** (Yin et al. 2018): each coordinate $i$ of the next model is
# the median of the $m$ uploads' values, or their mean after dropping the $b = \lfloor \beta m \rfloor$
# largest and $b$ smallest (`trim_fraction` is $\beta$). Both ignore $n_k$: one client, one vote.
#
# $$w_{t+1}[i] = \mathrm{median}_k\, w^k_{t+1}[i], \qquad w_{t+1}[i] = \frac{1}{m - 2b} \sum_{j = b + 1}^{m - b} w^{(j)}_{t+1}[i]$$
#
# where $w^{(1)}[i] \le \dots \le w^{(m)}[i]$ are the values sorted.
#
# **Cosine-weighted averaging**, the presentation's "weights grow with the cosine similarity of
# $\Delta w$". Its exact rule is this project's (`fl_lib/core/aggregators/cosine.py`); the nearest published
# rule is FedAdp (Wu & Wang 2021), which passes a smoothed angle through a Gompertz function. The reference
# direction is FedAvg's own update $r$, and a softmax over the cosines with temperature $T$ reweighs the
# clients, with $n_k$ as the prior:
#
# $$r = \sum_k \frac{n_k}{n} \Delta_k, \qquad c_k = \frac{\langle \Delta_k, r \rangle}{\|\Delta_k\|\, \|r\|}, \qquad a_k = \frac{n_k\, e^{c_k / T}}{\sum_j n_j\, e^{c_j / T}}, \qquad w_{t+1} = w_t + \sum_k a_k \Delta_k$$
#
# When every update points the same way ($c_k = 1$) this is FedAvg, and so it is as $T \to \infty$.
#
# **Soft clipping**, the presentation's "updates that differ too much are gently ignored". Again the exact
# rule is this project's (`soft_clip.py`): Huber's (1964) weight $\min(1, s/d)$ around the coordinate-wise
# median update $\bar\Delta$, with the threshold $s$ set to $c$ times the round's median distance:
#
# $$d_k = \|\Delta_k - \bar\Delta\|, \qquad s = c \cdot \mathrm{median}_k\, d_k, \qquad a_k = \frac{n_k \min(1, s / d_k)}{\sum_j n_j \min(1, s / d_j)}, \qquad w_{t+1} = w_t + \sum_k a_k \Delta_k$$
#
# An update within $s$ of the median keeps FedAvg's weight; one beyond it keeps the weight $n_k s / d_k$,
# so however far it lies its pull $a_k d_k$ stays bounded.
#
# Below, each rule on the same ten made-up two-dimensional updates: seven clients move roughly one way,
# three (holding much of the data) the other way. The aggregators are the very objects the runs build
# (`aggregator_class(name).from_config(cfg)`, with this lesson's settings); the global model is at the
# origin, so each result is the step $w_{t+1} - w_t$.

# %% slideshow={"slide_type": "subslide"}
rng = np.random.default_rng(0)
toy = np.r_[rng.normal([1.0, 0.5], 0.25, size=(7, 2)), rng.normal([-1.2, 0.9], 0.25, size=(3, 2))]
toy_n = [40, 60, 30, 50, 70, 45, 55, 150, 120, 130]  # n_k: the three dissenting clients hold more data
zero = {"w": torch.zeros(2)}
received = [Received(k, {"w": torch.tensor(u, dtype=torch.float32)}, n) for k, (u, n) in enumerate(zip(toy, toy_n))]
rules = {"FedAvg": "mean", "median": "median", "trimmed_mean": "trimmed_mean", "cosine": "cosine",
         "soft_clip": "soft_clip"}
steps = {name: aggregator_class(agg).from_config(base.replace(**METHODS[name])).aggregate(1, zero, received,
                                                                                         list(range(10))).state["w"]
         for name, agg in rules.items()}
weights = pd.DataFrame({"n_k / n": np.array(toy_n) / sum(toy_n),
                        "cosine a_k": aggregator_class("cosine").from_config(base.replace(**METHODS["cosine"]))
                        .weights(zero, received).numpy(),
                        "soft_clip a_k": aggregator_class("soft_clip").from_config(base.replace(**METHODS["soft_clip"]))
                        .weights(zero, received).numpy()}, index=pd.Index(range(10), name="client k"))
weights["direction"] = ["with the majority"] * 7 + ["against"] * 3
fig = go.Figure(go.Scatter(x=toy[:, 0], y=toy[:, 1], mode="markers", name="client updates Delta_k",
                           marker=dict(size=[6 + n / 10 for n in toy_n], color="lightgray",
                                       line=dict(color="gray", width=1)),
                           text=[f"client {k}, n_k = {n}" for k, n in enumerate(toy_n)]))
for i, (name, s) in enumerate(steps.items()):
    fig.add_trace(go.Scatter(x=[0, float(s[0])], y=[0, float(s[1])], mode="lines+markers", name=name,
                             line=dict(color=plots.COLORS[i], width=3), marker=dict(size=[0, 10])))
fig.update_layout(title="Ten client updates and each rule's step (marker size: n_k)", xaxis_title="coordinate 1",
                  yaxis_title="coordinate 2", template=plots.theme.template(), height=440)
fig.update_yaxes(scaleanchor="x", scaleratio=1)
fig.show()
b = int(trim_fraction * len(toy))
majority = torch.tensor(toy[:7].mean(0), dtype=torch.float32)
along = {name: float(s @ majority / majority.norm() ** 2) for name, s in steps.items()}  # 1: the majority's mean
display(pd.DataFrame({name: {"step, coordinate 1": float(s[0]), "step, coordinate 2": float(s[1]),
                             "step along the majority's mean (1: all of it)": along[name]}
                      for name, s in steps.items()}).T.round(3))
share = sum(toy_n[7:]) / sum(toy_n)
display(Markdown(
    f"The three dissenting clients hold {share:.0%} of the data. FedAvg's step goes {along['FedAvg']:.2f} of the "
    f"way along the majority's mean update; the median ({along['median']:.2f}) and the trimmed mean, which drops "
    f"b = {b} value(s) at each end of every coordinate ({along['trimmed_mean']:.2f}), count clients, not samples. "
    f"Soft clipping gives {along['soft_clip']:.2f}. The cosine rule gives {along['cosine']:.2f}: its reference "
    f"direction is FedAvg's own step, so it "
    + ("favours the clients that already dominate that step." if along["cosine"] < along["FedAvg"] else
       "moves towards the majority here.")))
weights.round(3).T

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Held near the global model, and a server with a memory
#
# **FedProx** (Li et al. 2020) changes what a client minimizes: its loss $F_k$ plus a proximal term that
# grows with the distance from the global model $w^t$ it was sent (`prox_mu` is $\mu$; $\mu = 0$ is FedAvg):
#
# $$h_k(w) = F_k(w) + \frac{\mu}{2} \|w - w^t\|^2, \qquad \nabla h_k(w) = \nabla F_k(w) + \mu\, (w - w^t)$$
#
# **SCAFFOLD** (Karimireddy et al. 2020, Algorithm 1, option II) corrects each local step instead: the server
# keeps a control variate $c$, each client its own $c_k$ (both zero at the start, so the first round is
# FedAvg's), and $c - c_k$ estimates how the global gradient differs from client $k$'s. From $y = x$ (the
# global model), with $K_k$ local steps of rate $\eta_l$ (`lr`), $N$ clients and $S$ those of the round:
#
# $$y \leftarrow y - \eta_l \left(g_k(y) - c_k + c\right), \qquad c_k^+ = c_k - c + \frac{x - y}{K_k\, \eta_l}, \qquad x \leftarrow x + \sum_{k \in S} \frac{n_k}{n} (y_k - x), \qquad c \leftarrow c + \frac{1}{N} \sum_{k \in S} (c_k^+ - c_k)$$
#
# The model step is FedAvg's $n_k / n$ mean (the paper's is the plain mean). Each client sends
# $\Delta c_k = c_k^+ - c_k$ beside its model at the same width and receives $c$ beside the model, so its
# traffic is twice FedAvg's (`fl_lib/core/scaffold.py`).
#
# **Server optimizers** read FedAvg's aggregate $y_t$ as a pseudo-gradient $\Delta_t = y_t - x_t$ ($x_t$ the
# global model) and feed it to an optimizer with a memory (Reddi et al. 2021, Algorithm 2; FedAvgM is Hsu et
# al. 2019). With $\eta$ the server learning rate, $\beta_1$ = `server_momentum`, $\beta_2$ = `server_beta2`
# and $\tau$ = `server_tau` (left at fl_lib's defaults, printed with the runs), per coordinate and from
# $m_0 = v_0 = 0$:
#
# $$\mathrm{FedAvgM:}\quad m_t = \beta_1 m_{t-1} + \Delta_t, \qquad x_{t+1} = x_t + \eta\, m_t$$
#
# $$\mathrm{FedAdam:}\quad m_t = \beta_1 m_{t-1} + (1 - \beta_1) \Delta_t, \qquad v_t = \beta_2 v_{t-1} + (1 - \beta_2) \Delta_t^2, \qquad x_{t+1} = x_t + \eta_t \frac{m_t}{\sqrt{v_t} + \tau}$$
#
# $$\mathrm{FedYogi:}\quad v_t = v_{t-1} - (1 - \beta_2)\, \Delta_t^2\, \mathrm{sign}(v_{t-1} - \Delta_t^2), \qquad x_{t+1} = x_t + \eta \frac{m_t}{\sqrt{v_t} + \tau}$$
#
# with FedYogi's $m_t$ as FedAdam's. fl_lib computes them as Flower does (`server_opt.py`, tested against
# Flower's strategies), so FedAdam's rate carries Adam's bias correction,
# $\eta_t = \eta \sqrt{1 - \beta_2^{t+1}} / (1 - \beta_1^{t+1})$, which tends to $\eta$.
#
# *Choosing $\eta$.* FedAvgM's momentum sums the past steps, so a steady update is applied
# $1 / (1 - \beta_1)$ times over: with $\eta$ = `avgm_server_lr` the long-run step is $\eta / (1 - \beta_1)$
# times FedAvg's (at $\eta = 1$ the momentum is added in full, Flower's default). FedAdam and FedYogi divide by $\sqrt{v_t}$: when a coordinate's
# update keeps its sign, $m_t \approx \Delta_t$ and $v_t \approx \Delta_t^2$, so the coordinate moves by about
# $\eta$ per round whatever the size of its update. $\eta$ must then be of the order of the per-coordinate
# size of a FedAvg step, far below FedAvg's implicit 1; Reddi et al. tune it on a logarithmic grid.
# `adaptive_server_lr` is compared with the measured size of a FedAvg step in the large-$E$ section below.
#
# The runs: every chosen method on every seed, each cached. The FedAvg runs at the other $E$ of the large-$E$
# section (first seed) are computed in the same sweep, so that every core stays busy. A run that fails (a
# method that diverges) is kept as a row with its error, reported below, instead of stopping the lesson.

# %%
seed0 = seed_list[0]
e_name = {e: "FedAvg" if e == base.local_epochs else f"FedAvg, E = {e}" for e in epoch_list}
e_runs = {e_name[e]: {"local_epochs": e} for e in epoch_list if e != base.local_epochs}
grids = [{"seed": seed_list, "method": {m: METHODS[m] for m in chosen}}]
if e_runs:
    grids.append({"seed": seed0, "method": e_runs})
everything = sweep(base, grids, root=results_dir, workers=workers, errors="keep")
failed = everything[everything.error.notna()]
for r in failed.itertuples():
    print(f"{r.method}, seed {r.seed}: failed ({r.error}); left out of every table below")
everything = everything[everything.error.isna()].drop(columns="error")
metrics = everything[everything.method.isin(chosen)].copy()
metrics["cum_upload_mb"] = metrics.cum_upload_bytes / 1e6
effective = avgm_server_lr / (1 - server_momentum)
print(f"{metrics.groupby(['method', 'seed']).ngroups} runs of {num_rounds} rounds ({base.model}, "
      f"{Path(dataset).stem}, Dirichlet alpha = {alpha:g}); server optimizers: beta_1 = {server_momentum:g}, "
      f"beta_2 = {base.server_beta2:g}, tau = {base.server_tau:g}; FedAvgM's long-run step: eta / (1 - beta_1) = "
      f"{effective:g} times FedAvg's")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Accuracy against rounds and megabytes
#
# Mean over the seeds, with a band of one standard deviation. Every method here uploads the same float32
# model, so a megabyte costs the same in each and the second figure differs from the first only in its
# axis; it is there for the rounds-to-target table below.

# %% slideshow={"slide_type": "subslide"}
plots.lines(metrics, "round", "test_acc", "method", title=f"Test accuracy, Dirichlet alpha = {alpha:g}",
            ylabel="test accuracy", name="10_accuracy", figures_dir=figures_dir).show()
plots.lines(metrics, "cum_upload_mb", "test_acc", "method", title="Test accuracy against cumulative upload",
            xlabel="cumulative upload (MB)", ylabel="test accuracy", name="10_accuracy_vs_mb",
            figures_dir=figures_dir).show()

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Final accuracy, rounds and megabytes to the target
#
# A run's *final accuracy* is its mean test accuracy over its last `final_rounds` evaluated rounds: on a
# split this skewed the accuracy jumps from round to round, and one round's value would mostly measure the
# jump. Rounds to `target` are read from the best accuracy so far, interpolated between evaluations as
# McMahan et al. count them (`measures.time_to_target`); megabytes likewise. Means and standard deviations
# are over the seeds (for the target, over the seeds that reached it).

# %%
per_run = []
for (method, seed), m in metrics.groupby(["method", "seed"], sort=False):
    evaluated = m.dropna(subset=["test_acc"])
    per_run.append({"method": method, "seed": seed, "final_acc": evaluated.test_acc.tail(final_rounds).mean(),
                    "rounds": time_to_target(m, target, x="round"),
                    "MB": time_to_target(m, target, x="cum_upload_mb")})
per_run = pd.DataFrame(per_run).astype({"rounds": float, "MB": float})
summary = per_run.groupby("method", sort=False).agg(
    final_acc=("final_acc", "mean"), final_acc_std=("final_acc", "std"),
    reached=("rounds", lambda x: f"{x.notna().sum()} of {len(x)}"),
    rounds_to_target=("rounds", "mean"), rounds_std=("rounds", "std"), MB_to_target=("MB", "mean"))
display(Markdown(f"**Final accuracy** (last {final_rounds} round(s)) **and the way to {target:g}**, "
                 f"{len(seed_list)} seed(s):"))
summary.round(4)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### The verdict, paired by seed
#
# For method $m$ and seed $s$, the paired difference to FedAvg is
# $d_s = \mathrm{acc}_s^{m} - \mathrm{acc}_s^{\mathrm{FedAvg}}$ (final accuracies as above, same seed, so the
# same start, split and batches). Over the $S$ seeds its mean $\bar d$ and sample standard deviation $s_d$:
#
# $$\bar d = \frac{1}{S} \sum_s d_s, \qquad s_d = \sqrt{\frac{1}{S - 1} \sum_s (d_s - \bar d)^2}$$
#
# The rule (`measures.paired_verdicts`): **helps** if $\bar d > s_d$, **hurts** if $\bar d < -s_d$, **no
# difference** otherwise; with one seed there is no spread and no verdict. It is a rule of thumb for a
# lesson, not a significance test: with two seeds $s_d$ rests on a single degree of freedom, and a real claim
# needs more seeds and rounds.

# %%
verdicts = paired_verdicts(per_run, "FedAvg", "final_acc", by="method")
verdicts.round(4)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### The same grid, run longer: reference runs
#
# A class cannot wait for long runs, so the project ships some in `reference/remedies/` (`reference/README.md`
# lists their data, rounds, machine and the command that extends them). A reference is used only where it is
# exactly this lesson's run carried further: the same config key (`reference.find`; every field but
# `num_rounds`, with an .npz file matched by its content). Where every method and seed has one, the verdict
# above is repeated on them, with the same rule and `final_rounds`.

# %%
wanted = {(m, s): base.replace(seed=s, **METHODS[m]) for m in chosen for s in seed_list}
longer = reference.longer(wanted)
with_ref = [m for m in chosen if all((m, s) in longer for s in seed_list)]  # a verdict needs every seed
without_ref = [m for m in chosen if m not in with_ref]
if "FedAvg" in with_ref and len(with_ref) > 1:
    ref_runs = reference.stacked({(m, s): longer[m, s] for m in with_ref for s in seed_list}, ("method", "seed"))
    ref_rounds = int(ref_runs["round"].max())
    plots.lines(ref_runs, "round", "test_acc", "method", title=f"Reference runs: {ref_rounds} rounds, "
                f"{len(seed_list)} seed(s), the same configs", ylabel="test accuracy", name="10_reference",
                figures_dir=figures_dir).show()
    ref_final = pd.DataFrame([{"method": m, "seed": s, "final_acc": g.dropna(subset=["test_acc"]).test_acc
                               .tail(final_rounds).mean()} for (m, s), g in ref_runs.groupby(["method", "seed"])])
    ref_verdicts = paired_verdicts(ref_final, "FedAvg", "final_acc", by="method")
    changed = [m for m in ref_verdicts.index if m in verdicts.index and ref_verdicts.verdict[m] != verdicts.verdict[m]]
    display(Markdown(f"Over {ref_rounds} rounds: " + "; ".join(
        f"**{m}** {r['mean']:+.4f}" + ("" if pd.isna(r["std"]) else f" (std {r['std']:.4f})") + f", **{r.verdict}**"
        for m, r in ref_verdicts.iterrows()) + f". Verdicts that differ from the {num_rounds}-round run above: "
        + (", ".join(changed) or "none") + "." + ("" if not without_ref else " No reference for every seed of: "
        + ", ".join(without_ref) + ".")))
    ref_text = (f"**Over {ref_rounds} rounds** (reference runs): helps: "
                + (", ".join(ref_verdicts.index[ref_verdicts.verdict == "helps"]) or "none") + "; hurts: "
                + (", ".join(ref_verdicts.index[ref_verdicts.verdict == "hurts"]) or "none") + ".")
    display(ref_verdicts.round(4))
else:
    ref_text = ""
    print(f"No longer reference runs of FedAvg and another method of this grid, on every seed, are published in "
          f"reference/ ({len(longer)} of the {len(wanted)} runs have one), so the verdict rests on the {num_rounds}-round "
          f"runs above.")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## The large-$E$ limit: client drift
#
# McMahan et al. raise $E$ to cut communication: more local work per round, fewer rounds. The presentation
# lists the cost: with a large $E$ a client over-fits its own data. Here FedAvg runs at each $E$ of
# `epoch_values` on the same split (the first seed only, computed with the methods above; a run at $E$
# trains $E$ times as long per round).
#
# What the runs record shows the symptom: `train_loss` is the clients' mean loss on their own data during
# local training, `test_loss` the global model's loss on the test set; a client that fits its own classes
# better and better while the global model does not improve is drifting.
#
# To measure the drift itself, every client trains once more, at each $E$, from **one common model** (the
# last stored global model of the FedAvg run at the base config's $E$), and its update $\Delta_k$ is kept
# (`measures.client_updates`; nothing is aggregated or stored). With $p_k = n_k / n$ and FedAvg's step
# $\Delta = \sum_k p_k \Delta_k$ over the $d$ parameters (`measures.drift_stats`):
#
# $$\mathrm{update\ norm} = \sum_k p_k \|\Delta_k\|, \qquad \mathrm{agreement} = \frac{\|\Delta\|}{\sum_k p_k \|\Delta_k\|}, \qquad \mathrm{spread} = \sum_k p_k \|\Delta_k - \Delta\|, \qquad \mathrm{rms} = \frac{\|\Delta\|}{\sqrt{d}}$$
#
# Agreement lies between 0 and 1: 1 when all clients move the same way, near 0 when their walks cancel. Two
# effects pull it in opposite directions as $E$ grows. Minibatch noise, which makes a short walk partly
# random, averages out over a longer one and raises the agreement; the walk towards each client's own
# optimum, the drift, lowers it. Which one wins at these $E$ is measured, not assumed. The spread grows with
# $E$ in either case; what drift adds is spread that FedAvg's step does not gain.

# %% slideshow={"slide_type": "subslide"}
by_epochs = everything[(everything.seed == seed0) & everything.method.isin(e_name.values())].copy()
by_epochs["local_epochs"] = by_epochs.method.map({name: e for e, name in e_name.items()})
by_epochs["label"] = [f"E = {e}" for e in by_epochs.local_epochs]
by_epochs["generalization gap"] = by_epochs.test_loss - by_epochs.train_loss
for y, title, name in (("test_acc", "Test accuracy", "10_epochs_accuracy"),
                       ("train_loss", "Clients' training loss (their own data)", "10_epochs_train_loss"),
                       ("generalization gap", "Test loss minus clients' training loss", "10_epochs_gap")):
    plots.lines(by_epochs, "round", y, "label", title=f"{title}, FedAvg at each E (seed {seed0})", ylabel=y,
                name=name, figures_dir=figures_dir).show()
by_e = by_epochs.dropna(subset=["test_acc"]).groupby("local_epochs").agg(
    final_acc=("test_acc", lambda x: x.tail(final_rounds).mean()),
    final_train_loss=("train_loss", lambda x: x.tail(final_rounds).mean()),
    final_test_loss=("test_loss", lambda x: x.tail(final_rounds).mean()),
    best_acc=("test_acc", "max"))
by_e["gap"] = by_e.final_test_loss - by_e.final_train_loss
by_e["local epochs in all"] = [e * num_rounds for e in by_e.index]
by_e.round(4)

# %%
start_round, start = stored_model(base.replace(seed=seed0), results_dir)
data0 = load_dataset(dataset, data_root, seed=seed0)
drift, updates_at = {}, {}
for e in sorted(epoch_list):
    updates_at[e], sizes, losses = client_updates(base.replace(seed=seed0, local_epochs=e), start, start_round + 1,
                                                  data=data0)
    drift[e] = drift_stats(updates_at[e], sizes) | {"train_loss": float(np.mean(losses))}
drift = pd.DataFrame(drift).T.rename_axis("local_epochs")
display(Markdown(f"Client drift from the FedAvg model of round {start_round} (E = {base.local_epochs}, seed "
                 f"{seed0}), every client training as in round {start_round + 1}:"))
drift.round(5)

# %% [markdown] slideshow={"slide_type": "subslide"}
# The same updates show what the two rules of the presentation do on real clients rather than toy ones. At
# the base $E$, below: each client's share $n_k / n$, its cosine weight $a_k$ and soft-clipping weight
# $a_k$ (computed by `cosine_weights` and `soft_clip_weights`, the functions the aggregators call), and its
# distance to the median update in units of the median distance, $d_k / \mathrm{median}_j\, d_j$: soft
# clipping down-weights exactly the clients beyond `soft_clip`.

# %%
e_rule = base.local_epochs if base.local_epochs in updates_at else min(updates_at)
U = updates_at[e_rule]
distance = torch.linalg.vector_norm(U - middle(U), dim=1)
real_weights = pd.DataFrame({"n_k / n": np.array(sizes) / sum(sizes),
                             "cosine a_k": cosine_weights(U, sizes, cosine_temperature).numpy(),
                             "soft_clip a_k": soft_clip_weights(U, sizes, soft_clip).numpy(),
                             "d_k / median d": (distance / middle(distance)).numpy()},
                            index=pd.Index(range(len(sizes)), name="client k"))
clipped = int((real_weights["d_k / median d"] > soft_clip).sum())
moved = (real_weights["cosine a_k"] - real_weights["n_k / n"]).abs().sum() / 2
display(Markdown(f"At E = {e_rule}, soft clipping (c = {soft_clip:g}) down-weights {clipped} of {len(sizes)} "
                 f"clients (the farthest lies {real_weights['d_k / median d'].max():.2f} median distances from the "
                 f"median update); the cosine weights move {moved:.1%} of the total weight away from FedAvg's "
                 f"n_k / n."))
real_weights.round(3).T

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Adaptive local computation
#
# The presentation proposes to schedule the local work instead of fixing it: many local epochs early, while
# the clients' updates still agree and local steps are cheap progress, few later, when extra epochs mostly
# pull each client towards its own data; or less local work once the training loss stops falling.
# `epoch_schedule` (`fl_lib/core/schedule.py`) gives the local epochs $E_t$ of round $t$, starting from
# $E_1$ = `schedule_epochs`, with $h$ = `epoch_halving`, $\theta$ = `epoch_min_drop` and $L_t$ the round's
# recorded `train_loss`:
#
# $$\mathrm{decay:}\quad E_t = \max\Big(1, \Big\lfloor \frac{E_1}{2^{\lfloor (t - 1) / h \rfloor}} \Big\rfloor\Big)$$
#
# $$\mathrm{loss:}\quad E_{t+1} = \begin{cases} \max(1, \lfloor E_t / 2 \rfloor) & \text{if } E_{t-1} = E_t \text{ and } (L_{t-1} - L_t) / L_{t-1} < \theta \\ E_t & \text{otherwise (and } E_2 = E_1) \end{cases}$$
#
# The third schedule keeps $E$ and grows the local batch instead (`batch_schedule="grow"`), with $B$ the base
# config's batch size, $h_B$ = `batch_doubling` and no cap:
#
# $$\mathrm{batch:}\quad B_t = B \cdot 2^{\lfloor (t - 1) / h_B \rfloor}$$
#
# Larger batches late mean fewer, less noisy local steps for the same sample passes (Smith, Kindermans, Ying and
# Le 2018, *Don't Decay the Learning Rate, Increase the Batch Size*): shallower local work with no change in
# compute, so its fair reference is fixed $E$ and $B$ for the same rounds.
#
# The loss rule compares two rounds at the same $E$ only: a round's loss is the mean over its local epochs,
# so right after $E$ halves it is higher whatever the model does. Both rules depend only on $t$ and the
# recorded metrics, so `epochs_per_round` replays $E_t$ from a run's `train_loss` column.
#
# Every client trains in every round here, so round $t$ costs $E_t\, n$ sample passes ($n$ training samples)
# and the client compute up to round $T$ is $n \sum_{t \le T} E_t$. The fair reference spends the same
# compute at a fixed $E$: FedAvg at the base config's $E$ (the runs above, same seeds), run for
#
# $$R = \Big\lceil \frac{1}{E} \sum_{t=1}^{T} E_t \Big\rceil$$
#
# rounds, exactly the schedule's compute when $E$ divides the sum (the table prints both). The two runs
# spend the same compute in $T$ and $R$ rounds, so they also differ in communication: a schedule that mostly
# trains above $E$ needs fewer rounds. The verdict is the paired rule above, on the final accuracy (mean over
# the last `final_rounds` rounds) of two runs that end at equal compute. The schedules run on every seed.

# %% slideshow={"slide_type": "subslide"}
SCHEDULES = {"decay": {"local_epochs": schedule_epochs, "epoch_schedule": "decay", "epoch_halving": epoch_halving},
             "loss": {"local_epochs": schedule_epochs, "epoch_schedule": "loss", "epoch_min_drop": epoch_min_drop},
             "batch": {"batch_schedule": "grow", "batch_doubling": batch_doubling}}  # E stays the base E
asked_schedules = parse_list(schedules, str)
unknown = [s for s in asked_schedules if s not in SCHEDULES]
if unknown:
    raise ConfigError(f"schedules={schedules!r}: {unknown[0]!r} is not a schedule; choose from "
                      f"{', '.join(SCHEDULES)}")
schedule_changes = {s: SCHEDULES[s] for s in asked_schedules}
scheduled = sweep(base, [{"seed": seed_list, "schedule": schedule_changes}], root=results_dir, workers=workers)
n_train = len(data0.y_train)  # every client trains every round (C = 1): a round at E_t costs E_t n sample passes
E = base.local_epochs
plans = {}  # (schedule, seed) -> E_t of each round, their sum, and R, the rounds of fixed E with that compute
for s in asked_schedules:
    for seed in seed_list:
        m = scheduled[(scheduled.schedule == s) & (scheduled.seed == seed)]
        e_t = epochs_per_round(base.replace(**schedule_changes[s]), m.train_loss)
        plans[s, seed] = {"E_t": e_t, "total": sum(e_t), "R": -(-sum(e_t) // E)}  # R = ceil(sum E_t / E)
fixed = sweep(base.replace(num_rounds=max(p["R"] for p in plans.values())), {"seed": seed_list}, root=results_dir,
              workers=workers)
fixed_label = f"fixed E = {E}"


def final_acc(m) -> float:
    """Mean test accuracy of the last final_rounds evaluated rounds of one run's rows."""
    return m.dropna(subset=["test_acc"]).test_acc.tail(final_rounds).mean()


curves, compared, table = [], [], []
for (s, seed), p in plans.items():
    m = scheduled[(scheduled.schedule == s) & (scheduled.seed == seed)]
    f = fixed[(fixed.seed == seed) & (fixed["round"] <= p["R"])]  # the fixed run up to equal compute
    curves.append(m.assign(run=f"{s}, seed {seed}", compute=np.cumsum(p["E_t"]) * n_train))
    compared += [{"schedule": s, "method": s, "seed": seed, "final_acc": final_acc(m)},
                 {"schedule": s, "method": fixed_label, "seed": seed, "final_acc": final_acc(f)}]
    b_t = batch_sizes_per_round(base.replace(**schedule_changes[s]), len(p["E_t"]))
    table.append({"schedule": s, "seed": seed, "E_t, round by round": " ".join(map(str, p["E_t"])),
                  "B_t, round by round": " ".join(map(str, b_t)),
                  "rounds T": len(p["E_t"]), "compute / n": p["total"], "fixed rounds R": p["R"],
                  "fixed compute / n": p["R"] * E, "final_acc, schedule": final_acc(m),
                  f"final_acc, {fixed_label}": final_acc(f)})
for seed in seed_list:
    f = fixed[fixed.seed == seed]
    curves.append(f.assign(run=f"{fixed_label}, seed {seed}", compute=f["round"] * E * n_train))
plots.lines(pd.concat(curves, ignore_index=True), "compute", "test_acc", "run",
            title="Test accuracy against cumulative client compute, one line per run",
            xlabel="cumulative client compute (local epochs x samples)", ylabel="test accuracy",
            name="10_schedule_compute", figures_dir=figures_dir).show()
table = pd.DataFrame(table).set_index(["schedule", "seed"])
table.round(4)

# %%
compared = pd.DataFrame(compared)
schedule_verdicts = pd.concat([paired_verdicts(compared[compared.schedule == s], fixed_label, "final_acc",
                                               by="method") for s in asked_schedules])
unequal = table[table["fixed compute / n"] != table["compute / n"]]
parts = []
for s, row in schedule_verdicts.iterrows():
    p = plans[s, seed0]
    b_t = batch_sizes_per_round(base.replace(**schedule_changes[s]), len(p["E_t"]))
    b_text = f", B_t = {' '.join(map(str, b_t))}" if len(set(b_t)) > 1 else ""
    parts.append(f"**{s}** (seed {seed0}: E_t = {' '.join(map(str, p['E_t']))}{b_text}, {len(p['E_t'])} rounds where "
                 f"{fixed_label} needs {p['R']} for the same compute): paired difference in final accuracy "
                 f"{row['mean']:+.4f}" + ("" if pd.isna(row["std"]) else f" (std {row['std']:.4f})")
                 + f", **{row.verdict}**")
schedule_text = (f"**Adaptive local computation** against FedAvg at {fixed_label} with equal client compute: "
                 + "; ".join(parts) + "."
                 + ("" if unequal.empty else f" In {len(unequal)} run(s) E = {E} does not divide the schedule's "
                    f"compute, and the fixed run got up to {E - 1} epoch(s) x n more."))
display(Markdown(schedule_text))
schedule_verdicts.round(4)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Clustered FL: when one model cannot fit everyone
#
# Every remedy above still looks for one global model. Sattler, Müller and Samek (2020) ask first whether one
# model can serve every client at all, and take as their example clients that label the same images
# differently. Here client $k$ belongs to group $g = k \bmod 2$, and group 1 relabels every label $y$ as
# $y \oplus 1$ (exclusive or): on CIFAR-10 airplane and automobile trade places, and so do bird and cat, deer
# and dog, frog and horse, ship and truck (`fl_lib/core/label_swap.py`). One model can at best learn the pair
# and guess within it; a model per group can be right everywhere.
#
# Clustered FL runs FedAvg inside every cluster $c$ (at first one cluster of all clients): client $k$ trains
# from the cluster's model $w_c$ and sends $\Delta_k = w_k - w_c$. When FedAvg has nearly stopped moving the
# cluster's model while some client still wants to move it far, no single model fits the cluster, and it is
# split in two (Algorithm 1; `fl_lib/core/clustering.py`), with $n_c = \sum_{k \in c} n_k$:
#
# $$\Big\| \sum_{k \in c} \frac{n_k}{n_c} \Delta_k \Big\| < \varepsilon_1 \qquad \text{and} \qquad \max_{k \in c} \|\Delta_k\| > \varepsilon_2$$
#
# The two parts are the ones whose updates agree least across the cut, by the cosine similarity $\alpha_{ij}$
# of two clients' updates:
#
# $$\alpha_{ij} = \frac{\langle \Delta_i, \Delta_j \rangle}{\|\Delta_i\|\, \|\Delta_j\|}, \qquad c_1, c_2 = \arg\min_{c_1 \cup c_2 = c}\; \max_{i \in c_1,\, j \in c_2} \alpha_{ij}$$
#
# The minimizer is single linkage's split of the distances $1 - \alpha_{ij}$ into two clusters, which scipy
# computes (the authors' code uses complete linkage, a heuristic for the same goal). Each part then takes the
# $n_k$-weighted mean of its own clients' models, trains on, and may split again.
#
# The section runs `cfl_model` on the first `cfl_images` training images (and a fifth as many test images),
# split IID over the `num_clients` clients so that the labelling is the only difference between them, every
# client in every round, for `cfl_rounds` rounds (`fl_lib/simulator/clustered.py`). No split is allowed before
# round `cfl_min_rounds` + 1. A second run with $\varepsilon_1 = 0$ never splits: it is FedAvg on the same
# population, identical to the clustered run up to its first split. A client's accuracy is that of its
# cluster's model on the test images as the client's group labels them; the runs report the mean over clients.

# %% slideshow={"slide_type": "subslide"}
cfl_data = head(data0, cfl_images, cfl_images // 5)
cfl_cfg = base.replace(seed=seed0, model=cfl_model, partition="iid", num_rounds=cfl_rounds, cfl_eps1=cfl_eps1,
                       cfl_eps2=cfl_eps2, cfl_min_rounds=cfl_min_rounds)
cfl_part = f"head={cfl_images},{cfl_images // 5}" if cfl_images else ""  # names the data beyond cfl_cfg.dataset
cfl = run_clustered(cfl_cfg, cfl_data, subset=cfl_part, root=results_dir, log=lambda msg: None)  # cached
one_model = run_clustered(cfl_cfg.replace(cfl_eps1=0.0), cfl_data, subset=cfl_part, root=results_dir,
                          log=lambda msg: None)
display(Image(filename=str(plots.cluster_assignments(cfl.assignments, cfl.groups, cfl.norms, cfl_eps1, cfl_eps2,
                                                     "10_cfl_clusters", figures_dir))))
cfl_acc = pd.concat([cfl.metrics.assign(run="clustered FL"), one_model.metrics.assign(run="one global model")])
plots.lines(cfl_acc, "round", "test_acc", "run", title="Label-swapped groups: mean client test accuracy",
            ylabel="test accuracy (each client's model, its group's labels)", name="10_cfl_accuracy",
            figures_dir=figures_dir).show()

# %%
recovered = same_partition(cfl.assignments[-1], cfl.groups)
split_rounds = cfl.metrics.loc[cfl.metrics.splits > 0, "round"].tolist()
acc_clusters, acc_one = cfl.metrics.test_acc.iloc[-1], one_model.metrics.test_acc.iloc[-1]
cfl_text = (f"**Clustered FL {'recovered' if recovered else 'did not recover'} the two label groups in this run**: "
            f"after round {cfl_rounds} the {num_clients} clients form {cfl.metrics.num_clusters.iloc[-1]} "
            f"cluster(s), " + (f"split in round(s) {', '.join(map(str, split_rounds))}" if split_rounds else
                               "since no cluster met the split criterion")
            + f". Mean client test accuracy after round {cfl_rounds}: {acc_clusters:.4f} with a model per cluster, "
            f"{acc_one:.4f} with one global model (a difference of {acc_clusters - acc_one:+.4f}).")
display(Markdown(cfl_text))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## A widget: overlay the methods you choose
#
# Tick the methods to compare and pick the metric; the curves are the runs above, mean over the seeds with
# a band of one standard deviation. It only redraws what is cached: nothing is trained.

# %% tags=["widget"] slideshow={"slide_type": "subslide"}
explorer = CurveExplorer(metrics, hue="method", chosen=chosen[:3])
explorer

# %% [markdown] slideshow={"slide_type": "slide"}
# ## In short
#
# Every sentence below is written from the runs above.

# %%
def fmt(mean, std):
    return f"{mean:.4f}" + ("" if pd.isna(std) else f" ± {std:.4f}")


ref = summary.loc["FedAvg"]
text = [f"**Setup.** {base.model} on {Path(dataset).stem}, {num_clients} clients, Dirichlet alpha = {alpha:g}, "
        f"{num_rounds} rounds, {len(seed_list)} seed(s); final accuracy = mean test accuracy of the last "
        f"{final_rounds} round(s). FedAvg ended at {fmt(ref.final_acc, ref.final_acc_std)} and reached "
        f"{target:g} in {ref.reached} seed(s)."]
lines_out = []
for m, row in verdicts.iterrows():
    s = summary.loc[m]
    per_seed = ", ".join(f"{v:+.4f}" for v in row[[c for c in verdicts.columns if c.startswith("seed ")]].dropna())
    lines_out.append(f"* **{m}**: final accuracy {fmt(s.final_acc, s.final_acc_std)}; paired difference to FedAvg "
                     f"{row['mean']:+.4f}" + ("" if pd.isna(row['std']) else f" (std {row['std']:.4f})")
                     + f", per seed {per_seed}: **{row.verdict}**; reached {target:g} in {s.reached} seed(s)"
                     + ("" if pd.isna(s.rounds_to_target) else f", in {s.rounds_to_target:.1f} rounds "
                        f"({s.MB_to_target:.1f} MB) on average") + ".")
if failed.size:
    lines_out.append(f"* Failed runs, left out: {', '.join(sorted(set(failed.method)))}.")
text.append("**Against FedAvg, paired by seed** (helps: mean difference above its std; hurts: below minus its "
            "std):\n\n" + "\n".join(lines_out))
counts = verdicts.verdict.value_counts()
text.append("In this run " + ", ".join(f"{counts.get(v, 0)} method(s) {v}" for v in
                                       ("helps", "no difference", "hurts")) + "; "
            + ("no method helped" if counts.get("helps", 0) == 0 else
               "helped: " + ", ".join(verdicts.index[verdicts.verdict == "helps"])) + ".")
if ref_text:
    text.append(ref_text)
def every_step(values, rising=True) -> bool:
    """Whether a sequence rises (or falls) from each entry to the next."""
    steps = np.diff(np.asarray(values, dtype=float))
    return bool(np.all(steps > 0) if rising else np.all(steps < 0))


ordered = drift.loc[sorted(drift.index)]
gaps = by_e.sort_index().gap
large_e = (f"**Large E** (seed {seed0}): final accuracy "
           + ", ".join(f"{by_e.loc[e, 'final_acc']:.4f} at E = {e}" for e in by_e.index)
           + "; clients' training loss " + ", ".join(f"{by_e.loc[e, 'final_train_loss']:.3f}" for e in by_e.index)
           + ", test loss minus training loss " + ", ".join(f"{by_e.loc[e, 'gap']:+.3f}" for e in by_e.index) + ".")
if len(ordered) < 2:
    large_e += " With a single E there is nothing to compare."
else:
    lo, hi = ordered.index[0], ordered.index[-1]
    agreement = ordered.agreement
    trend = ("rises with every larger E: at these E the averaging out of minibatch noise outweighs the drift"
             if every_step(agreement) else
             "falls with every larger E: at these E the clients' walks part faster than their noise averages out"
             if every_step(agreement, rising=False) else "neither rises nor falls with every larger E")
    large_e += (f" The gap between the global model's test loss and the clients' own training loss grows with every "
                f"larger E: **{'holds' if every_step(gaps) else 'does not hold'}** in this run. From one common "
                f"model the spread of the clients' updates goes from {ordered.loc[lo, 'spread']:.3g} at E = {lo} to "
                f"{ordered.loc[hi, 'spread']:.3g} at E = {hi}, and their agreement from {agreement[lo]:.3f} to "
                f"{agreement[hi]:.3f}: it {trend}.")
text.append(large_e)
text.append(schedule_text)
text.append(f"**Soft clipping and cosine weights on real updates** (E = {e_rule}, that model): soft clipping "
            f"down-weighted {clipped} of {len(sizes)} clients"
            + (", so there it was FedAvg exactly" if clipped == 0 else "")
            + f"; the cosine weights moved {moved:.1%} of the weight away from n_k / n.")
if base.local_epochs in drift.index:
    rms = drift.loc[base.local_epochs, "rms_update"]
    text.append(f"**The server rates.** From that model a FedAvg round (E = {base.local_epochs}) moves a coordinate "
                f"by {rms:.2g} (root mean square). FedAdam and FedYogi at eta = {adaptive_server_lr:g} move a "
                f"coordinate whose update keeps its sign by about {adaptive_server_lr / rms:.2g} times that, and less "
                f"where the sign flips from round to round; FedAvgM's long-run step is {effective:g} times FedAvg's.")
display(Markdown("### In short\n\n" + "\n\n".join(text)))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# Each exercise asks for a prediction first. Write it down, change the variable at the top of the code cell,
# run the cell, and only then open the answer: the cell computes it, nothing in it is written in advance. Both
# reuse the clients' updates of the client-drift section (at the base config's $E$): nothing is trained.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 1: how hard to clip?
#
# Soft clipping down-weights the clients whose update lies beyond `soft_clip` median distances from the median
# update. **Predict:** with a threshold `soft_clip_try` below `soft_clip`, how many more clients are down-weighted,
# and does the aggregated step move further from FedAvg's $\sum_k p_k \Delta_k$? Change `soft_clip_try` and run.

# %%
from fl_lib.study.exercises import answer, holds

soft_clip_try = 1.0  # change me: c, the threshold in median distances (> 0)
U = updates_at[e_rule]
p_k = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)
fedavg_step = p_k.to(U.dtype) @ U  # FedAvg's step, sum_k n_k / n Delta_k
to_median = torch.linalg.vector_norm(U - middle(U), dim=1)  # d_k, each client's distance to the median update


def step_with(weights):
    """The aggregated step with client weights a_k, and its distance from FedAvg's relative to FedAvg's norm."""
    step = weights.to(U.dtype) @ U
    return float(torch.linalg.vector_norm(step - fedavg_step) / torch.linalg.vector_norm(fedavg_step))


clip_rows = {}
for c in (soft_clip, soft_clip_try):
    a = soft_clip_weights(U, sizes, c)
    clip_rows[c] = {"clients down-weighted": int((to_median / middle(to_median) > c).sum()),
                    "distance from FedAvg": step_with(a),
                    "largest weight": float(a.max())}
clip_rows = pd.DataFrame(clip_rows).T.rename_axis("c")
display(clip_rows.round(4))
base_c, try_c = clip_rows.loc[soft_clip], clip_rows.loc[soft_clip_try]
display(answer(
    f"At E = {e_rule}, {len(sizes)} clients: c = {soft_clip_try:g} down-weights {int(try_c['clients down-weighted'])} "
    f"client(s) against {int(base_c['clients down-weighted'])} at c = {soft_clip:g}; the step lies "
    f"{try_c['distance from FedAvg']:.3g} of FedAvg's norm away from FedAvg's step, against {base_c['distance from FedAvg']:.3g}.\n\n"
    f"* A smaller c down-weights more clients: "
    f"{holds(try_c['clients down-weighted'] > base_c['clients down-weighted']) if soft_clip_try < soft_clip else 'not asked (c is not smaller)'}.\n"
    f"* A smaller c moves the step further from FedAvg's: "
    f"{holds(try_c['distance from FedAvg'] > base_c['distance from FedAvg']) if soft_clip_try < soft_clip else 'not asked (c is not smaller)'}."))

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 2: the temperature of cosine weighting
#
# Cosine-weighted averaging gives client k the weight $a_k \propto n_k \exp(c_k / T)$, with $c_k$ the cosine of its
# update to FedAvg's mean update. **Predict:** as $T$ shrinks below `cosine_temperature`, does the weight gather on
# a few best aligned clients? The cell measures it by the effective number of clients, $1 / \sum_k a_k^2$. Change
# `cosine_temperature_try` and run.

# %%
cosine_temperature_try = 0.05  # change me: T (> 0)
effective_t = {}
for temp in (cosine_temperature, cosine_temperature_try):
    a = cosine_weights(U, sizes, temp)
    effective_t[temp] = {"effective clients": float(1 / (a ** 2).sum()), "largest weight": float(a.max()),
                       "best aligned client": int(a.argmax()), "distance from FedAvg": step_with(a)}
effective_t = pd.DataFrame(effective_t).T.rename_axis("T")
fedavg_clients = float(1 / (p_k ** 2).sum())
display(effective_t.round(4))
display(answer(
    f"FedAvg's weights n_k / n count as {fedavg_clients:.3g} effective clients. Cosine weighting gives "
    f"{effective_t.loc[cosine_temperature, 'effective clients']:.3g} at T = {cosine_temperature:g} and "
    f"{effective_t.loc[cosine_temperature_try, 'effective clients']:.3g} at T = {cosine_temperature_try:g}, whose largest "
    f"weight, {effective_t.loc[cosine_temperature_try, 'largest weight']:.3f}, goes to client "
    f"{int(effective_t.loc[cosine_temperature_try, 'best aligned client'])}.\n\n"
    f"The smaller temperature gathers the weight on fewer clients: "
    + (holds(effective_t.loc[cosine_temperature_try, 'effective clients'] < effective_t.loc[cosine_temperature, 'effective clients'])
       if cosine_temperature_try < cosine_temperature else "not asked (T is not smaller)")
    + " in this run."))
