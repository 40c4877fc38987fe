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
# # 02 · Non-IID partitions: IID, shards and Dirichlet
#
# In federated learning every client holds its own data, and a client's labels rarely follow the
# global mix. McMahan et al. (2017) simulate this with *label shards*; Lee & Lee (like most later
# work) draw the split from a Dirichlet distribution with concentration $\alpha = 0.5$ over 10
# clients of CIFAR-10. This lesson shows the splits side by side, explains what $\alpha$ does, and
# ends with a slider.

# %% tags=["parameters"] slideshow={"slide_type": "skip"}
dataset: str = "cifar10"  # cifar10 (torchvision downloads it into data_root), synthetic, or an .npz file
data_root: str = ""  # where datasets are downloaded and built; empty: the project's data/
num_clients: int = 10  # K, clients holding data
alpha: float = 0.5  # Dirichlet concentration (smaller: more label skew)
shards_per_client: int = 2  # label shards per client in McMahan et al.'s split
seed: int = 0  # seed of the random splits
figures_dir: str = ""  # where static PNGs are written; empty: the project's figures/
theme: str = "screen"  # figures for a laptop screen, or a projector (larger fonts, thicker lines): screen or projector

# %% slideshow={"slide_type": "subslide"}
import numpy as np
import pandas as pd

from fl_lib.study import lesson
from fl_lib.study import plots
from fl_lib.study.analysis import describe_stats, partition_stats, summarize_stats
from fl_lib.core.config import Config
from fl_lib.core.data import load_dataset
from fl_lib.core.partition import label_counts, make_partition
from fl_lib.study.widgets import PartitionExplorer

lesson.setup("mcmahan", "lee", "yurochkin", "wang", "li", "hsu", theme=theme)
data_root = lesson.folder("data_root", data_root)
figures_dir = lesson.folder("figures_dir", figures_dir)

data = load_dataset(dataset, data_root)
labels = data.y_train.numpy()
min_size = Config().min_size  # the experiments' minimum client size for Dirichlet splits
print(f"{data.name}: {len(labels)} training images, {data.num_classes} classes, "
      f"{np.bincount(labels).min()}-{np.bincount(labels).max()} per class")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Four ways to split the training set
#
# * **IID**: shuffle and cut into K parts of equal size. Every client sees the global label mix.
# * **Shards** (McMahan et al. 2017): sort the examples by label, cut them into $K \cdot s$ shards of
#   equal size and deal $s$ shards to each client. With $s = 2$ most clients hold two classes.
# * **Dirichlet per class** (fl_lib's `dirichlet`; Yurochkin et al. 2019, Wang et al. 2020, and the
#   NIID-Bench code of Li et al. 2022): for every class c, draw how its examples are spread over the
#   K clients, $p_c \sim \mathrm{Dir}(\alpha \mathbf{1}_K)$, and deal class c's examples by $p_c$.
#   Client sizes therefore vary. As in the reference code, a client that already holds more than an
#   equal share receives no more, and every client gets at least `min_size` examples.
# * **Dirichlet per client** (fl_lib's `dirichlet_per_client`; Hsu et al. 2019): each client k draws its own
#   label mix $q_k \sim \mathrm{Dir}(\alpha p)$, with p the global label distribution, and fills an
#   equal share of the data from it. Sizes are equal; only the label mix varies.
#
# The Lee & Lee paper says only "Dirichlet distribution, $\alpha = 0.5$". The experiments in
# lessons 05 and 06 use the per-class variant, the most common one in federated learning code.

# %% slideshow={"slide_type": "subslide"}
parts = {
    "IID": make_partition("iid", labels, num_clients, seed),
    f"shards (s={shards_per_client})": make_partition("shards", labels, num_clients, seed,
                                                      shards_per_client=shards_per_client),
    f"Dirichlet per class (alpha={alpha:g})": make_partition("dirichlet", labels, num_clients, seed,
                                                             alpha=alpha, min_size=min_size),
    f"Dirichlet per client (alpha={alpha:g})": make_partition("dirichlet_per_client", labels, num_clients, seed,
                                                              alpha=alpha),
}
counts = {name: label_counts(p, labels, data.num_classes) for name, p in parts.items()}
plots.label_heatmaps(counts, title=f"Label counts per client ({data.name}, K = {num_clients})",
                     name="02_partitions", figures_dir=figures_dir).show()

# %% [markdown] slideshow={"slide_type": "slide"}
# ## How far is each client from the global mix?
#
# Two numbers per client: how many classes it holds, and the total-variation distance of its label
# mix from the global one, with $n_{k,c}$ the examples of class c on client k:
#
# $$\mathrm{TV}_k = \frac{1}{2}\sum_c \left|\frac{n_{k,c}}{n_k} - \frac{n_c}{n}\right|$$
#
# It is 0 for a client mixed like the whole training set and $1 - n_c/n$ (0.9 for ten balanced
# classes) for a client holding only class c.

# %%
summary = pd.DataFrame({name: summarize_stats(partition_stats(p, labels, data.num_classes))
                        for name, p in parts.items()}).T
summary.round(3)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## What alpha does
#
# $\alpha$ is the concentration of the Dirichlet distribution. Large $\alpha$ puts the draws near the
# uniform mix, so every client looks like the global data (IID in the limit). Small $\alpha$ puts most of
# the mass of each draw on a few entries: in the per-class variant each class lands on one or two
# clients, in the per-client variant each client is dominated by one or two classes. The sweep below
# shows the mean TV distance and the mean number of classes per client holding at least 5% of that
# client's data.

# %% slideshow={"slide_type": "subslide"}
sweep = []
for a in np.logspace(-2, 2, 17):
    for kind, label in (("dirichlet", "per class"), ("dirichlet_per_client", "per client (Hsu et al.)")):
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
            log_x=True, name="02_alpha_classes", figures_dir=figures_dir).show()

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Try it
#
# The slider redraws the per-class Dirichlet split (the one the experiments use) for any $\alpha$
# between 0.01 and 100 and any number of clients, and prints the same statistics as
# `describe_stats(partition_stats(...))`. Here is that text for the parameters above:

# %%
print(describe_stats(partition_stats(parts[f"Dirichlet per class (alpha={alpha:g})"], labels, data.num_classes)))

# %% tags=["widget"] slideshow={"slide_type": "subslide"}
explorer = PartitionExplorer(labels, data.num_classes, alpha=alpha, num_clients=num_clients, seed=seed,
                             min_size=min_size)
explorer

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# Each exercise asks for a prediction first. Write it down, change the variable at the top of the code cell,
# run the cell, and only then open the answer: the cell computes it from the partitions, nothing in it is written
# in advance. Every split here takes a moment: nothing is trained.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 1: which alpha is as skewed as the shards?
#
# McMahan et al.'s shards and the Dirichlet split are two ways to make non-IID data. The summary table gives the
# shards split's mean TV distance. **Predict:** the per-class Dirichlet split with the same mean TV distance, is
# its $\alpha$ below or above `alpha`? Set `alpha_try` to your guess of the matching value and run: the cell
# measures your guess, then searches a fine grid of $\alpha$ for the match.

# %%
from IPython.display import display

from fl_lib.study.exercises import answer, holds

alpha_try = 0.1  # change me: your guess of the alpha whose mean TV distance matches the shards split


def mean_tv(a, k=num_clients):
    """Mean TV distance of the per-class Dirichlet split at alpha a over k clients."""
    p = make_partition("dirichlet", labels, k, seed, alpha=float(a), min_size=min_size)
    return float(partition_stats(p, labels, data.num_classes).tv_distance.mean())


shards_tv = summary.loc[f"shards (s={shards_per_client})", "tv_mean"]
guess_tv = mean_tv(alpha_try)
search = pd.DataFrame({"alpha": np.logspace(-3, 3, 61)})
search["mean TV distance"] = [mean_tv(a) for a in search.alpha]
match = search.iloc[(search["mean TV distance"] - shards_tv).abs().argmin()]
inside = search["mean TV distance"].min() <= shards_tv <= search["mean TV distance"].max()
display(answer(
    f"Shards (s = {shards_per_client}): mean TV distance {shards_tv:.3f}. Your alpha_try = {alpha_try:g} gives "
    f"{guess_tv:.3f}: {'more' if guess_tv > shards_tv else 'less'} skewed than the shards.\n\n"
    f"Over {len(search)} values of alpha from {search.alpha.min():g} to {search.alpha.max():g}, the closest match is "
    f"alpha = {match.alpha:.3g} (mean TV distance {match['mean TV distance']:.3f})"
    + ("" if inside else "; the shards' value lies outside the range the grid reaches, so this is only the nearest end")
    + f". The matching alpha lies below `alpha` = {alpha:g}: {holds(match.alpha < alpha)} in this run."))

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 2: more clients, same alpha
#
# **Predict:** split the same training set over more clients, keeping `alpha` and `shards_per_client`. Does the
# mean TV distance of the per-class Dirichlet split go up or down? And the shards split's? Change
# `num_clients_try` and run (each client still needs `min_size` examples).

# %%
num_clients_try = 3 * num_clients  # change me: K of the second pair of splits


def shards_tv_at(k):
    """Mean TV distance of the shards split over k clients."""
    p = make_partition("shards", labels, k, seed, shards_per_client=shards_per_client)
    return float(partition_stats(p, labels, data.num_classes).tv_distance.mean())


more = pd.DataFrame({"Dirichlet per class": [mean_tv(alpha, k) for k in (num_clients, num_clients_try)],
                     "shards": [shards_tv_at(k) for k in (num_clients, num_clients_try)]},
                    index=pd.Index([num_clients, num_clients_try], name="K"))
display(more.round(3))
grows = more.iloc[1] > more.iloc[0]
display(answer(
    f"Mean TV distance at K = {num_clients} and at K = {num_clients_try} clients:\n\n"
    + "\n".join(f"* {split}: {more[split].iloc[0]:.3f} against {more[split].iloc[1]:.3f}; it grows with K "
                f"{holds(grows[split])} in this run." for split in more.columns)
    + f"\n\nWith more clients each client holds fewer examples, and the Dirichlet draw for each class is spread "
      f"over more clients; the shards split gives every client {shards_per_client} shards whatever K is."))
