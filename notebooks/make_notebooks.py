"""Writes the five study notebooks (no outputs) from the cell texts below: edit here, then run

    .venv/bin/python notebooks/make_notebooks.py

Each notebook: a title cell, one cell tagged `parameters` (independent scalars, each
annotated and commented, so `papermill --help-notebook` documents them), then a cell
of imports and values derived from the parameters. Cells tagged `widget` hold an
ipywidgets explorer; the HTML report replaces those with a note.
"""
from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent

MCMAHAN = ("McMahan et al. (2017), *Communication-Efficient Learning of Deep Networks from "
           "Decentralized Data* (AISTATS)")
LEE = ("Lee & Lee, *Communication Efficiency and Accuracy Analysis of Federated Learning on Non-IID Data "
       "with Channel-Wise Symmetric Quantization* (Hansung University)")

SETUP = """\
%load_ext autoreload
%autoreload 2
import pandas as pd
from IPython.display import Markdown, display

from fl_lib import plots
from fl_lib.report import parse_list, parse_seeds

plots.setup_notebook()"""


def md(text):
    return nbf.v4.new_markdown_cell(text.strip())


def code(text, *tags):
    cell = nbf.v4.new_code_cell(text.strip())
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def params(text):
    return code(text, "parameters")


def write(name, cells):
    nb = nbf.v4.new_notebook()
    nb.cells = cells
    for i, cell in enumerate(cells):  # fixed ids: regenerating a notebook changes only what was edited
        cell.id = f"cell-{i:02d}"
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
                   "language_info": {"name": "python"}}
    nbf.validate(nb)
    nbf.write(nb, str(HERE / f"{name}.ipynb"))


# ---------------------------------------------------------------------------------------------
NB01 = [
    md(f"""
# 01 · From SGD to FedSGD to FedAvg

This notebook walks from plain minibatch SGD to the two algorithms of {MCMAHAN}: FedSGD,
where every sampled client sends one gradient per round, and FedAvg, where every sampled
client trains for a while and sends its model. It then repeats the paper's MNIST
experiments (its Tables 1 and 2 and its Figure 1) at a size a laptop can run.

FedAvg is the training loop of {LEE}, which notebooks 03 and 04 follow: there, each
client's upload is additionally quantized channel by channel.

The next cell holds the parameters (set them with papermill, or with
`python -m fl_lib report --params FILE.yaml`)."""),
    params("""
dataset: str = "mnist"  # mnist (torchvision downloads it into data_root), synthetic-mnist, or an .npz file
data_root: str = "../data"  # folder torchvision downloads into
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
seeds: str = "0"  # comma-separated seeds; every run is repeated for each
results_dir: str = "../data/runs"  # cached runs, shared by all notebooks
figures_dir: str = "../figures"  # where static PNGs are written
device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda or mps"""),
    code(SETUP + """
from fl_lib.config import preset
from fl_lib.data import load_dataset
from fl_lib.fedavg import Federation, aggregate
from fl_lib.metrics import local_updates, rounds_to_target
from fl_lib.mixing import mixing_curves
from fl_lib.results import run

seed_list = parse_seeds(seeds)
data = load_dataset(dataset, data_root)
n = len(data.y_train)
print(f"{data.name}: {n} training and {len(data.y_test)} test images; "
      f"K = {num_clients} clients of {n / num_clients:.0f} images on average")"""),
    md("""
## 1. The objective and plain SGD

Training minimizes the average loss over the n training examples. When the data are spread over
K clients, with client k holding the indices $P_k$ ($n_k = |P_k|$ examples), the same objective is a
weighted sum of the clients' own averages:

$$f(w) = \\sum_{k=1}^{K} \\frac{n_k}{n} F_k(w), \\qquad F_k(w) = \\frac{1}{n_k} \\sum_{i \\in P_k} \\ell(w; x_i, y_i)$$

Minibatch SGD on one machine repeats $w \\leftarrow w - \\eta \\nabla \\ell(w; b)$ over batches b of
B examples. The federated versions below differ only in *where* the steps are taken and *what*
travels to the server. In round t the server samples a set $S_t$ of $m = \\max(\\mathrm{round}(CK), 1)$
clients and sends them the current model $w_t$."""),
    md("""
## 2. FedSGD: one gradient per client per round

Each sampled client computes the gradient of its local objective on *all* its data at $w_t$ and
sends it; the server averages the gradients weighted by data size and takes one step
(here $n = \\sum_{k \\in S_t} n_k$, the data of the sampled clients):

$$w_{t+1} = w_t - \\eta \\sum_{k \\in S_t} \\frac{n_k}{n} \\nabla F_k(w_t)$$

The cell below computes round 1 by hand from fl_lib's pieces and compares it with the engine."""),
    code("""
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
print(f"S_1 = {S_t} (n_k = {n_k}); largest difference from the engine: {gap:.1e}")"""),
    md("""
## 3. FedAvg: local training, then a weighted average of models

FedAvg moves computation to the clients. Starting from $w_t$, client k runs E epochs of minibatch
SGD with batch size B over its own data, $w^k \\leftarrow w^k - \\eta \\nabla \\ell(w^k; b)$ for every
batch b, and sends the result $w^k_{t+1}$. The server averages the models, weighted by data size:

$$w_{t+1} = \\sum_{k \\in S_t} \\frac{n_k}{n} w^k_{t+1}$$

With E = 1 and B = ∞ (the whole local set as one batch) every client takes exactly one full-batch
step, and the average of the models is FedSGD's step: FedSGD is the special case. The weights are
$n_k / n$, not $1/m$: a plain mean of the models would be wrong whenever clients hold different
amounts of data, which is the usual non-IID case."""),
    code("""
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
print(f"E = {cfg.local_epochs}, B = {cfg.batch_size}: largest difference from the engine: {gap:.1e}")"""),
    md("""
## 4. How much local work: u

McMahan et al. measure the computation per round by the number of local updates each client
makes, with $n / K$ the average client size (B = ∞ counts as one update per epoch, so $u = E$):

$$u = \\frac{E\\,n}{K\\,B}$$

The rows below are the paper's: Table 1 for the 2NN (E = 1, C = 0.1, target 97%) and Table 2
for the CNN (C = 0.1, target 99%), with the rounds the paper needed to reach the target for IID
and non-IID (2 label shards per client) data. u is computed for our n and for the paper's
60,000 training images."""),
    code("""
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
rows[["model", "row", "E", "B", "u_ours", "u_paper", "paper_iid", "paper_non_iid", "run"]]"""),
    md("""
## 5. FedSGD vs FedAvg on MNIST, IID and non-IID

Every run goes through `fl_lib.results.run`, which caches it under `results_dir` by a hash of its
config: rerunning the notebook, or another notebook asking for the same run, loads it at once.
`partition="shards"` is the paper's pathological non-IID split (sort by label, 200 shards, 2 per
client); `iid` is a uniform random split."""),
    code("""
def config_for(r, partition, seed):
    model_rounds = num_rounds if r.model == "2nn" else cnn_rounds
    return preset(f"fedavg-mnist-{r.model}", dataset=dataset, data_root=data_root, num_clients=num_clients,
                  client_fraction=client_fraction, partition=partition, seed=seed, device=device,
                  num_rounds=model_rounds, algorithm=r.algorithm, local_epochs=int(r.E),
                  batch_size=None if r.B == "inf" else int(r.B), lr=fedsgd_lr if r.algorithm == "fedsgd" else lr)

frames = []
for r in rows[rows.run].itertuples():
    for partition in ("iid", "shards"):
        for seed in seed_list:
            result = run(config_for(r, partition, seed), root=results_dir)
            label = f"{r.row}, {'IID' if partition == 'iid' else 'non-IID'}"
            frames.append(result.metrics.assign(model=r.model, row=r.row, partition=partition, seed=seed,
                                                label=label))
metrics = pd.concat(frames, ignore_index=True)"""),
    code("""
for model in ("2nn", "cnn"):
    m = metrics[metrics.model == model]
    if len(m):
        plots.accuracy_over_rounds(m, hue="label", title=f"MNIST {model.upper()}: FedSGD vs FedAvg",
                                   name=f"01_accuracy_{model}", figures_dir=figures_dir).show()"""),
    md("""
### Rounds to the target accuracy

Rounds are counted as in the paper: the accuracy curve is first made monotone (the best accuracy
so far), then the round where it crosses the target is found by linear interpolation between the
evaluated rounds. With several seeds the table shows their mean, if every seed got there; "> R"
means the target was not reached within the R rounds run."""),
    code("""
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
table"""),
    code("""
cnn_run = rows[rows.run & (rows.model == "cnn")]
best = metrics.groupby(["model", "partition", "row", "seed"]).test_acc.max().groupby(["model", "partition", "row"]).mean()
found = []
for (model, partition), b in best.groupby(level=["model", "partition"]):
    b = b.droplevel(["model", "partition"])
    others = ", ".join(f"{row} {acc:.3f}" for row, acc in b.items() if row != "FedSGD")
    rounds_run = num_rounds if model == "2nn" else cnn_rounds
    found.append(f"* {model.upper()}, {'IID' if partition == 'iid' else 'non-IID'}, best accuracy within "
                 f"{rounds_run} rounds: FedSGD {b.get('FedSGD', float('nan')):.3f}; {others}")
display(Markdown(
    f"**What these runs used.** {n:,} training images ({n / num_clients:.0f} per client on average; the paper: "
    f"all 60,000, 600 per client), {len(seed_list)} seed(s), {num_rounds} rounds per 2NN run and "
    f"{cnn_rounds if len(cnn_run) else 0} per CNN run ({', '.join(cnn_run.row) or 'none'}). "
    f"The paper ran every configuration until it reached the target, up to 1,796 rounds, so where our "
    f"runs stop short the rounds cannot be compared; the best accuracies can, row against row:\\n\\n"
    + "\\n".join(found)
    + "\\n\\nIn the paper FedAvg needs far fewer rounds than FedSGD: for the CNN on IID data 20 rounds "
    "(E=5, B=10) against 626, 31 times fewer; on non-IID data 229 against 483."))"""),
    md("""
## 6. Why averaging models works: a shared starting point (the paper's Figure 1)

Averaging the weights of two neural networks trained separately usually gives a bad model, since
their hidden units need not line up. McMahan et al. show that this changes when both start from the
same initialization. Two 2NNs are trained on disjoint IID samples of 600 training images (SGD,
lr 0.1, minibatches of 50, 240 updates = 20 passes), then mixed as

$$\\theta w + (1-\\theta) w'$$

for 50 values of $\\theta$ in [-0.2, 1.2], and each mixture's loss is measured on the whole training
set: once from two independent initializations, once from a shared one."""),
    code("""
mix = mixing_curves(data, num_thetas=mixing_thetas, num_samples=mixing_samples, seed=seed_list[0])
plots.lines(mix, "theta", "loss", "init", title="Training loss of theta w + (1 - theta) w'",
            xlabel="theta", ylabel="loss on the whole training set", log_y=True,
            name="01_mixing", figures_dir=figures_dir).show()
def loss_at(g, theta):  # the loss at the evaluated theta nearest to `theta`
    return g.loss.iloc[(g.theta - theta).abs().argmin()]

pd.DataFrame({init: {"theta = 0 (w')": loss_at(g, 0), "theta = 0.5": loss_at(g, 0.5), "theta = 1 (w)": loss_at(g, 1),
                     "lowest": g.loss.min(), "lowest at theta": g.theta.iloc[g.loss.argmin()]}
              for init, g in mix.groupby("init")}).T.round(4)"""),
    md("""
With independent initializations the mixture near $\\theta = 0.5$ is far worse than either parent.
From a shared initialization the mixture is smooth in $\\theta$ and, in the paper, better than
both parents around the middle. FedAvg relies on exactly this: every round starts all clients from
the same global model $w_t$."""),
]

# ---------------------------------------------------------------------------------------------
NB02 = [
    md(f"""
# 02 · Non-IID partitions: IID, shards and Dirichlet

In federated learning every client holds its own data, and a client's labels rarely follow the
global mix. {MCMAHAN} simulate this with *label shards*; {LEE} (like most later work) draws the
split from a Dirichlet distribution with concentration $\\alpha = 0.5$ over 10 clients of CIFAR-10.
This notebook shows the splits side by side, explains what $\\alpha$ does, and ends with a slider."""),
    params("""
dataset: str = "cifar10"  # cifar10 (torchvision downloads it into data_root), synthetic, or an .npz file
data_root: str = "../data"  # folder torchvision downloads into
num_clients: int = 10  # K, clients holding data
alpha: float = 0.5  # Dirichlet concentration (smaller: more label skew)
shards_per_client: int = 2  # label shards per client in McMahan et al.'s split
seed: int = 0  # seed of the random splits
figures_dir: str = "../figures"  # where static PNGs are written"""),
    code(SETUP + """
import numpy as np

from fl_lib.config import Config
from fl_lib.data import load_dataset
from fl_lib.partition import label_counts, make_partition
from fl_lib.widgets import PartitionExplorer, describe_stats, partition_stats, summarize_stats

data = load_dataset(dataset, data_root)
labels = data.y_train.numpy()
min_size = Config().min_size  # the experiments' minimum client size for Dirichlet splits
print(f"{data.name}: {len(labels)} training images, {data.num_classes} classes, "
      f"{np.bincount(labels).min()}-{np.bincount(labels).max()} per class")"""),
    md("""
## Four ways to split the training set

* **IID**: shuffle and cut into K parts of equal size. Every client sees the global label mix.
* **Shards** (McMahan et al. 2017): sort the examples by label, cut them into $K \\cdot s$ shards of
  equal size and deal $s$ shards to each client. With $s = 2$ most clients hold two classes.
* **Dirichlet per class** (fl_lib's `dirichlet`; Yurochkin et al. 2019, Wang et al. 2020, and the
  NIID-Bench code of Li et al. 2022): for every class c, draw how its examples are spread over the
  K clients, $p_c \\sim \\mathrm{Dir}(\\alpha \\mathbf{1}_K)$, and deal class c's examples by $p_c$.
  Client sizes therefore vary. As in the reference code, a client that already holds more than an
  equal share receives no more, and every client gets at least `min_size` examples.
* **Dirichlet per client** (fl_lib's `dirichlet_client`; Hsu et al. 2019): each client k draws its own
  label mix $q_k \\sim \\mathrm{Dir}(\\alpha p)$, with p the global label distribution, and fills an
  equal share of the data from it. Sizes are equal; only the label mix varies.

The Lee & Lee paper says only "Dirichlet distribution, $\\alpha = 0.5$". The experiments in
notebooks 04 and 05 use the per-class variant, the most common one in federated learning code."""),
    code("""
parts = {
    "IID": make_partition("iid", labels, num_clients, seed),
    f"shards (s={shards_per_client})": make_partition("shards", labels, num_clients, seed,
                                                      shards_per_client=shards_per_client),
    f"Dirichlet per class (alpha={alpha:g})": make_partition("dirichlet", labels, num_clients, seed,
                                                             alpha=alpha, min_size=min_size),
    f"Dirichlet per client (alpha={alpha:g})": make_partition("dirichlet_client", labels, num_clients, seed,
                                                              alpha=alpha),
}
counts = {name: label_counts(p, labels, data.num_classes) for name, p in parts.items()}
plots.label_heatmaps(counts, title=f"Label counts per client ({data.name}, K = {num_clients})",
                     name="02_partitions", figures_dir=figures_dir).show()"""),
    md("""
## How far is each client from the global mix?

Two numbers per client: how many classes it holds, and the total-variation distance of its label
mix from the global one, with $n_{k,c}$ the examples of class c on client k:

$$\\mathrm{TV}_k = \\frac{1}{2}\\sum_c \\left|\\frac{n_{k,c}}{n_k} - \\frac{n_c}{n}\\right|$$

It is 0 for a client mixed like the whole training set and $1 - n_c/n$ (0.9 for ten balanced
classes) for a client holding only class c."""),
    code("""
summary = pd.DataFrame({name: summarize_stats(partition_stats(p, labels, data.num_classes))
                        for name, p in parts.items()}).T
summary.round(3)"""),
    md("""
## What alpha does

$\\alpha$ is the concentration of the Dirichlet distribution. Large $\\alpha$ puts the draws near the
uniform mix, so every client looks like the global data (IID in the limit). Small $\\alpha$ puts most of
the mass of each draw on a few entries: in the per-class variant each class lands on one or two
clients, in the per-client variant each client is dominated by one or two classes. The sweep below
shows the mean TV distance and the mean number of classes per client holding at least 5% of that
client's data."""),
    code("""
sweep = []
for a in np.logspace(-2, 2, 17):
    for kind, label in (("dirichlet", "per class"), ("dirichlet_client", "per client (Hsu et al.)")):
        p = make_partition(kind, labels, num_clients, seed, alpha=float(a), min_size=min_size)
        stats = partition_stats(p, labels, data.num_classes)
        c = label_counts(p, labels, data.num_classes)
        major = ((c / np.maximum(c.sum(1, keepdims=True), 1)) >= 0.05).sum(1).mean()
        sweep.append({"alpha": a, "variant": label, "mean TV distance": stats.tv_distance.mean(),
                      "classes with >= 5% of a client": major})
sweep = pd.DataFrame(sweep)
plots.lines(sweep, "alpha", "mean TV distance", "variant", title="Label skew against alpha",
            log_x=True, name="02_alpha_tv", figures_dir=figures_dir).show()
plots.lines(sweep, "alpha", "classes with >= 5% of a client", "variant", title="Classes per client against alpha",
            log_x=True, name="02_alpha_classes", figures_dir=figures_dir).show()"""),
    md("""
## Try it

The slider redraws the per-class Dirichlet split (the one the experiments use) for any $\\alpha$
between 0.01 and 100 and any number of clients, and prints the same statistics as
`describe_stats(partition_stats(...))`. Here is that text for the parameters above:"""),
    code("""
print(describe_stats(partition_stats(parts[f"Dirichlet per class (alpha={alpha:g})"], labels, data.num_classes)))"""),
    code("""
explorer = PartitionExplorer(labels, data.num_classes, alpha=alpha, num_clients=num_clients, seed=seed,
                             min_size=min_size)
explorer""", "widget"),
]

# ---------------------------------------------------------------------------------------------
NB03 = [
    md(f"""
# 03 · Channel-wise symmetric quantization

{LEE} shrinks each client's upload by sending every weight as a b-bit integer with one
floating-point scale per output channel (after Krishnamoorthi 2018, *Quantizing deep convolutional
networks for efficient inference*). This notebook computes the quantizer's three equations on a real
SqueezeNet 1.0 layer, compares per-channel with per-tensor scales across bit widths, and rebuilds the
paper's Table 1 (bytes uploaded per round)."""),
    params("""
dataset: str = "cifar10"  # cifar10 (torchvision downloads it into data_root), synthetic, or an .npz file
data_root: str = "../data"  # folder torchvision downloads into
model: str = "squeezenet1_0"  # network whose weights are quantized
layer: str = "features.0.weight"  # tensor of the worked example
channel: int = 0  # output channel of the worked example
bits: int = 4  # bit width of the worked example (the slider starts here)
local_epochs: int = 1  # epochs one client trains before the errors are measured (0: untrained)
num_clients: int = 10  # K, clients uploading per round in Table 1 (the paper: 10)
seed: int = 0  # seed of the initialization and of the local training
figures_dir: str = "../figures"  # where static PNGs are written
device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda or mps"""),
    code(SETUP + """
import torch

from fl_lib.config import preset
from fl_lib.data import load_dataset
from fl_lib.fedavg import Federation
from fl_lib.metrics import quantization_errors, whole_model_error
from fl_lib.quant import dequantize, quantize
from fl_lib.traffic import PAPER_MIB, format_table, traffic_table
from fl_lib.widgets import QuantExplorer, channel_quant_stats, describe_quant

data = load_dataset(dataset, data_root)
cfg = preset("paper", dataset=dataset, data_root=data_root, model=model, num_clients=num_clients,
             local_epochs=max(local_epochs, 1), seed=seed, device=device)
fed = Federation(cfg, data=data)
init = {k: v.detach().cpu().clone() for k, v in fed.global_state.items()}
if local_epochs > 0:
    fed.train_client(0, 1)  # client 0's local training in round 1, exactly as in a FedAvg run
trained = {k: v.detach().cpu().clone() for k, v in fed.model.state_dict().items()}
update = {k: trained[k] - init[k] for k in init if init[k].is_floating_point()}
print(f"{model}: {sum(v.numel() for v in init.values()):,} values in {len(init)} tensors; "
      f"client 0 trained {local_epochs} epoch(s) on {fed.sizes[0]} images")"""),
    md("""
## The quantizer, equation by equation

A *channel* c is one slice of a weight tensor along its first dimension (one output channel of a
convolution); a bias is a single channel. With b bits the integer grid is symmetric around zero,
$q_{\\max} = 2^{b-1}-1$ and $q_{\\min} = -q_{\\max}$, so zero is exact and no zero point is needed.
Equation (1) gives each channel its own scale, from its largest weight:

$$s_c = \\frac{\\max_i |w_{c,i}|}{q_{\\max}} \\quad (1)$$"""),
    code("""
W = trained[layer].float()
w = W.reshape(W.shape[0], -1)  # row c holds channel c's weights w_{c,i}
q_max, q_min = 2 ** (bits - 1) - 1, -(2 ** (bits - 1) - 1)
s = w.abs().amax(dim=1) / q_max  # (1)
print(f"{layer}: shape {tuple(W.shape)}, {w.shape[0]} channels of {w.shape[1]} weights; {bits} bits: "
      f"q_max = {q_max}; s_c from {s.min():.3g} to {s.max():.3g}")"""),
    md("""
Equation (2) maps each weight to the nearest grid point and clips to the grid (with the scale of
(1) nothing is actually clipped: the largest weight lands on $q_{\\max}$):

$$q_{c,i} = \\mathrm{clip}(\\mathrm{round}(w_{c,i} / s_c),\\, q_{\\min},\\, q_{\\max}) \\quad (2)$$"""),
    code("""
q = torch.clamp(torch.round(w / s[:, None]), q_min, q_max)  # (2)
print(f"codes from {int(q.min())} to {int(q.max())}; channel {channel}: {q[channel, :8].int().tolist()} ...")"""),
    md("""
Equation (3) restores real weights on the receiving side, and the error of each weight is at most
half a grid step, $|w_{c,i} - \\hat{w}_{c,i}| \\le s_c / 2$:

$$\\hat{w}_{c,i} = s_c \\, q_{c,i} \\quad (3)$$"""),
    code("""
w_hat = s[:, None] * q  # (3)
qt = quantize(W, bits)  # fl_lib's quantizer, the one the uploads use
print(f"codes that differ from fl_lib.quant's: {int((qt.q.reshape_as(q).float() != q).sum())} of {q.numel()}")
print(f"largest difference from fl_lib's reconstruction: {(dequantize(qt).reshape_as(w) - w_hat).abs().max():.1e}")
print(f"max |w - w_hat| / (s_c / 2) over all channels: {((w - w_hat).abs().amax(1) / (s / 2)).max():.3f} (<= 1)")
pd.DataFrame({"w_ci": w[channel, :8], "w_ci / s_c": w[channel, :8] / s[channel], "q_ci": q[channel, :8],
              "w_hat_ci": w_hat[channel, :8]}).round(5)"""),
    md("""
## Per channel or per tensor?

A per-tensor quantizer uses one scale for the whole tensor, $s = \\max_{c,i} |w_{c,i}| / q_{\\max}$.
A channel whose weights are small next to the tensor's largest weight then uses only a few grid
levels. The relative error $\\|\\hat{w} - w\\| / \\|w\\|$ over the whole model, for the untrained
initialization, the weights after local training, and the update (trained minus initial weights,
what `upload="delta"` sends):"""),
    code("""
bit_range = list(range(2, 17))
curves = []
for what, state in (("initial weights", init), ("trained weights", trained), ("update", update)):
    for per_channel in (True, False):
        for b in bit_range:
            curves.append({"bits": b, "relative error": whole_model_error(state, b, per_channel),
                           "quantizer": f"{what}, per {'channel' if per_channel else 'tensor'}"})
curves = pd.DataFrame(curves)
plots.lines(curves, "bits", "relative error", "quantizer", title=f"{model}: quantization error of the whole model",
            log_y=True, name="03_error_vs_bits", figures_dir=figures_dir).show()
table = curves.pivot(index="bits", columns="quantizer", values="relative error")
ratio = {what: table.loc[bits, f"{what}, per tensor"] / table.loc[bits, f"{what}, per channel"]
         for what in ("initial weights", "trained weights", "update")}
display(Markdown(
    f"At {bits} bits one scale per tensor gives {ratio['initial weights']:.2f}x the error of per-channel scales on "
    f"the initial weights, {ratio['trained weights']:.2f}x on the trained weights and {ratio['update']:.2f}x on "
    f"the update. SqueezeNet's initialization draws every channel of a layer from the same range, so the "
    f"channels' largest weights barely differ and neither do the two quantizers. The update's channels "
    f"differ in size from the first epoch on, and that is where a scale per channel pays off most."))
table.loc[[b for b in (2, 4, 8, 16) if b in table.index]]"""),
    md("""
Layer by layer at the worked example's bit width: the spread of the channel scales
(largest / smallest $s_c$) says how much a single scale must give up."""),
    code("""
layers = quantization_errors({k: v for k, v in trained.items() if v.dim() > 1}, [bits])
def scale_spread(t):  # largest over smallest channel maximum |w_ci|
    amax = t.reshape(t.shape[0], -1).abs().amax(1)
    return float(amax.max() / amax.clamp_min(1e-12).min())

layers["scale spread"] = [scale_spread(trained[name]) for name in layers.layer]
layers["per tensor / per channel"] = layers.per_tensor / layers.per_channel
layers.sort_values("per tensor / per channel", ascending=False).round(4).head(10)"""),
    md(f"""
## Try it: one channel at any bit width

The slider redraws channel `channel` of `layer`: its weights, their reconstructions $\\hat{{w}}$ and
(up to 6 bits) the grid $s_c q$. The text under it comes from `channel_quant_stats`, which the next
cell calls directly:"""),
    code("""
print(describe_quant(channel_quant_stats(W[channel], bits)))"""),
    code("""
QuantExplorer(W[channel], bits, title=f"{layer}[{channel}]")""", "widget"),
    md("""
## Bytes per round: the paper's Table 1

Each of the K clients uploads its whole model every round. At b bits a tensor with N values in C
channels costs N b bits of codes plus C 32-bit scales. `traffic_table` (also printed by
`python -m fl_lib traffic`) counts it two ways: `encoded` is fl_lib's bit-packed upload, the bytes the
experiments log; `torch_save` is the size of a `torch.save` file of the float32 state dict, or of the
integer codes (int8/int16) plus float32 scales, which is how the paper's numbers come out."""),
    code("""
rows1 = traffic_table(model, num_clients, bits=(32, 16, 8, 4, 2), num_classes=data.num_classes)
print(format_table(rows1))
table1 = pd.DataFrame(rows1)
table1[["label", "encoded_mb", "encoded_mib", "encoded_reduction_pct", "torch_save_mib",
        "torch_save_reduction_pct", "paper_mib"]].round(3)"""),
    code("""
if PAPER_MIB and model == "squeezenet1_0" and num_clients == 10 and data.num_classes == 10:
    by_bits = table1.set_index("bits")
    fp32, int16 = by_bits.loc[32], by_bits.loc[16]
    display(Markdown(
        f"The paper reports {PAPER_MIB[32]} MB (FP32) and {PAPER_MIB[16]} MB (INT16) per round, "
        f"{100 * (1 - PAPER_MIB[16] / PAPER_MIB[32]):.1f}% less. Those are MiB (2^20 bytes) of "
        f"torch.save files: ours are {fp32.torch_save_mib:.2f} and {int16.torch_save_mib:.2f} MiB "
        f"({int16.torch_save_reduction_pct:.1f}% less). Bit-packed as fl_lib sends them, INT16 saves "
        f"{int16.encoded_reduction_pct:.1f}%, INT8 {by_bits.loc[8].encoded_reduction_pct:.1f}% and "
        f"INT4 {by_bits.loc[4].encoded_reduction_pct:.1f}%."))"""),
]

# ---------------------------------------------------------------------------------------------
NB04 = [
    md(f"""
# 04 · FedAvg with quantized uploads: the paper's experiment

{LEE} train SqueezeNet 1.0 on CIFAR-10 with FedAvg ({MCMAHAN}): 10 clients with a Dirichlet
($\\alpha = 0.5$) label split, 5 local epochs, 300 rounds, every client uploading its model quantized
channel-wise to 16 bits. They report that INT16 halves the upload (Table 1: 28.41 MB against 14.66 MB
per round, -48.4%) and that its accuracy is equal to or slightly above FP32's in every round, rising
faster early on (Figure 1).

Here the same experiment runs as *paired* runs: for a given seed, the FP32 run and the quantized
runs share the initialization, the partition, the sampled clients, the batch order and the
augmentation; only the upload codec differs. Each pair is repeated over several seeds, so a
difference between bit widths can be set against the spread between seeds. The default `preset`
is `quick` (a small CNN, 1 local epoch), sized for a CPU; `paper` is the full setup."""),
    params("""
preset: str = "quick"  # starting config: quick (small CNN, 1 local epoch) or paper (SqueezeNet 1.0, 5 epochs)
dataset: str = "cifar10"  # cifar10 (torchvision downloads it into data_root), synthetic, or an .npz file
data_root: str = "../data"  # folder torchvision downloads into
num_rounds: int = 20  # communication rounds of every run (the paper: 300)
num_clients: int = 10  # K, clients, all sampled every round (the paper: 10)
alpha: float = 0.5  # Dirichlet concentration of the label split (the paper: 0.5)
bits: str = "32,16,8,4"  # upload bit widths, comma-separated; 32 means float32 (the paper: 32, 16)
delta_bits: str = "4"  # bit widths at which quantized weights and quantized updates are compared
seeds: str = "0,1,2"  # comma-separated seeds; every bit width runs once per seed
results_dir: str = "../data/runs"  # cached runs, shared by all notebooks
figures_dir: str = "../figures"  # where static PNGs are written
device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda or mps"""),
    code(SETUP + """
from pathlib import Path

from fl_lib import config
from fl_lib.results import run

bits_list = parse_list(bits, int)
delta_list = parse_list(delta_bits, int)
seed_list = parse_seeds(seeds)
base = config.preset(preset, dataset=dataset, data_root=data_root, num_rounds=num_rounds,
                     num_clients=num_clients, alpha=alpha, partition="dirichlet", device=device)
label = {b: "FP32" if b == 32 else f"INT{b}" for b in sorted(set(bits_list + delta_list + [32]))}
shown = ["model", "dataset", "num_clients", "partition", "alpha", "client_fraction", "local_epochs", "batch_size",
         "lr", "momentum", "weight_decay", "augment", "num_rounds"]
pd.DataFrame([{k: getattr(base, k) for k in shown}], index=["base config"])"""),
    code("""
frames = []
for seed in seed_list:
    for b in bits_list:
        r = run(base.replace(bits=b, seed=seed), root=results_dir)
        frames.append(r.metrics.assign(bits=b, seed=seed, label=label[b]))
metrics = pd.concat(frames, ignore_index=True)"""),
    md("""
## Accuracy over rounds (the paper's Figure 1)

Mean over the seeds, with a band of one standard deviation."""),
    code("""
plots.accuracy_over_rounds(metrics, title=f"{base.model}, {Path(dataset).stem}, Dirichlet alpha={alpha:g}",
                           name="04_accuracy", figures_dir=figures_dir).show()"""),
    md("""
## Accuracy per uploaded megabyte

The same curves against the data all clients uploaded so far (MB = $10^6$ bytes, as fl_lib's
codec counts them: bit-packed codes plus one float32 scale per channel)."""),
    code("""
plots.accuracy_vs_upload(metrics, title="Test accuracy against cumulative upload",
                         name="04_accuracy_vs_mb", figures_dir=figures_dir).show()
last = metrics[metrics["round"] == num_rounds]
per_bits = last.groupby("bits").agg(final_acc_mean=("test_acc", "mean"), final_acc_std=("test_acc", "std"),
                                    mb_per_round=("upload_bytes", lambda x: x.mean() / 1e6),
                                    total_mb=("cum_upload_bytes", lambda x: x.mean() / 1e6))
per_bits["upload vs FP32 (%)"] = 100 * (per_bits.total_mb / per_bits.total_mb.get(32, float("nan")) - 1)
per_bits.sort_index(ascending=False).round(4)"""),
    md("""
## Quantized minus FP32, paired by seed

For each seed and round, the difference in test accuracy between the b-bit run and the FP32 run
with the same seed; then its mean and standard deviation over the seeds:

$$\\Delta_t = \\mathrm{acc}_t^{\\mathrm{INT}b} - \\mathrm{acc}_t^{\\mathrm{FP32}}$$

Pairing removes what the seeds share (initialization, partition, batches), so this spread is smaller
than the spread of either curve alone."""),
    code("""
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
    display(summary.round(4))"""),
    md("""
## Quantized weights or quantized updates?

With `upload="weights"` a client sends its quantized model $\\hat{w}^k$. With `upload="delta"` it
sends the quantized update $w^k_{t+1} - w_t$, and the server adds it to $w_t$, which it already
holds. The quantization error is proportional to the largest value in a channel, and an update is
much smaller than the weights, so at a low bit width the delta should lose far less. `quant_error`
is the relative error $\\|\\hat{w} - w\\| / \\|w\\|$ of what the server reconstructs, averaged over the
clients of a round."""),
    code("""
frames = []
for seed in seed_list:
    for b in delta_list:
        for upload in ("weights", "delta"):
            r = run(base.replace(bits=b, upload=upload, seed=seed), root=results_dir)
            frames.append(r.metrics.assign(bits=b, seed=seed, upload=upload, label=f"{label[b]}, {upload}"))
    r = run(base.replace(bits=32, seed=seed), root=results_dir)
    frames.append(r.metrics.assign(bits=32, seed=seed, upload="weights", label="FP32"))
uploads = pd.concat(frames, ignore_index=True)
plots.accuracy_over_rounds(uploads, title="Quantized weights vs quantized updates",
                           name="04_weights_vs_delta", figures_dir=figures_dir).show()
pd.DataFrame({"final accuracy (mean over seeds)": uploads[uploads["round"] == num_rounds].groupby("label").test_acc.mean(),
              "mean quant_error": uploads.groupby("label").quant_error.mean()}).round(5)"""),
    code("""
fp32 = per_bits.loc[32] if 32 in per_bits.index else None
lines_out = []
for b in bits_list:
    if b == 32 or fp32 is None:
        continue
    row = per_bits.loc[b]
    d = summary.loc[f"{label[b]} - FP32"] if len(diffs) else None
    lines_out.append(
        f"* **{label[b]}**: {row.mb_per_round:.2f} MB per round against {fp32.mb_per_round:.2f} "
        f"({-row['upload vs FP32 (%)']:.1f}% less); final accuracy {row.final_acc_mean:.4f} against "
        f"{fp32.final_acc_mean:.4f}; paired difference in the last round {d['final round: mean']:+.4f} "
        f"(std {d['final round: std over seeds']:.4f} over {len(seed_list)} seed(s)); averaged over the seeds "
        f"it was above FP32 in {d['rounds above FP32 (%)']:.0f}% of the rounds and below in "
        f"{d['rounds below FP32 (%)']:.0f}%.")
display(Markdown(f"### In short ({base.model}, {Path(dataset).stem}, {num_rounds} rounds, {len(seed_list)} seed(s))\\n\\n"
                 + "\\n".join(lines_out)))"""),
]

# ---------------------------------------------------------------------------------------------
NB05 = [
    md(f"""
# 05 · What if: label skew against bit width

{LEE} report a single point: Dirichlet $\\alpha = 0.5$ and INT16. This notebook runs the grid
around it, every $\\alpha$ with every bit width, and summarizes each cell by its final test accuracy
and the megabytes all clients uploaded. FedAvg itself is {MCMAHAN}'s. Runs are shared with notebook
04 through the results cache whenever the configs agree."""),
    params("""
preset: str = "quick"  # starting config: quick (small CNN, 1 local epoch) or paper (SqueezeNet 1.0, 5 epochs)
dataset: str = "cifar10"  # cifar10 (torchvision downloads it into data_root), synthetic, or an .npz file
data_root: str = "../data"  # folder torchvision downloads into
num_rounds: int = 20  # communication rounds of every run
num_clients: int = 10  # K, clients, all sampled every round
alphas: str = "0.1,0.5,1,100"  # Dirichlet concentrations, comma-separated (smaller: more skew)
bits: str = "32,16,8,4"  # upload bit widths, comma-separated; 32 means float32
seeds: str = "0"  # comma-separated seeds; every cell runs once per seed
results_dir: str = "../data/runs"  # cached runs, shared by all notebooks
figures_dir: str = "../figures"  # where static PNGs are written
device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda or mps"""),
    code(SETUP + """
from pathlib import Path

from fl_lib import config
from fl_lib.results import run

alpha_list = parse_list(alphas, float)
bits_list = parse_list(bits, int)
seed_list = parse_seeds(seeds)
base = config.preset(preset, dataset=dataset, data_root=data_root, num_rounds=num_rounds,
                     num_clients=num_clients, partition="dirichlet", device=device)
print(f"{len(alpha_list)} alphas x {len(bits_list)} bit widths x {len(seed_list)} seed(s) = "
      f"{len(alpha_list) * len(bits_list) * len(seed_list)} runs of {num_rounds} rounds ({base.model})")"""),
    code("""
cells = []
for a in alpha_list:
    for b in bits_list:
        for seed in seed_list:
            r = run(base.replace(alpha=a, bits=b, seed=seed), root=results_dir)
            cells.append({"alpha": a, "bits": b, "seed": seed, "final_acc": r.summary["final_test_acc"],
                          "best_acc": r.summary["best_test_acc"], "upload_mb": r.summary["total_upload_mb"]})
cells = pd.DataFrame(cells)
grid = cells.groupby(["alpha", "bits"]).mean(numeric_only=True).drop(columns="seed")
acc_table = grid.final_acc.unstack("bits")[bits_list]
mb_table = grid.upload_mb.unstack("bits")[bits_list]
acc_table.columns.name = mb_table.columns.name = "bits"
grid.round(4)"""),
    code("""
plots.grid_heatmap(acc_table, title=f"Final test accuracy after {num_rounds} rounds", fmt=".3f",
                   colorbar="accuracy", name="05_accuracy_grid", figures_dir=figures_dir).show()
plots.grid_heatmap(mb_table, title="Uploaded by all clients (MB)", fmt=".1f", colorbar="MB",
                   name="05_upload_grid", figures_dir=figures_dir).show()"""),
    md("""
## The headline numbers

Written from the tables above. "Within a point" means the mean final accuracy is at most 0.01
below FP32's at the same $\\alpha$; with few seeds and rounds, differences of that size are
within the noise between seeds (notebook 04 measures that spread)."""),
    code("""
text = [f"Grid of {len(alpha_list)} alphas by {len(bits_list)} bit widths, {num_rounds} rounds of "
        f"{base.model} on {Path(dataset).stem}, {len(seed_list)} seed(s) per cell."]
best = grid.final_acc.idxmax()
worst = grid.final_acc.idxmin()
text.append(f"Best cell: alpha = {best[0]:g} at {best[1]} bits, accuracy {grid.final_acc.max():.4f}; "
            f"worst: alpha = {worst[0]:g} at {worst[1]} bits, {grid.final_acc.min():.4f}.")
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
display(Markdown("\\n\\n".join(text)))"""),
]


if __name__ == "__main__":
    for name, cells in (("01_fedsgd_to_fedavg", NB01), ("02_non_iid_partitions", NB02),
                        ("03_channelwise_quantization", NB03), ("04_quantized_fedavg", NB04),
                        ("05_what_if_report", NB05)):
        write(name, cells)
        print(f"wrote notebooks/{name}.ipynb ({len(cells)} cells)")
