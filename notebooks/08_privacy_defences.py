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
# # 08 · Defences: DP-FedAvg and secure aggregation
#
# Lesson 07 showed that a server can rebuild a client's data from its upload. This lesson measures
# the two defences McMahan et al.'s presentation names, on the same data as the other lessons:
#
# 1. **DP-FedAvg** (McMahan et al. 2018). Clipping plus Gaussian noise bounds what the *released
#    model* says about any one client; what that costs in accuracy at a given $\varepsilon$.
# 2. **Secure aggregation** (Bonawitz et al. 2017). The server sees only masked uploads and their
#    exact sum; what the shared quantization grid it needs costs in error and in bits.
#
# **References.** McMahan, Ramage, Talwar and Zhang (2018), *Learning Differentially Private
# Recurrent Language Models*, ICLR. Bonawitz et al. (2017), *Practical Secure Aggregation for
# Privacy-Preserving Machine Learning*, CCS. Kairouz, Liu and Steinke (2021), *The Distributed
# Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation*, ICML.

# %% tags=["parameters"] slideshow={"slide_type": "skip"}
preset: str = "quick"  # config of the federated runs: quick (small CNN, 1 local epoch) or smoke
dataset: str = "cifar10"  # cifar10 (torchvision downloads it into data_root), synthetic, or an .npz file
data_root: str = ""  # where datasets are downloaded and built; empty: the project's data/
num_rounds: int = 8  # communication rounds of every federated run
num_clients: int = 10  # K, clients, all sampled every round
alpha: float = 0.5  # Dirichlet concentration of the label split
bits: int = 8  # upload bit width of the federated runs (2..16; secure aggregation needs integer codes)
dp_clip: float = 1.0  # S, L2 norm every client update is clipped to (printed against round 1's median update norm)
noise_levels: str = "0.1,1.0"  # comma-separated noise multipliers z (noise std on the sum is z S); 0 clips only
dp_delta: float = 1e-5  # delta of the (epsilon, delta) guarantee
dp_sampling: str = "poisson"  # how DP runs pick clients: poisson (each with probability C) or fixed (exactly m)
secagg_bit_widths: str = "16,8,4"  # comma-separated bit widths at which the shared scale's cost is measured
seeds: str = "0,1"  # comma-separated seeds; runs repeat for each (the lesson says which use the first only)
results_dir: str = ""  # cached runs and attacks, shared by all lessons; empty: the project's data/runs/
figures_dir: str = ""  # where static PNGs are written; empty: the project's figures/
device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda or mps
theme: str = "screen"  # figures for a laptop screen, or a projector (larger fonts, thicker lines): screen or projector
workers: int = 0  # processes that compute this lesson's runs side by side; 0: one per core

# %% slideshow={"slide_type": "subslide"}
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from fl_lib.core import config
from fl_lib.privacy import dp
from fl_lib.privacy import dp_quant
from fl_lib.study import lesson
from fl_lib.study import plots
from fl_lib.study import reference
from fl_lib.privacy import secagg
from fl_lib.core.codec import encode
from fl_lib.core.config import parse_list, parse_seeds
from fl_lib.core.data import load_dataset
from fl_lib.core.errors import ConfigError, DivergenceError
from fl_lib.privacy.stages import SECAGG_MARGIN
from fl_lib.simulator.federation import Federation
from fl_lib.core.models import build_model
from fl_lib.core.quant import fake_quantize, q_max, relative_error
from fl_lib.runtime.results import run
from fl_lib.study.sweep import sweep
from fl_lib.study.widgets import width_label

lesson.setup("mcmahan", theme=theme)
data_root = lesson.folder("data_root", data_root)
results_dir = lesson.folder("results_dir", results_dir)
figures_dir = lesson.folder("figures_dir", figures_dir)

z_list = parse_list(noise_levels, float)
secagg_bits = parse_list(secagg_bit_widths, int)
seed_list = parse_seeds(seeds)
seed = seed_list[0]
ds = load_dataset(dataset, data_root)
base = config.preset(preset, dataset=dataset, data_root=data_root, num_rounds=num_rounds, num_clients=num_clients,
                     alpha=alpha, partition="dirichlet", bits=bits, device=device)
shown = ["model", "dataset", "num_clients", "client_fraction", "local_epochs", "batch_size", "lr", "num_rounds",
         "bits", "upload"]
pd.DataFrame([{k: getattr(base, k) for k in shown}], index=["federated runs"])

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1 · DP-FedAvg: clipping, noise, a fixed denominator
#
# With $S$ = `dp_clip` and $z$ = the noise multiplier, each sampled client $k$ clips its update
# $\Delta_k = w_k - w_t$ before quantizing it, and the server (after decoding, clipping again, since
# quantization can move an update past $S$) adds Gaussian noise to the sum and divides by a *fixed*
# number, the expected number of clients per round $m = qK$:
#
# $$\tilde\Delta_k = \Delta_k \min\!\Big(1, \frac{S}{\|\Delta_k\|_2}\Big), \qquad
#   w_{t+1} = w_t + \frac{1}{m}\Big(\sum_{k \in \mathcal{S}_t} \tilde\Delta_k + \mathcal{N}(0, z^2 S^2 I)\Big).$$
#
# **Which clients, and which bound.** The guarantee holds only for the sampling that really happened.
# By default (`dp_sampling="poisson"`, McMahan et al. 2018's Algorithm 1) every client joins round
# $t$ independently with probability $q = C$, so $|\mathcal{S}_t|$ varies (the `sampled_clients`
# column). Adding or removing one client changes the noised sum by at most $S$, and Opacus's RDP
# accountant for the sampled Gaussian mechanism gives $\varepsilon$ at $\delta$ = `dp_delta`.
# With `dp_sampling="fixed"` exactly $m$ clients are drawn without replacement; one client can then
# push another out, so the bound is for *replacing* one client, whose sensitivity is $2S$: the noise
# is a multiplier $z/2$ on it, accounted by dp-accounting's RDP bound for sampling without
# replacement (Wang, Balle and Kasiviswanathan 2019). Weights are uniform; FedAvg's $n_k / n$ would
# let a large client move the model by more than $S$.
#
# **Why small federations pay a lot.** The noise on each coordinate of the averaged update has std
# $zS/m$, while the whole clipped mean has norm at most $S$. Over $d$ parameters the noise's norm is
# about $zS\sqrt{d}/m$. Below, that norm is set against the norm of a real averaged update: the
# clipped updates of the clients sampled in round 1, each trained once from the initial model (the
# same uploads section 2 codes and masks). A large federation divides the same $zS$ by its much
# larger $m$, and subsampling ($q \ll 1$) lowers $\varepsilon$ further.

# %%
num_params = sum(p.numel() for p in build_model(base.model, ds.num_classes, ds.in_channels, ds.image_size
                                                ).parameters())
m = base.clients_per_round
q = base.client_fraction  # Poisson: each client joins with probability q; fixed: exactly m of K
K = base.num_clients
fed = Federation(base.replace(seed=seed), data=ds)  # round 1 of the first seed: each sampled client trains once
sampled = fed.sample_clients(1)
uploads = []
for k in sampled:
    sent, _ = fed.local_update(k, 1)
    uploads.append({n: v.detach().cpu().float().clone() for n, v in sent.items() if v.is_floating_point()})
start = {n: v.detach().cpu().float() for n, v in fed.global_state.items() if v.is_floating_point()}
updates = [{n: u[n] - start[n] for n in start} for u in uploads]
update_norms = [dp.update_norm(u) for u in updates]
clipped_mean = {n: sum(dp.clip_update(u, dp_clip)[0][n] for u in updates) / m for n in start}
mean_norm = dp.update_norm(clipped_mean)  # the averaged clipped update the noise is added to (divided by m)


def eps(q_, z_, rounds):
    """Poisson epsilon from Opacus, as text; '<=' where the optimum sits at the edge of Opacus's orders (loose)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = dp.epsilon(q_, z_, rounds, dp_delta)
    loose = any("Optimal order" in str(c.message) for c in caught)
    return f"{'<= ' if loose else ''}{e:.3g}"


def eps_fixed(k_, m_, z_, rounds):
    """epsilon of exactly m_ of k_ clients per round (replace-one, sensitivity 2S), from dp-accounting."""
    return f"{dp.fixed_size_epsilon_per_round(k_, m_, z_, rounds, dp_delta)[-1]:.3g}"


budget = []
for z in z_list:
    if z == 0:
        continue
    budget.append({"z": z, "noise std per coordinate of the mean, zS/m": z * dp_clip / m,
                   "noise norm / S, z sqrt(d) / m": z * math.sqrt(num_params) / m,
                   "noise norm / round-1 update norm": z * dp_clip * math.sqrt(num_params) / m / mean_norm,
                   f"epsilon after {num_rounds} rounds, Poisson (q = {q:g})": eps(q, z, num_rounds),
                   f"epsilon, fixed m = {m} of {K} (replace-one)": eps_fixed(K, m, z, num_rounds),
                   # the same noise on the mean with 10x the clients per round, a tenth of them sampled per round
                   f"epsilon with m = {10 * m}, Poisson q = {q / 10:g}": eps(q / 10, 10 * z, num_rounds),
                   f"epsilon, fixed {10 * m} of {100 * K}": eps_fixed(100 * K, 10 * m, 10 * z, num_rounds)})
display(Markdown(f"{base.model}: d = {num_params:,} parameters, m = {m} clients per round, S = {dp_clip:g}, "
                 f"delta = {dp_delta:g}. The runs below sample with **dp_sampling = {dp_sampling}**, so the "
                 f"epsilon they report is the **{'Poisson (add/remove one client)' if dp_sampling == 'poisson' else 'fixed-size (replace one client)'}** "
                 f"bound. The last two columns keep the noise per coordinate of the mean the same (z grows with m) "
                 f"in a federation 100 times larger that samples 10 times more clients per round. '<=' marks a "
                 f"loose bound (Opacus's optimal order at the edge of its range)."))
noise_lines = [f"* z = {r['z']:g}: noise norm {r['z'] * dp_clip * math.sqrt(num_params) / m:.3g}, "
               f"{r['noise norm / round-1 update norm']:.3g} times the update's; noise longer than the update: "
               f"**{'holds' if r['noise norm / round-1 update norm'] > 1 else 'does not hold'}** in this run."
               for r in budget]
display(Markdown(
    f"Round 1 (seed {seed}): the {len(updates)} sampled clients' updates have median norm "
    f"{np.median(update_norms):.3g} (from {min(update_norms):.3g} to {max(update_norms):.3g}), so S = {dp_clip:g} is "
    f"{dp_clip / np.median(update_norms):.3g} times the median and clips {sum(n > dp_clip for n in update_norms)} of "
    f"{len(updates)}. Their clipped mean (sum / m, m = {m}) has norm {mean_norm:.3g}; the noise on it, "
    f"z S sqrt(d) / m with d = {num_params:,}:\n\n" + ("\n".join(noise_lines) or "* no z > 0 in `noise_levels`.")))
warnings.filterwarnings("ignore", message="Optimal order is the (smallest|largest) alpha")  # the engine's runs below
pd.DataFrame(budget).set_index("z") if budget else None

# %% slideshow={"slide_type": "subslide"}
# A client whose model the noise has blown up is left out of its round and counted in dropped_clients;
# if every client diverges for several rounds in a row the engine stops the run (DivergenceError).
warnings.filterwarnings("ignore", message=".*sent non-finite values")
dp_levels = {"no DP": {}} | {"clip only" if z == 0 else f"z = {z:g}": dict(
    dp_clip=dp_clip, dp_noise=z, dp_delta=dp_delta, dp_sampling=dp_sampling) for z in z_list}
secagg_levels = {"secure aggregation": dict(secure_aggregation=True)}  # for the last section, first seed only
z_secagg = min((z for z in z_list if z > 0), default=None)  # DP under secure aggregation: the smallest noise
if z_secagg is not None:
    try:  # a bit width at which the rounding would swamp the update is refused (see the last section)
        dp_quant.dp_grid(num_params, bits, dp_clip, "stochastic")
        secagg_levels[f"secure aggregation, z = {z_secagg:g}"] = dict(
            secure_aggregation=True, dp_clip=dp_clip, dp_noise=z_secagg, dp_delta=dp_delta, rounding="stochastic",
            dp_sampling=dp_sampling)
    except ConfigError as e:
        display(Markdown(f"No DP run under secure aggregation at {bits} bits: {e}"))
# in parallel, one process per core; a run that diverges gives one row holding its error
dp_all = sweep(base, [{"label": dp_levels, "seed": seed_list}, {"label": secagg_levels, "seed": seed}],
               root=results_dir, workers=workers, errors="keep")
dp_failed = dp_all[dp_all.error.notna() & dp_all.label.isin(dp_levels)]
for r in dp_failed.itertuples():
    if not isinstance(r.error, DivergenceError):
        raise r.error
diverged = [f"* {r.label}, seed {r.seed}: {r.error}" for r in dp_failed.itertuples()]
dp_metrics = dp_all[dp_all.error.isna() & dp_all.label.isin(dp_levels)].drop(columns="error")
if diverged:
    display(Markdown("**Runs the noise destroyed** (the noise per coordinate, zS/m, outgrew the weights; each "
                     "message says how many clients per round that epsilon would need):\n\n" + "\n".join(diverged)))
plots.accuracy_over_rounds(dp_metrics, title=f"DP-FedAvg, {width_label(bits)} uploads, S = {dp_clip:g}",
                           name="08_dp_accuracy", figures_dir=figures_dir).show()
with_eps = dp_metrics.dropna(subset=["epsilon"])
if len(with_eps):
    plots.lines(with_eps, "epsilon", "test_acc", "label", title="Test accuracy against the privacy spent so far",
                xlabel=f"epsilon at delta = {dp_delta:g}", ylabel="test accuracy", log_x=True,
                name="08_dp_accuracy_vs_epsilon", figures_dir=figures_dir).show()

# %% [markdown] slideshow={"slide_type": "subslide"}
# Paired by seed: each DP run shares its initialization, partition, sampled clients and batches with
# the run without DP of the same seed, so the difference below is the cost of the defence alone.

# %%
def dp_summary(runs, rounds):
    """Per label at round `rounds`: mean test accuracy, its std over seeds, the difference to no DP paired by seed,
    epsilon spent so far, and the client-rounds left out as non-finite."""
    last = runs[runs["round"] == rounds]
    free = last[last.label == "no DP"].set_index("seed").test_acc
    by = last.groupby("label", sort=False)
    return pd.DataFrame({
        "final_test_acc": by.test_acc.mean(), "std over seeds": by.test_acc.std(),
        "paired difference to no DP": last.assign(d=last.test_acc - last.seed.map(free)).groupby("label", sort=False).d.mean(),
        "epsilon": by.epsilon.first(),
        "clients left out (non-finite)": runs.groupby("label", sort=False).dropped_clients.sum()})


dp_table = dp_summary(dp_metrics, num_rounds)
dp_table.round(4)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### The same runs, longer: reference runs
#
# A few rounds say little about what the noise costs once the model has learned something, and epsilon keeps
# growing with every round. The project ships this grid carried further in `reference/privacy-defences/`
# (`reference/README.md` gives its data, rounds, machine and the command that extends it). A reference is drawn
# only where it is exactly one of the runs above continued: the same config key (`reference.find`; every field
# but `num_rounds`, with an .npz file matched by its content). The table is the one above, at the reference's
# last round.

# %%
ref_found = reference.longer({(lab, s): base.replace(seed=s, **changes) for lab, changes in dp_levels.items()
                              for s in seed_list})
ref_labels = [lab for lab in dp_levels if all((lab, s) in ref_found for s in seed_list)]  # every seed, to pair
ref_dp_table = None
if "no DP" in ref_labels and len(ref_labels) > 1:
    ref_dp = reference.stacked({(lab, s): ref_found[lab, s] for lab in ref_labels for s in seed_list},
                               ("label", "seed"))
    ref_rounds = int(ref_dp["round"].max())
    plots.accuracy_over_rounds(ref_dp, title=f"Reference runs: DP-FedAvg over {ref_rounds} rounds, "
                               f"{len(seed_list)} seed(s)", name="08_dp_reference", figures_dir=figures_dir).show()
    ref_dp_table = dp_summary(ref_dp, ref_rounds)
    display(ref_dp_table.round(4))
else:
    print(f"No longer reference runs of 'no DP' and a noise level of this grid, on every seed, are published in "
          f"reference/ ({len(ref_found)} of the {len(dp_levels) * len(seed_list)} runs have one).")

# %% [markdown] slideshow={"slide_type": "subslide"}
# What DP-FedAvg does **not** protect: the guarantee is about the released model (and everyone who
# sees it). The server still receives each client's update *before* the noise is added, so the
# attacks of lesson 07 work on it exactly as before. Hiding the individual upload from the server
# is the job of secure aggregation (or of noise added on the client, local DP, which needs far more
# noise for the same $\varepsilon$).

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2 · Secure aggregation: the server learns only the sum
#
# Client $u$ holds integer codes $x_u$ and sends, modulo $2^k$,
#
# $$y_u = x_u + \mathrm{PRG}(b_u) + \sum_{v > u} \mathrm{PRG}(s_{uv}) - \sum_{v < u} \mathrm{PRG}(s_{uv}) \pmod{2^k},$$
#
# where $s_{uv} = s_{vu}$ is agreed by X25519 key exchange and $b_u$ is a self-mask seed. The
# pairwise masks cancel in $\sum_u y_u$; the server removes the self-masks with Shamir shares of
# $b_u$ held by the other clients. Summing codes only means something if every client's codes sit on
# one grid: a shared scale per channel $s_c = B_c / q_{\max}$ from a public bound $B_c$, here
# `SECAGG_MARGIN` $\times \max_i |w_{t,ci}|$ of the global model every client holds.
#
# Below: the real uploads of round 1 from section 1 (every client sampled in round 1 trains once from
# the initial model), coded on the shared grid at `bits`, then masked with `secagg.masked_sum`.

# %% slideshow={"slide_type": "subslide"}
bound = secagg.channel_bound({n: v.cpu() for n, v in fed.global_state.items()}, margin=SECAGG_MARGIN)
flats = []
for u in uploads:
    codes, scales = secagg.shared_scale_codes(u, bound, bits)
    flats.append(np.concatenate([c.reshape(-1).to(torch.int64).numpy() for c in codes.values()]))
k_bits = secagg.modulus_bits(bits, len(flats))  # uniform weights here: |sum| <= K q_max
modulus = 2 ** k_bits
masked, total = secagg.masked_sum(flats, modulus, seed)
exact = np.sum(flats, axis=0)
plain0 = flats[0].astype(np.uint64) & np.uint64(modulus - 1)  # client 0's codes as residues mod 2^k
corr = np.corrcoef(plain0.astype(float), masked[0].astype(float))[0, 1]
residues = pd.DataFrame({"residue mod 2^k": np.r_[plain0, masked[0]].astype(float),
                         "what": ["client 0's codes (unmasked)"] * len(plain0) + ["client 0's masked upload"]
                         * len(plain0)})
plots.histogram(residues, "residue mod 2^k", "what", title=f"What the server receives from client 0 "
                f"(k = {k_bits} bits)", bins=64, name="08_masked_upload", figures_dir=figures_dir).show()
display(Markdown(
    f"{len(flats)} clients, {len(flats[0]):,} codes each at {bits} bits, summed modulo $2^{{{k_bits}}}$. "
    f"The masked upload's mean is {masked[0].mean() / modulus:.4f} $m$ and its std {masked[0].std() / modulus:.4f} "
    f"$m$ (uniform: 0.5000 and {1 / math.sqrt(12):.4f}); its correlation with the plain codes is {corr:+.4f}. "
    f"The unmasked sum equals the sum of the plain codes in "
    f"**{int((secagg.to_signed(total, modulus) == exact).sum()):,} of {len(exact):,}** coordinates."))

# %% [markdown] slideshow={"slide_type": "subslide"}
# **A client drops out** after the keys were shared but before it uploads. Its pairwise masks are
# still inside the others' uploads; the survivors hand the server their Shamir shares of the dropped
# client's key, and the server removes those masks. With fewer survivors than the threshold
# $t = \lfloor n/2 \rfloor + 1$ nothing can be unmasked.

# %%
gone = len(flats) - 1
masked_d, total_d = secagg.masked_sum(flats, modulus, seed, dropped=[gone])
survivors_sum = np.sum([f for i, f in enumerate(flats) if i != gone], axis=0)
too_many = list(range(len(flats) - secagg.threshold_for(len(flats)) + 1))
try:
    secagg.masked_sum(flats, modulus, seed, dropped=too_many)
    refused = "unmasked (unexpected)"
except secagg.SecAggError as e:
    refused = f"refused: {e}"
display(Markdown(
    f"Client {gone} drops: the server receives {len(masked_d)} uploads, and their sum equals the survivors' "
    f"plain sum in **{int((secagg.to_signed(total_d, modulus) == survivors_sum).sum()):,} of "
    f"{len(survivors_sum):,}** coordinates. With {len(too_many)} clients gone: {refused}"))

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### The cost of the shared scale
#
# Per-client scales $s_c = \max_i |w^k_{ci}| / q_{\max}$ (equation (1)) fit each client's own
# channel; the shared one is fixed by the public bound, `SECAGG_MARGIN` times the global model's
# largest weight, so its steps are coarser and the error larger. And the masked values are uniform
# modulo $2^k$, so each costs $k = $ `modulus_bits(bits, W)` bits on the wire, where $W$ is the
# round's total weight: $W = K$ with uniform weights, $W = \sum_k n_k$ (divided by their gcd) with
# FedAvg's sample counts, which the engine uses. Per-client scales cost `bits` plus one float32
# scale per channel.

# %%
n_k = [fed.sizes[k] for k in sampled]
w_total = sum(n_k) // math.gcd(*n_k)
cost = []
for b in secagg_bits:
    per_client = np.mean([relative_error(u, {n: fake_quantize(v, b) for n, v in u.items()}) for u in uploads])
    shared = np.mean([relative_error(u, secagg.shared_scale_mean([u], None, b, bound)) for u in uploads])
    own_bytes = len(encode(uploads[0], bits=b))
    cost.append({"bits": b, "error, per-client scales": per_client, "error, shared scale": shared,
                 "bits/param, per-client": 8 * own_bytes / num_params,
                 "bits/param, masked (uniform W = K)": secagg.modulus_bits(b, len(uploads)),
                 f"bits/param, masked (W = sum n_k = {w_total:,})": secagg.modulus_bits(b, w_total),
                 "upload x, masked with n_k": secagg.masked_upload_bytes(num_params, b, len(uploads), w_total)
                 / own_bytes})
cost = pd.DataFrame(cost).set_index("bits")
cost.round(4)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### DP under secure aggregation: keeping the update, and its sensitivity
#
# With DP the clients sum their *clipped updates* $\Delta_k$ ($\|\Delta_k\| \le S$), and the
# obvious shared grid has step $S / q_{\max}$. Two things then go wrong. A coordinate of a clipped
# update is about $S/\sqrt d$, a fraction $q_{\max}/\sqrt d$ of a step, so where $\sqrt d \gg q_{\max}$
# most of them round to 0 and the update vanishes (printed below with the share of codes 0). And
# rounding moves each coordinate by up to half a step, so a rounded update can be longer than $S$,
# while the noise was sized for $S$.
#
# The engine follows Kairouz, Liu and Steinke (2021): each client pads $\Delta_k$ to $n = 2^{\lceil
# \log_2 d\rceil}$ values and rotates it, $y = H D \Delta_k / \gamma$, with $H$ the Walsh-Hadamard
# matrix and $D$ public random signs drawn fresh each round. The rotation spreads the norm evenly, so
# every coordinate is about $C/\sqrt n$ for $C = S/\gamma$, and $\gamma$ is chosen so those coordinates
# span many grid steps but (with probability $1 - 10^{-6}$) stay within $\pm q_{\max}$. The client then
# rounds stochastically, redrawing until $\|z\| \le B$ (conditional rounding), or to the nearest
# integer, $\|z\| \le C + \sqrt n / 2$. Every decoded upload then has norm at most
# $\Delta = \gamma B$, more than $S$ by the factor $\Delta / S$ in the table below, and the server's
# noise has std $z\Delta$ (`fl_lib/privacy/dp_quant.py`).
#
# Below, the round-1 updates of the clients above, clipped to $S$ = `dp_clip`, go through the whole
# path (codes, masks, sum, unmasking) without noise. "old grid" is the plain shared grid (step
# $S/q_{\max}$, nearest rounding) that the engine used before.

# %%
clipped_old = [dp.clip_update(u, dp_clip)[0] for u in updates]
dpsa = []
for b in sorted(set(secagg_bits) | {bits}, reverse=True):
    codes_old = [secagg.shared_scale_codes(c, dp_clip, b)[0] for c in clipped_old]
    zero = float(np.mean([np.mean([(q == 0).float().mean().item() for q in c.values()]) for c in codes_old]))
    row = {"bits": b, "old grid: share of codes 0": zero,
           "old grid: error of the mean": dp_quant.dp_secagg_error(updates, b, dp_clip, rotate=False, seed=seed)}
    for rounding_ in ("stochastic", "nearest"):
        try:
            g = dp_quant.dp_grid(num_params, b, dp_clip, rounding_)
            row[f"rotated, {rounding_}: error of the mean"] = dp_quant.dp_secagg_error(
                updates, b, dp_clip, rounding=rounding_, seed=seed)
            row[f"rotated, {rounding_}: Delta / S"] = g.sensitivity / dp_clip
        except ConfigError as e:
            row[f"rotated, {rounding_}: error of the mean"] = float("nan")
            row[f"rotated, {rounding_}: Delta / S"] = float("nan")
            row["refused"] = str(e)
    dpsa.append(row)
dpsa = pd.DataFrame(dpsa).set_index("bits")
display(Markdown(f"{len(updates)} clients, d = {num_params:,} parameters (n = {dp_quant.padded_size(num_params):,} "
                 f"after padding), S = {dp_clip:g}. A coordinate of size S / sqrt(d) is q_max / sqrt(d) of the old "
                 f"grid's step: " + ", ".join(f"{q_max(b) / math.sqrt(num_params):.3g} at {b} bits (share of codes "
                                             f"0: {dpsa.loc[b, 'old grid: share of codes 0']:.0%})" for b in dpsa.index)
                 + f". An empty error cell is a width the engine refuses: the "
                 f"rounding noise would be larger than the update. Delta / S is how much more noise the "
                 f"rounding costs."))
dpsa.round(4)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### A run with secure aggregation
#
# The same federated run (first seed, `bits`) with `secure_aggregation=True` against the plain run
# of the no-DP baseline above: uploads masked on the shared grid, weighted by $n_k$, with the masking
# overhead and the key and share traffic counted in the upload.

# %% slideshow={"slide_type": "subslide"}
plain = run(base.replace(seed=seed), root=results_dir)
masked_run = run(base.replace(seed=seed, secure_aggregation=True), root=results_dir)
pair = pd.concat([plain.metrics.assign(label=f"{width_label(bits)}, per-client scales"),
                  masked_run.metrics.assign(label=f"{width_label(bits)}, secure aggregation")], ignore_index=True)
plots.accuracy_over_rounds(pair, title="Secure aggregation against the same bits without it",
                           name="08_secagg_accuracy", figures_dir=figures_dir).show()
secagg_table = pd.DataFrame({
    "final_test_acc": [plain.summary["final_test_acc"], masked_run.summary["final_test_acc"]],
    "upload_mb_per_round": [plain.summary["upload_mb_per_round"], masked_run.summary["upload_mb_per_round"]],
    "total_upload_mb": [plain.summary["total_upload_mb"], masked_run.summary["total_upload_mb"]],
    "mean quant_error": [plain.metrics.quant_error.mean(), masked_run.metrics.quant_error.mean()]},
    index=["per-client scales", "secure aggregation"])
secagg_table.round(4)

# %% [markdown] slideshow={"slide_type": "subslide"}
# What secure aggregation does **not** protect: the sum itself, and the model built from it. With
# few clients the sum says a lot about each of them (with two clients, either can subtract its own
# update from the sum and read the other's), and a server that sends different clients different models, or simulates
# clients of its own, can isolate one client's contribution; the protocol here also assumes an
# honest-but-curious server (no signatures against an active one). It is the natural partner of
# DP-FedAvg: secure aggregation hides each upload from the server, DP bounds what the sum reveals.
# The noise must then be added where the server cannot remove it; here (`dp_clip` with
# `secure_aggregation=True`) the server adds it after unmasking, which protects the released model
# but trusts the server to add it.

# %%
def final_or_error(label_, s=seed):
    """A run of the DP sweep above: its final test accuracy, its error if it failed, None if it was not run."""
    rows = dp_all[(dp_all.label == label_) & (dp_all.seed == s)]
    if rows.empty:
        return None
    if rows.error.notna().any():
        return rows.error.iloc[0]
    return rows.test_acc.dropna().iloc[-1]


answers = []
for label_, r in dp_table.iterrows():
    if label_ == "no DP":
        continue
    eps = f"epsilon {r.epsilon:.3g}" if pd.notna(r.epsilon) else "no epsilon (no noise)"
    bound = "Poisson sampling, add/remove one client" if dp_sampling == "poisson" else "exactly m sampled, replace one client"
    answers.append(f"* **DP-FedAvg, {label_}** ({eps} after {num_rounds} rounds, {bound}, m = {m}): final accuracy "
                   f"{r.final_test_acc:.4f} against {dp_table.loc['no DP', 'final_test_acc']:.4f} without DP "
                   f"(paired difference {r['paired difference to no DP']:+.4f}).")
c = cost.loc[bits] if bits in cost.index else cost.iloc[0]
answers.append(
    f"* **Secure aggregation at {width_label(bits)}:** final accuracy {masked_run.summary['final_test_acc']:.4f} "
    f"against {plain.summary['final_test_acc']:.4f} with per-client scales; upload "
    f"{masked_run.summary['upload_mb_per_round']:.2f} MB per round against {plain.summary['upload_mb_per_round']:.2f} "
    f"({masked_run.summary['upload_mb_per_round'] / plain.summary['upload_mb_per_round']:.2f}x). The shared scale's "
    f"error at {width_label(int(c.name))} is {c['error, shared scale']:.4f} against {c['error, per-client scales']:.4f}.")
if bits in dpsa.index:
    r = dpsa.loc[bits]
    new = r["rotated, stochastic: error of the mean"]
    text = (f"* **DP under secure aggregation at {width_label(bits)}:** the plain shared grid rounds "
            f"{r['old grid: share of codes 0']:.0%} of the clipped updates' codes to 0 and the mean's relative error "
            f"is {r['old grid: error of the mean']:.3f}; rotated and conditionally rounded it is ")
    if pd.notna(new):
        text += f"{new:.4f}, with {r['rotated, stochastic: Delta / S'] - 1:.2%} more noise for the rounded sensitivity."
        dpsa_run = final_or_error(f"secure aggregation, z = {z_secagg:g}")
        dp_alone = final_or_error(f"z = {z_secagg:g}")
        if dpsa_run is not None and not isinstance(dpsa_run, Exception) and not isinstance(dp_alone, Exception):
            text += (f" The federated run with z = {z_secagg:g} ended at {dpsa_run:.4f} "
                     f"against {dp_alone:.4f} for DP without secure aggregation (seed {seed}).")
        elif isinstance(dpsa_run, Exception):
            text += f" The federated run with z = {z_secagg:g} failed: {dpsa_run}"
    else:
        text += f"refused: {r['refused']}"
    answers.append(text)
if ref_dp_table is not None:
    answers.insert(len(dp_table) - 1, f"* **The same DP runs over {ref_rounds} rounds** (reference runs): " + "; ".join(
        f"{lab_}: final accuracy {r.final_test_acc:.4f}" + ("" if lab_ == "no DP" else
        f" (paired difference {r['paired difference to no DP']:+.4f}"
        + (f", epsilon {r.epsilon:.3g})" if pd.notna(r.epsilon) else ")")) for lab_, r in ref_dp_table.iterrows()) + ".")
display(Markdown(f"### In short ({Path(dataset).stem}, {base.model}, {num_rounds} rounds, {len(seed_list)} seed(s))"
                 "\n\n" + "\n".join(answers)))


# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# Each exercise asks for a prediction first. Write it down, change the variable at the top of the code cell,
# run the cell, and only then open the answer: the cell computes it, nothing in it is written in advance. Both
# only count (the accountant, the masking modulus): nothing is trained.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 1: epsilon against clients per round
#
# Section 1 says small federations pay a lot. Keep the noise on the averaged update fixed (the std $zS/m$ of
# this lesson's runs at noise multiplier `z_try`, so $z$ grows with $m$) and sample more clients per round from a
# federation of `federation_try` clients (Poisson, $q = m / K$), for `num_rounds` rounds. **Predict:** does
# $\varepsilon$ fall steadily as $m$ grows, and by how much between the smallest and the largest $m$? Change
# `federation_try` or `z_try` and run.

# %%
from fl_lib.study.exercises import answer, holds

federation_try = 1000  # change me: K, clients in the federation
z_try = 1.0  # change me: noise multiplier z at this lesson's m clients per round
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Opacus's note on the edge of its orders: a looser bound, still a bound
    sweep_m = pd.DataFrame({"clients per round m": sorted({max(1, round(v)) for v in
                                                          np.geomspace(1, federation_try, 12)})})
    sweep_m["epsilon"] = [dp.epsilon(mm / federation_try, z_try * mm / m, num_rounds, dp_delta)
                          for mm in sweep_m["clients per round m"]]
sweep_m["label"] = f"noise std on the mean {z_try * dp_clip / m:.3g}, K = {federation_try}"
plots.lines(sweep_m, "clients per round m", "epsilon", "label", title="epsilon against clients per round",
            xlabel="clients per round m", ylabel=f"epsilon at delta = {dp_delta:g}", log_x=True, log_y=True).show()
eps_m = sweep_m.set_index("clients per round m").epsilon
display(answer(
    f"Noise std on each coordinate of the mean held at zS/m = {z_try * dp_clip / m:.3g} (z = {z_try:g} at m = {m}), "
    f"K = {federation_try}, {num_rounds} rounds, delta = {dp_delta:g}: epsilon is {eps_m.iloc[0]:.3g} at m = "
    f"{eps_m.index[0]} and {eps_m.iloc[-1]:.3g} at m = {eps_m.index[-1]}, {eps_m.iloc[0] / eps_m.iloc[-1]:.3g} times "
    f"less.\n\nepsilon falls at every step as m grows: {holds((eps_m.diff().dropna() < 0).all())} in this run."))

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 2: what masking costs in a larger federation
#
# Under secure aggregation every masked value is a residue modulo a power of two wide enough that the sum of all
# clients' codes cannot wrap. **Predict:** with `clients_try` clients instead of `num_clients`, how many extra bits
# per parameter does masking cost at `bits` bits? Does the overhead grow in proportion to the number of clients?
# Change `clients_try` and run.

# %%
clients_try = 1000  # change me: clients whose masked uploads are summed
extra = {k: secagg.masking_overhead_bits(bits, k) for k in (num_clients, clients_try)}
log_ratio = math.log2(clients_try / num_clients)
display(answer(
    f"At {bits} bits, masking costs {extra[num_clients]} extra bit(s) per parameter with {num_clients} clients and "
    f"{extra[clients_try]} with {clients_try}: {extra[clients_try] - extra[num_clients]:+d} bit(s) for "
    f"{clients_try / num_clients:.3g} times the clients.\n\n"
    f"* The overhead grows in proportion to the clients: "
    f"{holds(extra[num_clients] > 0 and extra[clients_try] / extra[num_clients] >= clients_try / num_clients)} in this run.\n"
    f"* It grows by about log2 of the ratio of clients ({log_ratio:.2f} bits), to within one bit: "
    f"{holds(abs(extra[clients_try] - extra[num_clients] - log_ratio) <= 1)} in this run."))
