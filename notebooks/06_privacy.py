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
# # 06 · What an upload reveals: gradient leakage, DP-FedAvg and secure aggregation
#
# Federated learning keeps the training data on the clients, and it is tempting to call that
# private. It is not, by itself: what a client uploads (a gradient, or a model after a few local
# steps) is a function of its data, and a server can often invert it. This lesson measures three
# things on the same data as the other lessons:
#
# 1. **Gradient leakage.** The server rebuilds a client's training image from its upload, and we
#    ask whether a quantized upload (INT16, INT8, INT4) leaks less than FP32, and how the batch size
#    matters.
# 2. **DP-FedAvg** (McMahan et al. 2018). Clipping plus Gaussian noise bounds what the *released
#    model* says about any one client; what that costs in accuracy at a given $\varepsilon$.
# 3. **Secure aggregation** (Bonawitz et al. 2017). The server sees only masked uploads and their
#    exact sum; what the shared quantization grid it needs costs in error and in bits.
#
# **References.** Zhu, Liu and Han (2019), *Deep Leakage from Gradients*, NeurIPS. Zhao, Mopuri and
# Bilen (2020), *iDLG: Improved Deep Leakage from Gradients*, arXiv:2001.02610. Geiping, Bauermeister,
# Dröge and Moeller (2020), *Inverting Gradients: How easy is it to break privacy in federated
# learning?*, NeurIPS. McMahan, Ramage, Talwar and Zhang (2018), *Learning Differentially Private
# Recurrent Language Models*, ICLR. Bonawitz et al. (2017), *Practical Secure Aggregation for
# Privacy-Preserving Machine Learning*, CCS.

# %% tags=["parameters"]
preset: str = "quick"  # config of the federated runs: quick (small CNN, 1 local epoch) or smoke
dataset: str = "cifar10"  # cifar10 (torchvision downloads it into data_root), synthetic, or an .npz file
data_root: str = ""  # folder torchvision downloads into; empty: the project's data/
attack_model: str = "lenet"  # attacked network: lenet (DLG's sigmoid LeNet, DLG attack) or cifar_cnn (cosine attack)
attack_steps: int = 100  # attack steps: L-BFGS steps for lenet (DLG uses 100), Adam steps for cifar_cnn (2000)
progress_steps: str = "25,50"  # comma-separated step counts shown on the way to attack_steps (FP32, batch size 1)
attack_bit_widths: str = "32,16,8,4"  # upload bit widths attacked at batch size 1; 32 means float32
batch_sizes: str = "1,4,8"  # victim batch sizes attacked at FP32
attack_noises: str = "0.01"  # std of Gaussian noise a client adds to its upload, attacked at FP32 (comma-separated)
num_rounds: int = 8  # communication rounds of every federated run
num_clients: int = 10  # K, clients, all sampled every round
alpha: float = 0.5  # Dirichlet concentration of the label split
bits: int = 8  # upload bit width of the federated runs (2..16; secure aggregation needs integer codes)
dp_clip: float = 1.0  # S, L2 norm every client update is clipped to (about the median update norm of round 1)
noise_levels: str = "0.1,1.0"  # comma-separated noise multipliers z (noise std on the sum is z S); 0 clips only
dp_delta: float = 1e-5  # delta of the (epsilon, delta) guarantee
secagg_bit_widths: str = "16,8,4"  # comma-separated bit widths at which the shared scale's cost is measured
seeds: str = "0,1"  # comma-separated seeds; each DP setting runs once per seed, secure aggregation on the first
results_dir: str = ""  # cached runs and attacks, shared by all lessons; empty: the project's data/runs/
figures_dir: str = ""  # where static PNGs are written; empty: the project's figures/
device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda or mps
workers: int = 0  # processes that compute this lesson's runs side by side; 0: one per core

# %%
import hashlib
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from IPython.display import Image, Markdown, display

from fl_lib import config, dp, leakage, lesson, plots, secagg
from fl_lib.codec import encode
from fl_lib.config import parse_list, parse_seeds
from fl_lib.data import load_dataset
from fl_lib.errors import DivergenceError
from fl_lib.fedavg import SECAGG_MARGIN, Federation
from fl_lib.models import build_model
from fl_lib.quant import fake_quantize, relative_error
from fl_lib.results import run, run_many
from fl_lib.widgets import LeakageExplorer, load_attacks, width_label

lesson.setup("mcmahan")
data_root = lesson.folder("data_root", data_root)
results_dir = lesson.folder("results_dir", results_dir)
figures_dir = lesson.folder("figures_dir", figures_dir)

attack_bits = parse_list(attack_bit_widths, int)
batch_list = parse_list(batch_sizes, int)
noise_list = [s for s in parse_list(attack_noises, float) if s > 0]
shown_steps = [s for s in parse_list(progress_steps, int) if 0 < s < attack_steps]
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

# %% [markdown]
# ## 1 · Gradient leakage
#
# The attacker is the server. It knows the model $w$ it broadcast and receives one client's upload.
# For DLG's network (`lenet`, sigmoid activations) the client uploads the gradient of its batch loss,
# as in FedSGD, $g = \nabla_w L(f_w(x), y)$; the server decodes it at the run's bit width, so it
# sees $\hat g$, exactly what `fl_lib.codec` delivers.
#
# **Step 1: the label.** With non-negative features $h$ (sigmoid outputs), the last layer's gradient
# is $\partial L / \partial W_c = (p_c - y_c)\, h$: only the true class's row has a negative sum
# (iDLG). For a batch of $B$ the label counts come from the bias gradient,
# $\partial L / \partial b_c = \bar p_c - n_c / B$.

# %%
x, y = leakage.pick_batch(ds, 1, seed)
victim = leakage.build_victim(attack_model, ds.num_classes, ds.in_channels, ds.image_size, seed)
method = leakage.DEFAULT_METHOD[attack_model]
local_steps = leakage.LOCAL_STEPS[method]
mean, std = ds.mean.reshape(1, -1, 1, 1), ds.std.reshape(1, -1, 1, 1)
upload = leakage.client_upload(victim, (x - mean) / std, y, local_steps)
sign = 1.0 if local_steps == 1 else -1.0 / (leakage.CLIENT_LR * local_steps)  # a FedAvg delta points down the gradient
w_name = [n for n, v in upload.items() if v.dim() == 2][-1]  # the last linear layer's weight
row_sums = (sign * upload[w_name]).sum(1)
label = int(leakage.recover_labels(victim, {n: sign * v for n, v in upload.items()}, 1, x)[0])
display(Markdown(f"The client holds one image of class **{int(y[0])}**; its upload has "
                 f"{sum(v.numel() for v in upload.values()):,} numbers ({method}: "
                 f"{'one gradient' if local_steps == 1 else f'{local_steps} local SGD steps'}). The row sums of the "
                 f"last layer's gradient are negative only for class(es) "
                 f"{[int(c) for c in torch.nonzero(row_sums < 0).flatten()]}: the server reads the label "
                 f"**{label}** before any optimization."))
pd.DataFrame({"row sum of dL/dW_c": row_sums.numpy()}).T.round(4)

# %% [markdown]
# **Step 2: what the server decodes.** At $b$ bits each channel $c$ of the upload is sent as codes
# $q_{ci} = \mathrm{round}(g_{ci} / s_c)$ with $s_c = \max_i |g_{ci}| / q_{\max}$ (equations (1)-(3) of
# lesson 03). The server inverts $\hat g = s_c q_c$, not $g$: the relative error
# $\|\hat g - g\| / \|g\|$ is the only thing quantization changes for the attacker.

# %%
view = []
for b in attack_bits:
    decoded, blob = leakage.server_view(upload, b)
    view.append({"bits": b, "upload bytes": len(blob),
                 "relative error of what the server sees": relative_error(upload, decoded)})
pd.DataFrame(view).set_index("bits")

# %% [markdown]
# **Step 3: the attack.** Starting from a random image $x'$ (and the label $y'$ read above), DLG
# minimizes the distance between the gradient $x'$ would produce and the one received,
#
# $$D(x') = \sum_{\text{layers}} \big\| \nabla_w L(f_w(x'), y') - \hat g \big\|^2 ,$$
#
# with L-BFGS (`leakage.attack`). For `cifar_cnn` (ReLU) the upload is a FedAvg delta of
# several local steps, and the cosine attack of Geiping et al. minimizes
# $1 - \langle \nabla_w L, \hat g \rangle / (\|\nabla_w L\| \|\hat g\|) + \lambda\, \mathrm{TV}(x')$
# instead. Quality is the PSNR against the original, $10 \log_{10}(1 / \mathrm{MSE})$ for pixels
# in $[0, 1]$. For scale: a flat gray guess scores the value printed below.
#
# Every attack of this lesson runs once through `leakage.run_grid` and is stored under
# `results_dir/leakage/`, keyed by its settings: a rerun reads it back.

# %%
if Path(dataset).is_file():
    data_id = hashlib.sha256(Path(dataset).read_bytes()).hexdigest()[:16]  # the file's content, not its path
else:
    data_id = dataset


def attack_grid(batches, bit_widths, noises):
    """run_grid's outputs for these settings: computed once, then read back from results_dir/leakage/<hash>."""
    settings = dict(data=data_id, batch_sizes=list(batches), bits=list(bit_widths), noises=list(noises),
                    model=attack_model, steps=attack_steps, seed=seed)
    folder = Path(results_dir) / "leakage" / hashlib.sha256(json.dumps(settings, sort_keys=True).encode()
                                                            ).hexdigest()[:16]
    if not (folder / "reconstructions.npz").exists():  # written last by run_grid
        leakage.run_grid(ds, tuple(batches), tuple(bit_widths), tuple(noises), attack_model, attack_steps, seed,
                         out=folder)
    return folder


folders = [attack_grid([1], attack_bits, [0.0])]
larger = [b for b in batch_list if b != 1 or 32 not in attack_bits]
if larger:
    folders.append(attack_grid(larger, [32], [0.0]))
if noise_list:
    folders.append(attack_grid([1], [32], noise_list))
attack_rows, attack_images = load_attacks(*folders)
gray = leakage.psnr(torch.full_like(x, 0.5), x)
attack_rows[["model", "method", "batch_size", "bits", "noise", "steps", "psnr", "psnr_min", "label_correct",
             "upload_bytes", "upload_rms", "seconds"]]


# %%
def stored(b=1, nbits=32, noise=0.0):
    """The stored reconstruction (B, C, H, W) uint8 and its row, or (None, None) if not attacked."""
    key = f"{attack_model}_B{b}_bits{nbits}_noise{noise:g}"
    hit = attack_rows[(attack_rows.batch_size == b) & (attack_rows.bits == nbits) & (attack_rows.noise == noise)]
    return (attack_images[key], hit.iloc[0]) if key in attack_images and len(hit) else (None, None)


progress = [leakage.attack(x, y, attack_model, 32, 0.0, s, seed, num_classes=ds.num_classes, mean=ds.mean,
                           std=ds.std) for s in shown_steps]  # each a prefix of the stored attack (same seed)
final, final_row = stored()
cells = [("original", x[0])] + [(f"{s} steps\n{r.psnr:.1f} dB", r.reconstruction[0])
                                for s, r in zip(shown_steps, progress)]
if final is not None:
    cells.append((f"{attack_steps} steps\n{final_row.psnr:.1f} dB", final[0]))
display(Image(filename=str(plots.image_table([cells], "06_attack_steps", figures_dir, size=1.6))))
if progress:
    history = pd.DataFrame({"step": np.arange(1, len(progress[-1].history) + 1),
                            "attack loss": progress[-1].history, "label": "FP32, B = 1"})
    plots.lines(history, "step", "attack loss", "label", title=f"Attack loss over the first {shown_steps[-1]} steps",
                log_y=True, name="06_attack_loss", figures_dir=figures_dir).show()
display(Markdown(f"A flat gray image scores **{gray:.1f} dB** against this original."))

# %% [markdown]
# ### Does a quantized upload leak less?
#
# The same image and the same attack, on the upload decoded at each bit width. With the CLI,
# `python -m fl_lib leakage --dataset ../shared/data/cifar10_subset.npz` (100 steps, seed 0) measured
# on the real CIFAR-10 subset: LeNet with DLG 31.0 / 31.1 / 29.1 / 13.2 dB at FP32 / INT16 / INT8 /
# INT4; the cosine attack on `cifar_cnn` (2,000 steps) about 20 dB at every width (19.9 / 19.8 /
# 20.1 / 18.5). The numbers below are this run's.

# %%
cells = [("original", x[0])]
for b in attack_bits:
    img, r = stored(1, b)
    if img is not None:
        cells.append((f"{width_label(b)}\n{r.psnr:.1f} dB", img[0]))
display(Image(filename=str(plots.image_table([cells], "06_leakage_bits", figures_dir, size=1.6))))

# %% [markdown]
# ### Larger batches
#
# One upload of a batch of $B$ images is the mean of $B$ gradients; the attack must rebuild all $B$
# at once (each reconstruction is matched to its closest original before scoring).

# %%
table = []
for b in batch_list:
    img, r = stored(b, 32)
    if img is None:
        continue
    original = attack_images[f"{attack_model}_B{b}_original"]
    table.append([(f"B = {b}\noriginal" if i == 0 else "", original[i]) for i in range(b)])
    table.append([(f"FP32, {r.psnr:.1f} dB" if i == 0 else "", img[i]) for i in range(b)])
display(Image(filename=str(plots.image_table(table, "06_leakage_batches", figures_dir))))
plots.psnr_panels(attack_rows, reference=gray, name="06_psnr", figures_dir=figures_dir).show()

# %%
lines_out = []
clean = attack_rows[(attack_rows.noise == 0) & (attack_rows.batch_size == 1)].sort_values("bits", ascending=False)
if len(clean):
    lines_out.append("* **Bit width, B = 1:** " + ", ".join(f"{width_label(r.bits)} {r.psnr:.1f} dB"
                                                            for r in clean.itertuples())
                     + f" (flat gray guess: {gray:.1f} dB).")
batches = attack_rows[(attack_rows.noise == 0) & (attack_rows.bits == 32)].sort_values("batch_size")
if len(batches):
    lines_out.append("* **Batch size, FP32:** " + ", ".join(
        f"B = {r.batch_size}: {r.psnr:.1f} dB (worst image {r.psnr_min:.1f}, labels "
        f"{'right' if r.label_correct else 'wrong'})" for r in batches.itertuples()) + ".")
noisy = attack_rows[attack_rows.noise > 0].sort_values("noise")
if len(noisy):
    lines_out.append("* **Client noise, FP32, B = 1:** " + ", ".join(
        f"std {r.noise:g} ({r.noise / r.upload_rms:.2g} x the upload's rms): {r.psnr:.1f} dB"
        for r in noisy.itertuples()) + ".")
display(Markdown(f"### What this run measured ({attack_model}, {method}, {attack_steps} steps, "
                 f"{Path(dataset).stem})\n\n" + "\n".join(lines_out)))

# %% [markdown]
# Read the numbers against the gray guess: a reconstruction far above it shows the picture, one near
# it shows nothing. Quantization is not a defence: INT16 and INT8 move the upload too little for the
# attack to notice (the relative errors of step 2), and on the real CIFAR-10 subset only the coarse
# INT4 grid stopped DLG within its 100 steps, while the cosine attack on `cifar_cnn` still got about
# 20 dB at INT4: a coarser grid slows one optimizer down, it does not remove the information. Larger batches are harder for this attack at this budget, but
# that is a property of the attack, not a guarantee: stronger attacks with image priors rebuild
# batches too (Geiping et al.). Noise the *client* adds before uploading does help, at a cost in
# accuracy that is the subject of the next section, where the noise is added by the server instead.
#
# ## A widget: move the bit width or the noise
#
# It redraws one stored reconstruction beside its original (from the attacks above, no new attack
# and no training). A combination this lesson did not attack shows a gray panel and says so.

# %% tags=["widget"]
explorer = LeakageExplorer(attack_rows, attack_images, model=attack_model, batch_size=1)
explorer

# %%
print(f"{explorer.key()}: {explorer.text.value}")

# %% [markdown]
# ## 2 · DP-FedAvg: clipping, noise, a fixed denominator
#
# With $S$ = `dp_clip` and $z$ = the noise multiplier, each sampled client $k$ clips its update
# $\Delta_k = w_k - w_t$ before quantizing it, and the server (after decoding, clipping again, since
# quantization can move an update past $S$) adds Gaussian noise to the sum and divides by a *fixed*
# number, the expected number of clients per round $m = qK$:
#
# $$\tilde\Delta_k = \Delta_k \min\!\Big(1, \frac{S}{\|\Delta_k\|_2}\Big), \qquad
#   w_{t+1} = w_t + \frac{1}{m}\Big(\sum_{k} \tilde\Delta_k + \mathcal{N}(0, z^2 S^2 I)\Big).$$
#
# The denominator does not depend on who was sampled, so adding or removing one client changes the
# noised sum by at most $S$: that is the sensitivity the noise $zS$ is scaled to. Weights are
# uniform; FedAvg's $n_k / n$ would let a large client move the model by more than $S$.
# $\varepsilon$ at $\delta$ = `dp_delta` comes from Opacus's RDP accountant with sampling rate
# $q = m / K$, one step per round.
#
# **Why small federations pay a lot.** The noise on each coordinate of the averaged update has std
# $zS/m$, while the whole clipped mean has norm at most $S$. Over $d$ parameters the noise's norm is
# about $zS\sqrt{d}/m$: with $d$ in the hundreds of thousands and $m = 10$, even $z = 0.1$ gives a
# noise vector several times longer than the update. A large federation divides the same $zS$ by a
# thousand clients, and subsampling ($q \ll 1$) lowers $\varepsilon$ further.

# %%
num_params = sum(p.numel() for p in build_model(base.model, ds.num_classes, ds.in_channels, ds.image_size
                                                ).parameters())
m = base.clients_per_round
q = m / base.num_clients


def eps(q_, z_, rounds):
    """epsilon from Opacus, as text; '<=' where the optimum sits at the edge of Opacus's orders (a loose bound)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = dp.epsilon(q_, z_, rounds, dp_delta)
    loose = any("Optimal order" in str(c.message) for c in caught)
    return f"{'<= ' if loose else ''}{e:.3g}"


budget = []
for z in z_list:
    if z == 0:
        continue
    budget.append({"z": z, "noise std per coordinate of the mean, zS/m": z * dp_clip / m,
                   "noise norm / S, z sqrt(d) / m": z * math.sqrt(num_params) / m,
                   f"epsilon after {num_rounds} rounds (q = {q:g})": eps(q, z, num_rounds),
                   # the same noise on the mean with 10x the clients per round, a tenth of them sampled per round
                   f"epsilon with m = {10 * m}, q = {q / 10:g}": eps(q / 10, 10 * z, num_rounds)})
display(Markdown(f"{base.model}: d = {num_params:,} parameters, m = {m} clients per round, S = {dp_clip:g}, "
                 f"delta = {dp_delta:g}. The last column keeps the noise per coordinate of the mean the same "
                 f"(z grows with m) in a federation 10 times larger per round, each client sampled with "
                 f"q = {q / 10:g}. '<=' marks a loose bound (Opacus's optimal order at the edge of its range)."))
warnings.filterwarnings("ignore", message="Optimal order is the (smallest|largest) alpha")  # the engine's runs below
pd.DataFrame(budget).set_index("z") if budget else None

# %%
# A client whose model the noise has blown up is left out of its round and counted in dropped_clients;
# if every client diverges for several rounds in a row the engine stops the run (DivergenceError).
warnings.filterwarnings("ignore", message=".*sent non-finite values")
dp_configs = {(s, None): base.replace(seed=s) for s in seed_list}
dp_configs.update({(s, z): base.replace(seed=s, dp_clip=dp_clip, dp_noise=z, dp_delta=dp_delta)
                   for s in seed_list for z in z_list})
dp_configs[("secagg", None)] = base.replace(seed=seed, secure_aggregation=True)  # for the last section
# in parallel, one process per core; a run that diverges comes back as its error
dp_runs = dict(zip(dp_configs, run_many(dp_configs.values(), root=results_dir, workers=workers,
                                        return_errors=True)))
frames, diverged = [], []
for (s, z), r in dp_runs.items():
    if s == "secagg":
        continue
    if isinstance(r, DivergenceError):
        diverged.append(f"* z = {z:g}, seed {s}: {r}")
    elif isinstance(r, Exception):
        raise r
    else:
        frames.append(r.metrics.assign(seed=s, z=float("nan") if z is None else z,
                                       label="no DP" if z is None else "clip only" if z == 0 else f"z = {z:g}"))
dp_metrics = pd.concat(frames, ignore_index=True)
if diverged:
    display(Markdown("**Runs the noise destroyed** (the noise per coordinate, zS/m, outgrew the weights; the "
                     "message's advice about lr does not apply here):\n\n" + "\n".join(diverged)))
plots.accuracy_over_rounds(dp_metrics, title=f"DP-FedAvg, {width_label(bits)} uploads, S = {dp_clip:g}",
                           name="06_dp_accuracy", figures_dir=figures_dir).show()
with_eps = dp_metrics.dropna(subset=["epsilon"])
if len(with_eps):
    plots.lines(with_eps, "epsilon", "test_acc", "label", title="Test accuracy against the privacy spent so far",
                xlabel=f"epsilon at delta = {dp_delta:g}", ylabel="test accuracy", log_x=True,
                name="06_dp_accuracy_vs_epsilon", figures_dir=figures_dir).show()

# %% [markdown]
# Paired by seed: each DP run shares its initialization, partition, sampled clients and batches with
# the run without DP of the same seed, so the difference below is the cost of the defence alone.

# %%
last = dp_metrics[dp_metrics["round"] == num_rounds]
free = last[last.label == "no DP"].set_index("seed").test_acc
dp_table = pd.DataFrame({
    "final_test_acc": last.groupby("label", sort=False).test_acc.mean(),
    "std over seeds": last.groupby("label", sort=False).test_acc.std(),
    "paired difference to no DP": last.assign(d=last.test_acc - last.seed.map(free)).groupby("label", sort=False).d.mean(),
    "epsilon": last.groupby("label", sort=False).epsilon.first(),
    "clients left out (non-finite)": dp_metrics.groupby("label", sort=False).dropped_clients.sum()})
dp_table.round(4)

# %% [markdown]
# What DP-FedAvg does **not** protect: the guarantee is about the released model (and everyone who
# sees it). The server still receives each client's update *before* the noise is added, so the
# attack of section 1 works on it exactly as before. Hiding the individual upload from the server
# is the job of secure aggregation (or of noise added on the client, local DP, which needs far more
# noise for the same $\varepsilon$).
#
# ## 3 · Secure aggregation: the server learns only the sum
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
# Below: the real uploads of round 1 (every client trains once from the initial model), coded on the
# shared grid at `bits`, then masked with `secagg.masked_sum`.

# %%
fed = Federation(base.replace(seed=seed), data=ds)
sampled = fed.sample_clients(1)
uploads = []
for k in sampled:
    sent, _ = fed.local_update(k, 1)
    uploads.append({n: v.detach().cpu().float().clone() for n, v in sent.items() if v.is_floating_point()})
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
                f"(k = {k_bits} bits)", bins=64, name="06_masked_upload", figures_dir=figures_dir).show()
display(Markdown(
    f"{len(flats)} clients, {len(flats[0]):,} codes each at {bits} bits, summed modulo $2^{{{k_bits}}}$. "
    f"The masked upload's mean is {masked[0].mean() / modulus:.4f} $m$ and its std {masked[0].std() / modulus:.4f} "
    f"$m$ (uniform: 0.5000 and {1 / math.sqrt(12):.4f}); its correlation with the plain codes is {corr:+.4f}. "
    f"The unmasked sum equals the sum of the plain codes in "
    f"**{int((secagg.to_signed(total, modulus) == exact).sum()):,} of {len(exact):,}** coordinates."))

# %% [markdown]
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

# %% [markdown]
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

# %% [markdown]
# ### A run with secure aggregation
#
# The same federated run (first seed, `bits`) with `secure_aggregation=True` against the plain run
# of the no-DP baseline above: uploads masked on the shared grid, weighted by $n_k$, with the masking
# overhead and the key and share traffic counted in the upload.

# %%
plain = run(base.replace(seed=seed), root=results_dir)
masked_run = run(base.replace(seed=seed, secure_aggregation=True), root=results_dir)
pair = pd.concat([plain.metrics.assign(label=f"{width_label(bits)}, per-client scales"),
                  masked_run.metrics.assign(label=f"{width_label(bits)}, secure aggregation")], ignore_index=True)
plots.accuracy_over_rounds(pair, title="Secure aggregation against the same bits without it",
                           name="06_secagg_accuracy", figures_dir=figures_dir).show()
secagg_table = pd.DataFrame({
    "final_test_acc": [plain.summary["final_test_acc"], masked_run.summary["final_test_acc"]],
    "upload_mb_per_round": [plain.summary["upload_mb_per_round"], masked_run.summary["upload_mb_per_round"]],
    "total_upload_mb": [plain.summary["total_upload_mb"], masked_run.summary["total_upload_mb"]],
    "mean quant_error": [plain.metrics.quant_error.mean(), masked_run.metrics.quant_error.mean()]},
    index=["per-client scales", "secure aggregation"])
secagg_table.round(4)

# %% [markdown]
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
answers = []
if len(clean) >= 2:
    top = clean.iloc[0]
    answers.append(
        f"* **Does quantizing the upload reduce what leaks?** On this run: " + ", ".join(
            f"{width_label(r.bits)} {r.psnr:.1f} dB" for r in clean.itertuples())
        + f" against {gray:.1f} dB for a gray guess. The drop from {width_label(top.bits)} to the narrowest "
        f"width is {top.psnr - clean.iloc[-1].psnr:.1f} dB; widths whose drop is small leak as much as FP32.")
for label_, r in dp_table.iterrows():
    if label_ == "no DP":
        continue
    eps = f"epsilon {r.epsilon:.3g}" if pd.notna(r.epsilon) else "no epsilon (no noise)"
    answers.append(f"* **DP-FedAvg, {label_}** ({eps} after {num_rounds} rounds, m = {m}): final accuracy "
                   f"{r.final_test_acc:.4f} against {dp_table.loc['no DP', 'final_test_acc']:.4f} without DP "
                   f"(paired difference {r['paired difference to no DP']:+.4f}).")
c = cost.loc[bits] if bits in cost.index else cost.iloc[0]
answers.append(
    f"* **Secure aggregation at {width_label(bits)}:** final accuracy {masked_run.summary['final_test_acc']:.4f} "
    f"against {plain.summary['final_test_acc']:.4f} with per-client scales; upload "
    f"{masked_run.summary['upload_mb_per_round']:.2f} MB per round against {plain.summary['upload_mb_per_round']:.2f} "
    f"({masked_run.summary['upload_mb_per_round'] / plain.summary['upload_mb_per_round']:.2f}x). The shared scale's "
    f"error at {width_label(int(c.name))} is {c['error, shared scale']:.4f} against {c['error, per-client scales']:.4f}.")
display(Markdown(f"### In short ({Path(dataset).stem}, {base.model}, {num_rounds} rounds, {len(seed_list)} seed(s))"
                 "\n\n" + "\n".join(answers)))
