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
# # 01 · From SGD to FedSGD to FedAvg
#
# This lesson walks from plain minibatch SGD to the two algorithms of McMahan et al. (2017):
# FedSGD, where every sampled client sends one gradient per round, and FedAvg, where every sampled
# client trains for a while and sends its model. It then repeats the paper's MNIST experiments
# (its Tables 1 and 2 and its Figure 1) at a size a laptop can run.
#
# FedAvg is the training loop of Lee & Lee, which lessons 04 and 05 follow: there, each client's
# upload is additionally quantized channel by channel.
#
# The next cell holds the parameters (set them with papermill, or with
# `python -m fl_lib report --params FILE.yaml`).

# %% tags=["parameters"] slideshow={"slide_type": "skip"}
dataset: str = "mnist"  # mnist (torchvision downloads it into data_root), synthetic-mnist, or an .npz file
data_root: str = ""  # where datasets are downloaded and built; empty: the project's data/
num_clients: int = 100  # K, clients holding data (the paper: 100)
client_fraction: float = 0.1  # C, fraction of clients sampled each round (the paper: 0.1)
num_rounds: int = 50  # rounds of each 2NN run
cnn_rounds: int = 5  # rounds of each CNN run (about 30 s per round with E 5 and B 10 on 2 CPU cores)
cnn_rows: str = "fedsgd,e5b10"  # CNN rows to run: fedsgd, e5binf, e1b10, e5b10, e20b10, or all
lr: float = 0.05  # learning rate of the clients' SGD in FedAvg
fedsgd_lr: float = 0.2  # server learning rate eta of FedSGD
target_2nn: float = 0.97  # test accuracy the 2NN rounds are counted to (the paper: 0.97)
target_cnn: float = 0.99  # test accuracy the CNN rounds are counted to (the paper: 0.99)
mixing_thetas: int = 50  # mixing weights theta in the shared-initialization experiment (the paper: 50)
mixing_samples: int = 600  # training images of each of the two mixed models (the paper: 600)
seeds: str = "0"  # comma-separated seeds; runs repeat for each (the lesson says which use the first only)
results_dir: str = ""  # cached runs and attacks, shared by all lessons; empty: the project's data/runs/
figures_dir: str = ""  # where static PNGs are written; empty: the project's figures/
device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda or mps
theme: str = "screen"  # figures for a laptop screen, or a projector (larger fonts, thicker lines): screen or projector
workers: int = 0  # processes that compute this lesson's runs side by side; 0: one per core

# %% slideshow={"slide_type": "subslide"}
import pandas as pd
from IPython.display import Markdown, display

from fl_lib.study import lesson
from fl_lib.study import plots
from fl_lib.core.config import parse_list, parse_seeds, preset
from fl_lib.core.data import load_dataset
from fl_lib.simulator.federation import Federation, aggregate
from fl_lib.study.measures import local_updates, rounds_to_target
from fl_lib.study.mixing import mixing_curves
from fl_lib.runtime.results import run_many

lesson.setup("mcmahan", "lee", theme=theme)
data_root = lesson.folder("data_root", data_root)
results_dir = lesson.folder("results_dir", results_dir)
figures_dir = lesson.folder("figures_dir", figures_dir)

seed_list = parse_seeds(seeds)
data = load_dataset(dataset, data_root)
n = len(data.y_train)
print(f"{data.name}: {n} training and {len(data.y_test)} test images; "
      f"K = {num_clients} clients of {n / num_clients:.0f} images on average")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1. The objective and plain SGD
#
# Training minimizes the average loss over the n training examples. When the data are spread over
# K clients, with client k holding the indices $P_k$ ($n_k = |P_k|$ examples), the same objective is a
# weighted sum of the clients' own averages:
#
# $$f(w) = \sum_{k=1}^{K} \frac{n_k}{n} F_k(w), \qquad F_k(w) = \frac{1}{n_k} \sum_{i \in P_k} \ell(w; x_i, y_i)$$
#
# Minibatch SGD on one machine repeats $w \leftarrow w - \eta \nabla \ell(w; b)$ over batches b of
# B examples. The federated versions below differ only in *where* the steps are taken and *what*
# travels to the server. In round t the server samples a set $S_t$ of $m = \max(\mathrm{round}(CK), 1)$
# clients and sends them the current model $w_t$.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2. FedSGD: one gradient per client per round
#
# Each sampled client computes the gradient of its local objective on *all* its data at $w_t$ and
# sends it; the server averages the gradients weighted by data size and takes one step
# (here $n = \sum_{k \in S_t} n_k$, the data of the sampled clients):
#
# $$w_{t+1} = w_t - \eta \sum_{k \in S_t} \frac{n_k}{n} \nabla F_k(w_t)$$
#
# The cell below computes round 1 by hand from fl_lib's pieces and compares it with the engine.

# %%
cfg = preset("fedavg-mnist-2nn", dataset=dataset, data_root=data_root, num_clients=num_clients,
             client_fraction=client_fraction, algorithm="fedsgd", local_epochs=1, batch_size=None,
             lr=fedsgd_lr, device=device)
fed = Federation(cfg, data=data)
S_t = fed.sample_clients(1)
grads = [fed.client_gradient(k, 1)[0] for k in S_t]  # grad F_k(w_t), one per sampled client
n_k = [fed.sizes[k] for k in S_t]
mean_grad = aggregate(grads, n_k)  # sum_k n_k / n grad F_k(w_t)
w_next = {name: fed.global_state[name] - cfg.lr * g for name, g in mean_grad.items()}
fed.round(1)  # the engine's round 1
gap = max((w_next[name] - fed.global_state[name]).abs().max().item() for name in w_next)
print(f"S_1 = {S_t} (n_k = {n_k}); largest difference from the engine: {gap:.1e}")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3. FedAvg: local training, then a weighted average of models
#
# FedAvg moves computation to the clients. Starting from $w_t$, client k runs E epochs of minibatch
# SGD with batch size B over its own data, $w^k \leftarrow w^k - \eta \nabla \ell(w^k; b)$ for every
# batch b, and sends the result $w^k_{t+1}$. The server averages the models, weighted by data size:
#
# $$w_{t+1} = \sum_{k \in S_t} \frac{n_k}{n} w^k_{t+1}$$
#
# With E = 1 and B = ∞ (the whole local set as one batch) every client takes exactly one full-batch
# step, and the average of the models is FedSGD's step: FedSGD is the special case. The weights are
# $n_k / n$, not $1/m$: a plain mean of the models would be wrong whenever clients hold different
# amounts of data, which is the usual non-IID case.

# %%
cfg = preset("fedavg-mnist-2nn", dataset=dataset, data_root=data_root, num_clients=num_clients,
             client_fraction=client_fraction, lr=lr, device=device)
fed = Federation(cfg, data=data)
S_t = fed.sample_clients(1)
local_models = []
for k in S_t:
    fed.train_client(k, 1)  # E epochs of minibatch SGD from w_t on client k's data
    local_models.append({name: v.clone() for name, v in fed.model.state_dict().items()})
w_next = aggregate(local_models, [fed.sizes[k] for k in S_t])  # sum_k n_k / n w^k_{t+1}
fed.round(1)
gap = max((w_next[name] - fed.global_state[name]).abs().max().item() for name in w_next)
print(f"E = {cfg.local_epochs}, B = {cfg.batch_size}: largest difference from the engine: {gap:.1e}")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4. Why averaging models works: a shared starting point (the paper's Figure 1)
#
# Averaging the weights of two neural networks trained separately usually gives a bad model, since
# their hidden units need not line up. McMahan et al. show that this changes when both start from the
# same initialization. Two 2NNs are trained with plain SGD on disjoint IID samples of `mixing_samples`
# training images each (the paper: 600 images, lr 0.1, minibatches of 50, 240 updates = 20 passes), then
# mixed as
#
# $$\theta w + (1-\theta) w'$$
#
# for `mixing_thetas` evenly spaced values of $\theta$ in [-0.2, 1.2], and each mixture's loss is measured
# on the whole training set: once from two independent initializations, once from a shared one. The cell
# prints the values this run used.

# %% slideshow={"slide_type": "subslide"}
MIX = {"theta_min": -0.2, "theta_max": 1.2, "batch_size": 50, "steps": 240, "lr": 0.1}  # the paper's settings
mix = mixing_curves(data, num_thetas=mixing_thetas, num_samples=mixing_samples, seed=seed_list[0], **MIX)
thetas = sorted(mix.theta.unique())
print(f"{mixing_samples} images per model, SGD lr {MIX['lr']}, minibatches of {MIX['batch_size']}, {MIX['steps']} "
      f"updates = {MIX['steps'] * MIX['batch_size'] / mixing_samples:.1f} passes; {len(thetas)} values of theta from "
      f"{thetas[0]:g} to {thetas[-1]:g}")
plots.lines(mix, "theta", "loss", "init", title="Training loss of theta w + (1 - theta) w'",
            xlabel="theta", ylabel="loss on the whole training set", log_y=True,
            name="01_mixing", figures_dir=figures_dir).show()
def nearest(theta):  # the evaluated theta nearest to `theta`
    return min(thetas, key=lambda t: abs(t - theta))

def loss_at(g, theta):  # the loss at the evaluated theta nearest to `theta`
    return g.set_index("theta").loss[nearest(theta)]

theta_0, theta_mid, theta_1 = nearest(0), nearest(0.5), nearest(1)  # the parents w' and w, and the middle
pd.DataFrame({init: {f"theta = {theta_0:.3g} (w')": loss_at(g, 0), f"theta = {theta_mid:.3g}": loss_at(g, 0.5),
                     f"theta = {theta_1:.3g} (w)": loss_at(g, 1), "lowest": g.loss.min(),
                     "lowest at theta": g.theta.iloc[g.loss.argmin()]}
              for init, g in mix.groupby("init")}).T.round(4)

# %%
def mixing_check(g):
    """(parents' losses, middle loss, worst loss between the parents) of one init's curve."""
    parents = (loss_at(g, 0), loss_at(g, 1))
    inside = g[(g.theta >= theta_0) & (g.theta <= theta_1)]
    return parents, loss_at(g, 0.5), inside.loss.max()

lines = []
for init, g in mix.groupby("init"):
    parents, middle, worst = mixing_check(g)
    lines.append(f"* {init} initialization: loss {middle:.4f} at theta = {theta_mid:.3g} against {parents[0]:.4f} (w') "
                 f"and {parents[1]:.4f} (w); worse than both parents: **{'holds' if middle > max(parents) else 'does not hold'}**; "
                 f"better than both: **{'holds' if middle < min(parents) else 'does not hold'}**; largest loss between "
                 f"the parents {worst:.4f}, {worst / max(parents):.2f}x the worse parent's.")
exact = abs(theta_0) < 1e-9 and abs(theta_1 - 1) < 1e-9
display(Markdown(
    "McMahan et al. find the mixture around the middle worse than either parent with independent "
    "initializations, and better than both with a shared one. In this run (seed "
    f"{seed_list[0]}{'' if exact else '; the grid has no theta = 0 or 1, the nearest values stand in for the parents'}):\n\n"
    + "\n".join(lines)))

# %% [markdown] slideshow={"slide_type": "subslide"}
# FedAvg is the shared-initialization case: every round starts all clients from the same global model $w_t$.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5. How much local work: u
#
# McMahan et al. measure the computation per round by the number of local updates each client
# makes, with $n / K$ the average client size (B = ∞ counts as one update per epoch, so $u = E$):
#
# $$u = \frac{E\,n}{K\,B}$$
#
# The rows below are the paper's: Table 1 for the 2NN (E = 1, C = 0.1, target 97%) and Table 2
# for the CNN (C = 0.1, target 99%), with the rounds the paper needed to reach the target for IID
# and non-IID (2 label shards per client) data. u is computed for our n and for the paper's
# 60,000 training images.

# %%
ROWS = [  # model, row, algorithm, E, B, paper's rounds to target (IID, non-IID)
    ("2nn", "FedSGD", "fedsgd", 1, None, 1474, 1796),
    ("2nn", "FedAvg E=1 B=10", "fedavg", 1, 10, 87, 664),
    ("cnn", "FedSGD", "fedsgd", 1, None, 626, 483),
    ("cnn", "FedAvg E=5 B=inf", "fedavg", 5, None, 179, 1000),
    ("cnn", "FedAvg E=1 B=10", "fedavg", 1, 10, 34, 350),
    ("cnn", "FedAvg E=5 B=10", "fedavg", 5, 10, 20, 229),
    ("cnn", "FedAvg E=20 B=10", "fedavg", 20, 10, 18, 173),
]
rows = pd.DataFrame([{"model": m, "row": row, "algorithm": a, "E": e, "B": "inf" if b is None else b,
                      "key": "fedsgd" if a == "fedsgd" else f"e{e}b{b or 'inf'}",
                      "u_ours": local_updates(e, b, n, num_clients), "u_paper": local_updates(e, b, 60000, 100),
                      "paper_iid": iid, "paper_non_iid": non_iid} for m, row, a, e, b, iid, non_iid in ROWS])
wanted = set(rows.key) if cnn_rows.strip() == "all" else set(parse_list(cnn_rows, str))
rows["run"] = (rows.model == "2nn") | (rows.key.isin(wanted) & (cnn_rounds > 0))
rows[["model", "row", "E", "B", "u_ours", "u_paper", "paper_iid", "paper_non_iid", "run"]]


# %% [markdown] slideshow={"slide_type": "slide"}
# ## 6. FedSGD vs FedAvg on MNIST, IID and non-IID
#
# Every run goes through `fl_lib.runtime.results.run_many`, which computes independent runs side by side (one
# process per core) and caches each under `results_dir` by a hash of its config: rerunning the lesson,
# or another lesson asking for the same run, loads it at once, and asking for more rounds continues a
# stored run from its last round.
# `partition="shards"` is the paper's pathological non-IID split: sort the training set by label, cut it
# into K times `shards_per_client` equal shards and deal each client `shards_per_client` of them (the
# paper: 100 clients, 200 shards of 300 images, 2 per client; the cell prints this run's counts);
# `iid` is a uniform random split.

# %%
def config_for(r, partition, seed):
    model_rounds = num_rounds if r.model == "2nn" else cnn_rounds
    return preset(f"fedavg-mnist-{r.model}", dataset=dataset, data_root=data_root, num_clients=num_clients,
                  client_fraction=client_fraction, partition=partition, seed=seed, device=device,
                  num_rounds=model_rounds, algorithm=r.algorithm, local_epochs=int(r.E),
                  batch_size=None if r.B == "inf" else int(r.B), lr=fedsgd_lr if r.algorithm == "fedsgd" else lr)

grid = [(r, partition, seed) for r in rows[rows.run].itertuples() for partition in ("iid", "shards")
        for seed in seed_list]
per_client = config_for(rows[rows.run].iloc[0], "shards", seed_list[0]).shards_per_client
num_shards = num_clients * per_client
print(f"non-IID split: {num_clients} clients x {per_client} shards = {num_shards} shards of about "
      f"{n / num_shards:.0f} images; {len(grid)} runs ({len(rows[rows.run])} rows x 2 partitions x {len(seed_list)} seed(s))")
runs = run_many([config_for(*g) for g in grid], root=results_dir, workers=workers)  # side by side on the cores
frames = [result.metrics.assign(model=r.model, row=r.row, partition=partition, seed=seed,
                                label=f"{r.row}, {'IID' if partition == 'iid' else 'non-IID'}")
          for (r, partition, seed), result in zip(grid, runs)]
metrics = pd.concat(frames, ignore_index=True)

# %% slideshow={"slide_type": "subslide"}
for model in ("2nn", "cnn"):
    m = metrics[metrics.model == model]
    if len(m):
        plots.accuracy_over_rounds(m, hue="label", title=f"MNIST {model.upper()}: FedSGD vs FedAvg",
                                   name=f"01_accuracy_{model}", figures_dir=figures_dir).show()


# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Rounds to the target accuracy
#
# Rounds are counted as in the paper: the accuracy curve is first made monotone (the best accuracy
# so far), then the round where it crosses the target is found by linear interpolation between the
# evaluated rounds. With several seeds the table shows their mean, if every seed got there; "> R"
# means the target was not reached within the R rounds run.

# %%
def rounds_or_none(g, target):
    per_seed = [rounds_to_target(s.set_index("round").test_acc, target) for _, s in g.groupby("seed")]
    if any(r is None for r in per_seed):
        return f"> {int(g['round'].max())}"
    return round(sum(per_seed) / len(per_seed), 1)

table = []
for r in rows[rows.run].itertuples():
    target = target_2nn if r.model == "2nn" else target_cnn
    entry = {"model": r.model, "row": r.row, "u (ours)": round(r.u_ours, 1), "target": target}
    for partition, paper in (("iid", r.paper_iid), ("shards", r.paper_non_iid)):
        g = metrics[(metrics.row == r.row) & (metrics.model == r.model) & (metrics.partition == partition)]
        name = "IID" if partition == "iid" else "non-IID"
        entry[f"{name}: best acc"] = round(g.groupby("seed").test_acc.max().mean(), 4)
        entry[f"{name}: rounds (ours)"] = rounds_or_none(g, target)
        entry[f"{name}: rounds (paper)"] = paper
    entry["rounds run"] = int(metrics[(metrics.model == r.model)]["round"].max())
    table.append(entry)
table = pd.DataFrame(table)
table

# %%
cnn_run = rows[rows.run & (rows.model == "cnn")]
best = metrics.groupby(["model", "partition", "row", "seed"]).test_acc.max().groupby(["model", "partition", "row"]).mean()
found = []
for (model, partition), b in best.groupby(level=["model", "partition"]):
    b = b.droplevel(["model", "partition"])
    others = ", ".join(f"{row} {acc:.3f}" for row, acc in b.items() if row != "FedSGD")
    rounds_run = num_rounds if model == "2nn" else cnn_rounds
    fedavg = b.drop("FedSGD", errors="ignore")
    above = ("" if "FedSGD" not in b or fedavg.empty else
             f"; every FedAvg row above FedSGD: **{'holds' if (fedavg > b['FedSGD']).all() else 'does not hold'}**")
    found.append(f"* {model.upper()}, {'IID' if partition == 'iid' else 'non-IID'}, best accuracy within "
                 f"{rounds_run} rounds: FedSGD {b.get('FedSGD', float('nan')):.3f}; {others}{above}")
display(Markdown(
    f"**What these runs used.** {n:,} training images ({n / num_clients:.0f} per client on average; the paper: "
    f"all 60,000, 600 per client), {len(seed_list)} seed(s), {num_rounds} rounds per 2NN run and "
    f"{cnn_rounds if len(cnn_run) else 0} per CNN run ({', '.join(cnn_run.row) or 'none'}). "
    f"The paper ran every configuration until it reached the target, up to 1,796 rounds, so where our "
    f"runs stop short the rounds cannot be compared; the best accuracies can, row against row:\n\n"
    + "\n".join(found)
    + "\n\nIn the paper FedAvg needs far fewer rounds than FedSGD: for the CNN on IID data 20 rounds "
    "(E=5, B=10) against 626, 31 times fewer; on non-IID data 229 against 483."))

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### The same runs, carried further: reference runs
#
# A class cannot wait for the CNN to reach its target, so the project ships longer runs in `reference/mnist/`
# (`reference/README.md` lists their data, rounds, machine and the command that extends them). A reference is
# drawn only where it is exactly one of the runs above carried further (`reference.find`: the same config key,
# which leaves out `num_rounds` and matches an .npz file by its content); its rounds to the target are counted
# as above.

# %%
from fl_lib.study import reference

ref_rows, ref_curves = [], []
for g in grid:
    name = reference.find(config_for(*g))
    r, partition, seed = g
    if name is None or reference.read_index()[name]["rounds"] <= (num_rounds if r.model == "2nn" else cnn_rounds):
        continue
    ref = reference.load(name).metrics
    target = target_2nn if r.model == "2nn" else target_cnn
    reached = rounds_to_target(ref.set_index("round").test_acc, target)
    split = "IID" if partition == "iid" else "non-IID"
    paper = r.paper_iid if partition == "iid" else r.paper_non_iid
    ref_rows.append({"reference": name, "row": r.row, "split": split, "seed": seed, "rounds run": int(ref["round"].max()),
                     "best acc": round(ref.test_acc.max(), 4), "target": target,
                     "rounds to target (ours)": round(reached, 1) if reached is not None else f"> {int(ref['round'].max())}",
                     "rounds to target (paper)": paper})
    ref_curves.append(ref.assign(label=f"reference: {r.row}, {split}, seed {seed}"))
if ref_rows:
    live = metrics[metrics.model == "cnn"].assign(label=lambda m: "live: " + m["label"])
    plots.accuracy_over_rounds(pd.concat(ref_curves + [live], ignore_index=True), hue="label",
                               title="MNIST CNN: reference runs beside this lesson's runs",
                               name="01_reference", figures_dir=figures_dir).show()
    display(pd.DataFrame(ref_rows))
else:
    print(f"No reference run in reference/ carries one of this lesson's {len(grid)} runs further (these data, "
          f"clients and settings).")


# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# Each exercise asks for a prediction first. Write it down, change the variable at the top of the code cell,
# run the cell, and only then open the answer: the cell computes it from the run, nothing in it is written in
# advance. Runs go through the same results cache as the lesson, so a setting already run is read back.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 1: many local epochs, few rounds
#
# Table 2 ends with a row of many more local epochs per round. More local work per round should cut the rounds
# needed, but a client that trains long on its own label shards may over-fit them. **Predict:** on the non-IID
# split, does the 2NN with `epochs_try` local epochs (B as in the lesson's FedAvg 2NN row) reach a higher best
# accuracy than the lesson's E = 1 row within the same `rounds_try` rounds? And does the gap between the test
# loss and the clients' own training loss grow with E? Change `epochs_try` (and `rounds_try`) and run.

# %%
from fl_lib.study.exercises import answer, holds

epochs_try = 20  # change me: local epochs E of a FedAvg 2NN run on the non-IID split
rounds_try = min(num_rounds, 10)  # change me: rounds of both runs (the E = 1 run is read back from the cache)
row_e1 = rows[(rows.model == "2nn") & (rows.algorithm == "fedavg")].iloc[0]
cfg_e1 = config_for(row_e1, "shards", seed_list[0]).replace(num_rounds=rounds_try)
cfg_try = cfg_e1.replace(local_epochs=epochs_try)
by_e = {}
for cfg_x in (cfg_e1, cfg_try):
    m = run_many([cfg_x], root=results_dir, workers=workers)[0].metrics
    last = m.dropna(subset=["test_acc"]).iloc[-1]
    by_e[cfg_x.local_epochs] = {"u (ours)": local_updates(cfg_x.local_epochs, cfg_x.batch_size, n, num_clients),
                                "best test_acc": m.test_acc.max(), "last test_loss": last.test_loss,
                                "last train_loss": last.train_loss, "gap": last.test_loss - last.train_loss}
by_e = pd.DataFrame(by_e).T.rename_axis("E")
display(by_e.round(4))
e1, et = by_e.loc[cfg_e1.local_epochs], by_e.loc[epochs_try]
display(answer(
    f"Non-IID split, {rounds_try} rounds, seed {seed_list[0]}: E = {epochs_try} makes u = {et['u (ours)']:.0f} local "
    f"updates per round against {e1['u (ours)']:.0f} at E = {cfg_e1.local_epochs}.\n\n"
    f"* Best test accuracy {et['best test_acc']:.4f} against {e1['best test_acc']:.4f}: more local epochs reach a "
    f"higher accuracy in the same rounds {holds(et['best test_acc'] > e1['best test_acc'])} in this run.\n"
    f"* Test loss minus the clients' training loss in the last round: {et['gap']:.4f} against {e1['gap']:.4f}: the gap "
    f"grows with E (the clients fit their own shards better than the global model fits the test set) "
    f"{holds(et['gap'] > e1['gap'])} in this run."))

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 2: does weighting by $n_k / n$ matter?
#
# Section 3 weights each client's model by $n_k / n$ rather than taking the plain mean. **Predict:** for the
# clients sampled in round 1, how far is the plain mean of their trained models from the weighted average, on
# the IID split, on the shards split and on a Dirichlet split? When are the two exactly equal? Change
# `partition_try` and run.

# %%
partition_try = "dirichlet"  # change me: iid, shards or dirichlet
cfg_w = preset("fedavg-mnist-2nn", dataset=dataset, data_root=data_root, num_clients=num_clients,
               client_fraction=client_fraction, partition=partition_try, lr=lr, device=device, seed=seed_list[0])
fed_w = Federation(cfg_w, data=data)
chosen = fed_w.sample_clients(1)
trained_models = []
for k in chosen:
    fed_w.train_client(k, 1)
    trained_models.append({name: v.detach().clone() for name, v in fed_w.model.state_dict().items()})
n_chosen = [fed_w.sizes[k] for k in chosen]
weighted = aggregate(trained_models, n_chosen)  # sum_k n_k / n w^k
plain = aggregate(trained_models, [1] * len(chosen))  # 1/m sum_k w^k
apart = max((weighted[name].float() - plain[name].float()).abs().max().item() for name in weighted)
size = max(weighted[name].float().abs().max().item() for name in weighted)
equal_sizes = len(set(n_chosen)) == 1
display(answer(
    f"On the `{partition_try}` split the {len(chosen)} clients of round 1 hold from {min(n_chosen)} to "
    f"{max(n_chosen)} examples. The plain mean differs from the weighted average by up to {apart:.3g} "
    f"(the largest weight is {size:.3g}).\n\n"
    f"* The sampled clients hold equal amounts of data: {holds(equal_sizes)}.\n"
    f"* The two averages agree (to float rounding, 1e-6 of the largest weight): {holds(apart <= 1e-6 * size)}.\n\n"
    f"The prediction \"they agree exactly when the sizes are equal\" "
    f"{holds(equal_sizes == (apart <= 1e-6 * size))} in this run."))
