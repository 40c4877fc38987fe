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
# # 07 · What an upload reveals: gradient leakage
#
# Federated learning keeps the training data on the clients, and it is tempting to call that
# private. It is not, by itself: what a client uploads (a gradient, or a model after a few local
# steps) is a function of its data, and a server can often invert it. This lesson plays the server:
# it rebuilds a client's training image from its upload, asks whether a quantized upload (INT16, INT8,
# INT4) leaks less than FP32, and how the batch size and noise the client adds matter. Lesson 08
# measures the defences: DP-FedAvg and secure aggregation.
#
# **References.** Zhu, Liu and Han (2019), *Deep Leakage from Gradients*, NeurIPS. Zhao, Mopuri and
# Bilen (2020), *iDLG: Improved Deep Leakage from Gradients*, arXiv:2001.02610. Geiping, Bauermeister,
# Dröge and Moeller (2020), *Inverting Gradients: How easy is it to break privacy in federated
# learning?*, NeurIPS.

# %% tags=["parameters"] slideshow={"slide_type": "skip"}
dataset: str = "cifar10"  # cifar10 (torchvision downloads it into data_root), synthetic, or an .npz file
data_root: str = ""  # where datasets are downloaded and built; empty: the project's data/
attack_model: str = "lenet"  # attacked network: lenet (DLG's sigmoid LeNet, DLG attack) or cifar_cnn (cosine attack)
attack_steps: int = 0  # cap on each attack's steps (L-BFGS for lenet, Adam for cifar_cnn); 0: leakage.DEFAULT_STEPS
progress_steps: str = "25,50,100"  # comma-separated step counts shown on the way to the final attack (FP32, batch 1)
attack_bit_widths: str = "32,16,8,4"  # upload bit widths attacked at batch size 1; 32 means float32
batch_sizes: str = "1,4,8"  # victim batch sizes attacked at FP32
attack_noises: str = "0.01"  # std of Gaussian noise a client adds to its upload, attacked at FP32 (comma-separated)
seeds: str = "0,1"  # comma-separated seeds; runs repeat for each (the lesson says which use the first only)
workers: int = 0  # processes that compute this lesson's runs side by side; 0: one per core
results_dir: str = ""  # cached runs and attacks, shared by all lessons; empty: the project's data/runs/
figures_dir: str = ""  # where static PNGs are written; empty: the project's figures/
theme: str = "screen"  # figures for a laptop screen, or a projector (larger fonts, thicker lines): screen or projector

# %% slideshow={"slide_type": "subslide"}
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from IPython.display import Image, Markdown, display

from fl_lib.privacy import leakage
from fl_lib.study import lesson
from fl_lib.study import plots
from fl_lib.core.config import parse_list, parse_seeds
from fl_lib.core.data import load_dataset
from fl_lib.core.quant import relative_error
from fl_lib.study import attacks
from fl_lib.study.measures import paired_verdicts
from fl_lib.study.widgets import LeakageExplorer, width_label

lesson.setup("mcmahan", theme=theme)
data_root = lesson.folder("data_root", data_root)
results_dir = lesson.folder("results_dir", results_dir)
figures_dir = lesson.folder("figures_dir", figures_dir)

attack_bits = parse_list(attack_bit_widths, int)
batch_list = parse_list(batch_sizes, int)
noise_list = [s for s in parse_list(attack_noises, float) if s > 0]
attack_method = leakage.DEFAULT_METHOD[attack_model]  # dlg for lenet, cosine for cifar_cnn
attack_cap = attack_steps or leakage.DEFAULT_STEPS[attack_method]  # every attack stops earlier on a plateau
shown_steps = [s for s in parse_list(progress_steps, int) if 0 < s < attack_cap]
seed_list = parse_seeds(seeds)
seed = seed_list[0]
ds = load_dataset(dataset, data_root)
print(f"{ds.name}: {len(ds.y_train):,} training images of {ds.in_channels} x {ds.image_size} x {ds.image_size}; "
      f"attacked network {attack_model} ({attack_method}), seeds {', '.join(map(str, seed_list))}")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Gradient leakage, step by step
#
# The attacker is the server. It knows the model $w$ it broadcast and receives one client's upload.
# For DLG's network (`lenet`, sigmoid activations) the client uploads the gradient of its batch loss,
# as in FedSGD, $g = \nabla_w L(f_w(x), y)$; the server decodes it at the run's bit width, so it
# sees $\hat g$, exactly what `fl_lib.core.codec` delivers.
#
# **Step 1: the label.** With non-negative features $h$ (sigmoid outputs), the last layer's gradient
# is $\partial L / \partial W_c = (p_c - y_c)\, h$: only the true class's row has a negative sum
# (iDLG). For a batch of $B$ the label counts come from the bias gradient,
# $\partial L / \partial b_c = \bar p_c - n_c / B$.

# %%
x, y = leakage.pick_batch(ds, 1, seed)
victim = leakage.build_victim(attack_model, ds.num_classes, ds.in_channels, ds.image_size, seed)
method = attack_method
local_steps = leakage.LOCAL_STEPS[method]
# what the network sees in the attack's reference code: pixels in [0, 1] (DLG), (x - mean) / std (Geiping et al.)
in_mean, in_std = leakage.input_stats(method, ds.mean, ds.std, ds.in_channels)
upload = leakage.client_upload(victim, (x - in_mean) / in_std, y, local_steps)
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

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Step 2: what the server decodes.** At $b$ bits each channel $c$ of the upload is sent as codes
# $q_{ci} = \mathrm{round}(g_{ci} / s_c)$ with $s_c = \max_i |g_{ci}| / q_{\max}$ (equations (1)-(3) of
# lesson 04). The server inverts $\hat g = s_c q_c$, not $g$: the relative error
# $\|\hat g - g\| / \|g\|$ is the only thing quantization changes for the attacker.

# %%
view = []
for b in attack_bits:
    decoded, blob = leakage.server_view(upload, b)
    view.append({"bits": b, "upload bytes": len(blob),
                 "relative error of what the server sees": relative_error(upload, decoded)})
pd.DataFrame(view).set_index("bits")

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Step 3: the attack.** Starting from a random image $x'$ (and the label $y'$ read above), DLG
# minimizes the distance between the gradient $x'$ would produce and the one received,
#
# $$D(x') = \sum_{\text{layers}} \big\| \nabla_w L(f_w(x'), y') - \hat g \big\|^2 ,$$
#
# with L-BFGS (`leakage.attack`). As in DLG's and iDLG's code, the network sees pixels in $[0, 1]$ and
# $x'$ starts from a standard normal draw. For `cifar_cnn` (ReLU) the upload is a FedAvg delta of
# several local steps, and the cosine attack of Geiping et al. minimizes
# $1 - \langle \nabla_w L, \hat g \rangle / (\|\nabla_w L\| \|\hat g\|) + \lambda\, \mathrm{TV}(x')$
# instead, on inputs normalized by the dataset's mean and std as in their code. Quality is the PSNR
# against the original, $10 \log_{10}(1 / \mathrm{MSE})$ for pixels in $[0, 1]$. For scale: a flat
# gray guess scores the value printed below.
#
# **Run to convergence.** An attack cut off while its loss still falls measures the budget, not
# the leak. So no attack runs for a fixed number of steps: with $D^\star_t$ the lowest loss after step
# $t$, an attack stops at the first step where, over the last $W$ steps, it fell by less than a
# fraction $\tau$,
#
# $$D^\star_t \ge (1 - \tau)\, D^\star_{t - W},$$
#
# (`leakage.Plateau`; $W$ and $\tau$ per attack in `leakage.PLATEAU`), or at the cap `attack_steps`.
# The cosine attack first divides its step by 10 at each of its first three plateaus. The tables
# show beside each PSNR the final matching loss ($D$, or $1 - \cos$), the steps it ran and why it
# stopped.
#
# Every attack of this lesson runs once, in grids of settings (`attacks.attack_grids`, which calls
# `leakage.run_grid`), and is stored in the results cache under `results_dir/leakage/`, keyed by its
# data, its settings and `leakage.defaults()` (so a changed attack never reads back old results): a
# rerun reads it back. The grids still missing run side by side, one process per core (`workers`);
# each attack runs on one thread, so its numbers are the same however many run at once.

# %%
larger = [b for b in batch_list if b != 1 or 32 not in attack_bits]
own = ([([1], attack_bits, [0.0], seed)] + [([b], [32], [0.0], seed) for b in larger]  # one grid per batch size
       + ([([1], [32], noise_list, seed)] if noise_list else []))
others = [([1], attack_bits, [0.0], s) for s in seed_list[1:]]  # the other seeds' bit-width grids (used below)
grids = attacks.attack_grids(dataset, own + others, model=attack_model, steps=attack_cap, data_root=data_root,
                             data=ds, root=results_dir, workers=workers)
attacked = attacks.Attacks.load(*grids[:len(own)])  # every attack's row, reconstruction and loss per step
bits_grid = dict(zip(seed_list, grids[:1] + grids[len(own):]))  # seed -> its bit-width grid at B = 1
attack_rows, attack_images = attacked.rows, attacked.images
gray = leakage.psnr(torch.full_like(x, 0.5), x)
attack_rows[["model", "method", "inputs", "batch_size", "bits", "noise", "psnr", "psnr_min", "match_loss", "steps_run",
             "stop", "steps", "label_correct", "upload_bytes", "upload_rms", "seconds"]]


# %% slideshow={"slide_type": "subslide"}
final, final_row = attacked.stored(1, 32, 0.0)
if final_row is not None:  # a cap past the plateau would give the stored attack itself
    shown_steps = [s for s in shown_steps if s < final_row.steps_run]
progress = [leakage.attack(x, y, attack_model, 32, 0.0, s, seed, num_classes=ds.num_classes, mean=ds.mean,
                           std=ds.std) for s in shown_steps]  # each a prefix of the stored attack (same seed)
cells = [("original", x[0])] + [(f"{s} steps\n{r.psnr:.1f} dB", r.reconstruction[0])
                                for s, r in zip(shown_steps, progress)]
if final is not None:
    cells.append((f"{final_row.steps_run} steps ({final_row.stop})\n{final_row.psnr:.1f} dB", final[0]))
display(Image(filename=str(plots.image_table([cells], "07_attack_steps", figures_dir))))
curves = [pd.DataFrame({"step": np.arange(1, len(h) + 1), "attack loss": h, "label": width_label(b)})
          for b in attack_bits if (h := attacked.histories.get(f"{attack_model}_B1_bits{b}_noise0"))]
if curves:
    plots.lines(pd.concat(curves, ignore_index=True), "step", "attack loss", "label",
                title="Attack loss at each step, until each attack stopped (B = 1)", log_y=True,
                name="07_attack_loss", figures_dir=figures_dir).show()
display(Markdown(f"A flat gray image scores **{gray:.1f} dB** against this original."))

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Does a quantized upload leak less?
#
# The same image and the same attack, on the upload decoded at each bit width, each run until its
# loss stopped falling. The attack can at best match $\hat g$, and no image need produce $\hat g$
# exactly: the quantization error of step 2 leaves a floor under the matching loss, and the loss
# curves above show where each width's attack settled. The README lists the same grid measured on
# real CIFAR-10 images with `python -m fl_lib leakage`; the numbers below are this run's.

# %% slideshow={"slide_type": "subslide"}
cells = [("original", x[0])]
for b in attack_bits:
    img, r = attacked.stored(1, b)
    if img is not None:
        cells.append((f"{width_label(b)}\n{r.psnr:.1f} dB", img[0]))
display(Image(filename=str(plots.image_table([cells], "07_leakage_bits", figures_dir))))

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Larger batches
#
# One upload of a batch of $B$ images is the mean of $B$ gradients; the attack must rebuild all $B$
# at once (each reconstruction is matched to its closest original before scoring).

# %% slideshow={"slide_type": "subslide"}
table = []
for b in batch_list:
    img, r = attacked.stored(b, 32)
    if img is None:
        continue
    original = attack_images[f"{attack_model}_B{b}_original"]
    table.append([(f"B = {b}\noriginal" if i == 0 else "", original[i]) for i in range(b)])
    table.append([(f"FP32, {r.psnr:.1f} dB" if i == 0 else "", img[i]) for i in range(b)])
display(Image(filename=str(plots.image_table(table, "07_leakage_batches", figures_dir))))
plots.psnr_panels(attack_rows, reference=gray, name="07_psnr", figures_dir=figures_dir).show()

# %%
loss_name = "D" if method == "dlg" else "1 - cos"  # the final gradient-matching loss of each attack
lines_out = []
clean = attack_rows[(attack_rows.noise == 0) & (attack_rows.batch_size == 1)].sort_values("bits", ascending=False)
if len(clean):
    lines_out.append("* **Bit width, B = 1:** " + ", ".join(
        f"{width_label(r.bits)} {r.psnr:.1f} dB ({loss_name} = {r.match_loss:.2g} after {r.steps_run:,} steps)"
        for r in clean.itertuples()) + f" (flat gray guess: {gray:.1f} dB).")
batches = attack_rows[(attack_rows.noise == 0) & (attack_rows.bits == 32)].sort_values("batch_size")
if len(batches):
    lines_out.append("* **Batch size, FP32:** " + ", ".join(
        f"B = {r.batch_size}: {r.psnr:.1f} dB (worst image {r.psnr_min:.1f}, {loss_name} = {r.match_loss:.2g} after "
        f"{r.steps_run:,} steps, labels {'right' if r.label_correct else 'wrong'})"
        for r in batches.itertuples()) + ".")
noisy = attack_rows[attack_rows.noise > 0].sort_values("noise")
if len(noisy):
    lines_out.append("* **Client noise, FP32, B = 1:** " + ", ".join(
        f"std {r.noise:g} ({r.noise / r.upload_rms:.2g} x the upload's rms): {r.psnr:.1f} dB "
        f"({loss_name} = {r.match_loss:.2g})" for r in noisy.itertuples()) + ".")
unsettled = attack_rows[~attack_rows.stop.isin(["plateau", "exact"])]
lines_out.append("* **Convergence:** " + (
    f"every attack stopped on a plateau, before its cap of {attack_cap:,} steps." if unsettled.empty else
    "not every attack settled: " + ", ".join(
        f"B = {r.batch_size}, {width_label(r.bits)}, noise {r.noise:g} stopped "
        f"{'at its cap' if r.stop == 'cap' else 'on a non-finite loss'} after {r.steps_run:,} steps"
        for r in unsettled.itertuples()) + "; their PSNR is what this budget found, a longer attack may find more."))
display(Markdown(f"### What this run measured ({attack_model}, {method}, cap {attack_cap:,} steps, "
                 f"{Path(dataset).stem})\n\n" + "\n".join(lines_out)))

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Does a narrower upload leak less?** Two checks per bit width against the rows above: does it leak
# like FP32 (PSNR within `same_db` of FP32's), and does its reconstruction still show the picture
# (more than `far_db` above the flat gray guess)? The thresholds are printed with the verdicts.

# %%
same_db, far_db = 3.0, 10.0  # dB: 3 dB is a factor of 2 in MSE, 10 dB a factor of 10
psnr_at = {int(r.bits): r.psnr for r in clean.itertuples()}  # B = 1, no noise
like_fp32 = [b for b in psnr_at if b != 32 and 32 in psnr_at and abs(psnr_at[b] - psnr_at[32]) <= same_db]
below_fp32 = [b for b in psnr_at if b != 32 and 32 in psnr_at and psnr_at[b] < psnr_at[32] - same_db]
leak_checks = []
for b in sorted((b for b in psnr_at if b != 32), reverse=True):
    like = abs(psnr_at[b] - psnr_at[32]) <= same_db if 32 in psnr_at else None
    shows = psnr_at[b] > gray + far_db
    leak_checks.append(
        f"* **{width_label(b)}**, {psnr_at[b]:.1f} dB: leaks like FP32 (within {same_db:g} dB of its "
        + (f"{psnr_at[32]:.1f} dB): **{'holds' if like else 'does not hold'}**" if like is not None else
           "PSNR): not measured, FP32 was not attacked")
        + f"; still shows the picture (over {gray + far_db:.1f} dB): **{'holds' if shows else 'does not hold'}** "
        f"in this run.")
display(Markdown(f"Same leak: PSNRs within {same_db:g} dB (MSE within {10 ** (same_db / 10):.1f}x); shows the "
                 f"picture: more than {far_db:g} dB over the gray guess's {gray:.1f} dB (under "
                 f"1/{10 ** (far_db / 10):.0f} of its MSE).\n\n" + ("\n".join(leak_checks) if leak_checks else
                 "Only one bit width was attacked (`attack_bit_widths`): nothing to compare.")))

# %% [markdown] slideshow={"slide_type": "subslide"}
# Read the numbers against the gray guess: a reconstruction far above it shows the picture, one near
# it shows nothing. A converged attack finds an image whose gradient matches $\hat g$ as closely as
# it can; quantization moves $\hat g$ away from every real image's gradient by the relative error of
# step 2, and the matching loss cannot fall below what that error leaves. How much of the picture
# survives at each width is what the checks above measure, for this attack: a stronger attack (image
# priors, several restarts) can only do better, so a width that leaks here is not made safe by a
# weaker attack failing on it. Whether larger batches, or noise the *client* adds before uploading,
# make this attack fail is checked below from the same rows. Neither is a guarantee: attacks with
# image priors rebuild batches (Geiping et al.), and noise costs accuracy, the subject of lesson 08
# (where the server adds it instead).
#
# **Quantization as a defence, against the spread between seeds.** One image says little about
# chance, so every seed of `seeds` attacks its own image at each width ($B = 1$, stored like the
# rest). For seed $s$ the paired difference is $d_s = \mathrm{PSNR}_s(b) - \mathrm{PSNR}_s(32)$;
# quantization lowers the leak beyond chance when their mean is below minus their standard deviation,
# $\bar d < -s_d$ (`measures.paired_verdicts`), and it is a defence only if it also lowers it by more
# than `same_db`: a drop smaller than that leaves the reconstruction as good as FP32's.

# %%
psnr_by_seed = []
for s in seed_list:  # the bit-width grid of each seed, computed above
    rows_s = attacks.Attacks.load(bits_grid[s]).rows
    rows_s = rows_s[(rows_s.noise == 0) & (rows_s.batch_size == 1)]
    psnr_by_seed.append(rows_s.assign(seed=s, width=rows_s.bits.map(width_label)))
psnr_by_seed = pd.concat(psnr_by_seed, ignore_index=True)
defence, defence_lines = {}, []
if 32 in attack_bits and len(attack_bits) > 1:
    for w, r in paired_verdicts(psnr_by_seed, reference="FP32", value="psnr", by="width").iterrows():
        per_seed = ", ".join(f"{r[f'seed {s}']:+.2f}" for s in seed_list if pd.notna(r.get(f"seed {s}")))
        if r.seeds < 2:
            defence[w] = None
            defence_lines.append(f"* **{w}** minus FP32: {r['mean']:+.2f} dB on one seed: no spread between seeds, "
                                 f"so whether it lowers the leak beyond chance cannot be judged in this run.")
        else:
            beyond, material = bool(r["mean"] < -r["std"]), bool(r["mean"] < -same_db)
            defence[w] = beyond and material
            defence_lines.append(
                f"* **{w}** minus FP32: {r['mean']:+.2f} dB, spread {r['std']:.2f} dB over {int(r.seeds)} seeds (per "
                f"seed {per_seed}); lower by more than the spread: **{'holds' if beyond else 'does not hold'}**; by "
                f"more than {same_db:g} dB: **{'holds' if material else 'does not hold'}**; a defence against this "
                f"attack in this run: **{'holds' if defence[w] else 'does not hold'}**.")
else:
    defence_lines.append("Only one bit width, or no FP32, was attacked (`attack_bit_widths`): nothing to compare.")
fp32_b1 = psnr_at.get(32)
for r in batches[batches.batch_size > 1].itertuples() if fp32_b1 is not None else []:
    harder = r.psnr < fp32_b1 - same_db
    defence_lines.append(f"* **B = {r.batch_size}**, FP32: {r.psnr:.1f} dB against {fp32_b1:.1f} dB at B = 1 "
                         f"({r.psnr - fp32_b1:+.1f} dB); harder for this attack (more than {same_db:g} dB lower): "
                         f"**{'holds' if harder else 'does not hold'}** in this run.")
for r in noisy.itertuples() if fp32_b1 is not None else []:
    helps = r.psnr < fp32_b1 - same_db
    defence_lines.append(f"* **Client noise std {r.noise:g}**, FP32, B = 1: {r.psnr:.1f} dB against {fp32_b1:.1f} dB "
                         f"without ({r.psnr - fp32_b1:+.1f} dB); helps against this attack (more than {same_db:g} dB "
                         f"lower): **{'holds' if helps else 'does not hold'}** in this run.")
display(Markdown(f"Seeds {', '.join(map(str, seed_list))}, {method}, each attack run to its plateau or cap "
                 f"{attack_cap:,}:\n\n" + "\n".join(defence_lines)))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## A widget: move the bit width or the noise
#
# It redraws one stored reconstruction beside its original (from the attacks above, no new attack
# and no training). A combination this lesson did not attack shows a gray panel and says so.

# %% tags=["widget"] slideshow={"slide_type": "subslide"}
explorer = LeakageExplorer(attack_rows, attack_images, model=attack_model, batch_size=1)
explorer

# %%
print(f"{explorer.key()}: {explorer.text.value}")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## In short

# %%
answers = []
if len(clean) >= 2:
    answers.append(
        f"* **Does quantizing the upload reduce what leaks?** On this run ({method}, "
        f"{'every attack run to its plateau' if unsettled.empty else 'not every attack converged, see above'}): "
        + ", ".join(
            f"{width_label(r.bits)} {r.psnr:.1f} dB" for r in clean.itertuples())
        + f" against {gray:.1f} dB for a gray guess. Within {same_db:g} dB of FP32 (leaks like it): "
        + (", ".join(map(width_label, like_fp32)) or "none") + f"; more than {same_db:g} dB below it: "
        + (", ".join(map(width_label, below_fp32)) or "none") + ". Below FP32 by more than the spread between "
        + (f"seeds and {same_db:g} dB: not judged, one seed" if len(seed_list) < 2 else
           f"{len(seed_list)} seeds and {same_db:g} dB: " + (", ".join(w for w, v in defence.items() if v) or "none"))
        + ".")
display(Markdown(f"### In short ({Path(dataset).stem}, {attack_model}, {method}, {len(seed_list)} seed(s))"
                 "\n\n" + "\n".join(answers)))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# Each exercise asks for a prediction first. Write it down, change the variable at the top of the code cell,
# run the cell, and only then open the answer: the cell computes it, nothing in it is written in advance. Neither
# runs an attack: each codes one upload, or reads the labels off one gradient, in a second.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 1: what one more bit takes from the attacker
#
# Step 2 showed that quantization changes only what the server decodes, $\hat g$, by a relative error
# $\|\hat g - g\| / \|g\|$. **Predict:** going from `low_try` bits to `high_try` bits, by what factor does that error
# shrink? Does it halve with every extra bit, as halving the step $s_c$ of equation (1) suggests? Change
# `low_try` or `high_try` and run.

# %%
from fl_lib.study.exercises import answer, holds

low_try = 2  # change me: the narrowest bit width (at least 2)
high_try = 12  # change me: the widest bit width (at most 16)
widths = list(range(low_try, high_try + 1))
errors = pd.DataFrame({"bits": widths, "relative error": [relative_error(upload, leakage.server_view(upload, b)[0])
                                                          for b in widths]})
errors["label"] = "the upload of step 1"
plots.lines(errors, "bits", "relative error", "label", title="What the server decodes, against the bit width",
            xlabel="bits", ylabel="relative error of the decoded upload", log_y=True).show()
per_bit = errors["relative error"].iloc[:-1].to_numpy() / errors["relative error"].iloc[1:].to_numpy()
display(answer(
    f"From {low_try} to {high_try} bits the relative error falls from {errors['relative error'].iloc[0]:.3g} to "
    f"{errors['relative error'].iloc[-1]:.3g}, {errors['relative error'].iloc[0] / errors['relative error'].iloc[-1]:.3g} "
    f"times; per extra bit by a factor from {per_bit.min():.3g} to {per_bit.max():.3g} (geometric mean "
    f"{np.exp(np.log(per_bit).mean()):.3g}).\n\n"
    f"* Every extra bit lowers the error by a factor between 1.5 and 3: {holds(((per_bit > 1.5) & (per_bit < 3)).all())} "
    f"in this run."))

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 2: labels from one upload of a batch
#
# Step 1 read the single image's label off the last layer before any optimization. For a batch of $B$ images the
# bias gradient gives the label *counts*, $n_c = B(\bar p_c - \partial L / \partial b_c)$. **Predict:** with
# `batch_try` images in one upload, how many of the labels does the server get right, before it rebuilds a single
# pixel? Change `batch_try` and run (a size out of range is refused with its range).

# %%
batch_try = 8  # change me: images in the client's batch
xb, yb = leakage.pick_batch(ds, batch_try, seed)
upload_b = leakage.client_upload(victim, (xb - in_mean) / in_std, yb, local_steps)
got = leakage.recover_labels(victim, {n: sign * v for n, v in upload_b.items()}, batch_try, xb)
true_counts = torch.bincount(yb, minlength=ds.num_classes)
got_counts = torch.bincount(got.to(torch.int64), minlength=ds.num_classes)
right = int(torch.minimum(true_counts, got_counts).sum())
display(answer(
    f"The batch holds the labels {sorted(map(int, yb))}; the server reads {sorted(map(int, got))} from the bias "
    f"gradient ({method}, {attack_model}): **{right} of {batch_try}** right as a multiset.\n\n"
    f"* Every label read correctly: {holds(right == batch_try)} in this run."))
