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
# # 04 · Channel-wise symmetric quantization
#
# Lee & Lee shrink each client's upload by sending every weight as a b-bit integer with one
# floating-point scale per output channel (after Krishnamoorthi 2018). This lesson computes the
# quantizer's three equations on a real SqueezeNet 1.0 layer, compares per-channel with per-tensor
# scales across bit widths, and rebuilds the paper's Table 1 (bytes uploaded per round).

# %% tags=["parameters"] slideshow={"slide_type": "skip"}
dataset: str = "cifar10"  # cifar10 (torchvision downloads it into data_root), synthetic, or an .npz file
data_root: str = ""  # where datasets are downloaded and built; empty: the project's data/
model: str = "squeezenet1_0"  # network whose weights are quantized
layer: str = "features.0.weight"  # tensor of the worked example
channel: int = 0  # output channel of the worked example
bits: int = 4  # bit width of the worked example (the slider starts here)
local_epochs: int = 1  # epochs one client trains before the errors are measured (0: untrained)
num_clients: int = 10  # K, clients uploading per round in Table 1 (the paper: 10)
seed: int = 0  # seed of the initialization and of the local training
figures_dir: str = ""  # where static PNGs are written; empty: the project's figures/
device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda or mps
theme: str = "screen"  # figures for a laptop screen, or a projector (larger fonts, thicker lines): screen or projector

# %% slideshow={"slide_type": "subslide"}
import pandas as pd
import torch
from IPython.display import Markdown, display

from fl_lib.study import lesson
from fl_lib.study import plots
from fl_lib.study.analysis import channel_quant_stats, describe_quant
from fl_lib.core.config import preset
from fl_lib.core.data import load_dataset
from fl_lib.simulator.federation import Federation
from fl_lib.study.measures import model_quant_error, quantization_errors
from fl_lib.core.quant import dequantize, quantize
from fl_lib.study.traffic import PAPER_MIB, traffic_table
from fl_lib.study.widgets import QuantExplorer

lesson.setup("lee", "krishnamoorthi", theme=theme)
data_root = lesson.folder("data_root", data_root)
figures_dir = lesson.folder("figures_dir", figures_dir)

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
      f"client 0 trained {local_epochs} epoch(s) on {fed.sizes[0]} images")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## The quantizer, equation by equation
#
# A *channel* c is one slice of a weight tensor along its first dimension (one output channel of a
# convolution); a bias is a single channel. With b bits the integer grid is symmetric around zero,
# $q_{\max} = 2^{b-1}-1$ and $q_{\min} = -q_{\max}$, so zero is exact and no zero point is needed.
# Equation (1) gives each channel its own scale, from its largest weight:
#
# $$s_c = \frac{\max_i |w_{c,i}|}{q_{\max}} \quad (1)$$

# %%
W = trained[layer].float()
w = W.reshape(W.shape[0], -1)  # row c holds channel c's weights w_{c,i}
q_max, q_min = 2 ** (bits - 1) - 1, -(2 ** (bits - 1) - 1)
s = w.abs().amax(dim=1) / q_max  # (1)
print(f"{layer}: shape {tuple(W.shape)}, {w.shape[0]} channels of {w.shape[1]} weights; {bits} bits: "
      f"q_max = {q_max}; s_c from {s.min():.3g} to {s.max():.3g}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Equation (2) maps each weight to the nearest grid point and clips to the grid (with the scale of
# (1) nothing is actually clipped: the largest weight lands on $q_{\max}$):
#
# $$q_{c,i} = \mathrm{clip}(\mathrm{round}(w_{c,i} / s_c),\, q_{\min},\, q_{\max}) \quad (2)$$

# %%
q = torch.clamp(torch.round(w / s[:, None]), q_min, q_max)  # (2)
print(f"codes from {int(q.min())} to {int(q.max())}; channel {channel}: {q[channel, :8].int().tolist()} ...")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Equation (3) restores real weights on the receiving side, and the error of each weight is at most
# half a grid step, $|w_{c,i} - \hat{w}_{c,i}| \le s_c / 2$:
#
# $$\hat{w}_{c,i} = s_c \, q_{c,i} \quad (3)$$

# %%
w_hat = s[:, None] * q  # (3)
qt = quantize(W, bits)  # fl_lib's quantizer, the one the uploads use
print(f"codes that differ from fl_lib.core.quant's: {int((qt.q.reshape_as(q).float() != q).sum())} of {q.numel()}")
print(f"largest difference from fl_lib's reconstruction: {(dequantize(qt).reshape_as(w) - w_hat).abs().max():.1e}")
print(f"max |w - w_hat| / (s_c / 2) over all channels: {((w - w_hat).abs().amax(1) / (s / 2)).max():.3f} (<= 1)")
pd.DataFrame({"w_ci": w[channel, :8], "w_ci / s_c": w[channel, :8] / s[channel], "q_ci": q[channel, :8],
              "w_hat_ci": w_hat[channel, :8]}).round(5)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Per channel or per tensor?
#
# A per-tensor quantizer uses one scale for the whole tensor, $s = \max_{c,i} |w_{c,i}| / q_{\max}$.
# A channel whose weights are small next to the tensor's largest weight then uses only a few grid
# levels. The relative error $\|\hat{w} - w\| / \|w\|$ over the whole model, for the untrained
# initialization, the weights after local training, and the update (trained minus initial weights,
# what `upload="delta"` sends):

# %% slideshow={"slide_type": "subslide"}
bit_range = list(range(2, 17))
curves = []
for what, state in (("initial weights", init), ("trained weights", trained), ("update", update)):
    for per_channel in (True, False):
        for b in bit_range:
            curves.append({"bits": b, "relative error": model_quant_error(state, b, per_channel),
                           "quantizer": f"{what}, per {'channel' if per_channel else 'tensor'}"})
curves = pd.DataFrame(curves)
plots.lines(curves, "bits", "relative error", "quantizer", title=f"{model}: quantization error of the whole model",
            log_y=True, name="04_error_vs_bits", figures_dir=figures_dir).show()
table = curves.pivot(index="bits", columns="quantizer", values="relative error")
table.loc[[b for b in (2, 4, 8, 16) if b in table.index]]

# %% [markdown] slideshow={"slide_type": "subslide"}
# Why would the two quantizers differ more on one of the three? A layer's initialization draws every
# channel from the same distribution, so its channels' largest weights should be alike, and one scale
# for all of them gives up little. Training moves the channels by different amounts, so the update's
# channels may differ in size, and that is where a scale per channel should pay off most. The cell
# measures both: the spread of a tensor's channel maxima (largest over smallest $\max_i |w_{c,i}|$, the
# median over the weight tensors) and the error ratio per tensor / per channel at `bits`.

# %%
def scale_spread(t):  # largest over smallest channel maximum |w_ci|
    amax = t.reshape(t.shape[0], -1).abs().amax(1)
    return float(amax.max() / amax.clamp_min(1e-12).min())

kinds = {"initial weights": init, "trained weights": trained, "update": update}
ratio = {what: table.loc[bits, f"{what}, per tensor"] / table.loc[bits, f"{what}, per channel"] for what in kinds}
weight_names = [name for name, v in init.items() if v.is_floating_point() and v.dim() > 1]
spread = {what: pd.Series([scale_spread(state[name]) for name in weight_names]).median() for what, state in kinds.items()}
if local_epochs > 0:
    widest, most = max(spread, key=spread.get), max(ratio, key=ratio.get)
    display(Markdown(
        f"At {bits} bits one scale per tensor gives {ratio['initial weights']:.2f}x the error of per-channel scales "
        f"on the initial weights, {ratio['trained weights']:.2f}x on the trained weights and {ratio['update']:.2f}x "
        f"on the update. The median spread of the channel maxima over the {len(weight_names)} weight tensors: "
        f"{spread['initial weights']:.2f} (initial), {spread['trained weights']:.2f} (trained), "
        f"{spread['update']:.2f} (update).\n\n"
        f"* The update's channels differ most in size: **{'holds' if widest == 'update' else 'does not hold'}** "
        f"in this run (widest: {widest}).\n"
        f"* A scale per channel pays off most on the update: **{'holds' if most == 'update' else 'does not hold'}** "
        f"in this run (largest ratio: {most})."))
else:
    print("local_epochs = 0: the update is zero, so there is nothing to compare it with")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Layer by layer at the worked example's bit width: does the spread of the channel scales
# (largest / smallest $s_c$, the spread above) say how much a single scale gives up? The rank
# correlation printed under the table answers it for this model.

# %%
layers = quantization_errors({k: v for k, v in trained.items() if v.dim() > 1}, [bits])
layers["scale spread"] = [scale_spread(trained[name]) for name in layers.layer]
layers["per tensor / per channel"] = layers.per_tensor / layers.per_channel
rho = layers["scale spread"].rank().corr(layers["per tensor / per channel"].rank())  # Spearman: Pearson of ranks
print(f"Spearman rank correlation over the {len(layers)} weight tensors between scale spread and per tensor / "
      f"per channel: {rho:.2f}; a wider spread goes with a larger loss of the single scale: "
      f"{'holds' if rho > 0 else 'does not hold'} in this run")
layers.sort_values("per tensor / per channel", ascending=False).round(4).head(10)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Try it: one channel at any bit width
#
# The slider redraws channel `channel` of `layer`: its weights, their reconstructions $\hat{w}$ and
# (up to 6 bits) the grid $s_c q$. The text under it comes from `channel_quant_stats`, which the next
# cell calls directly:

# %%
print(describe_quant(channel_quant_stats(W[channel], bits)))

# %% tags=["widget"] slideshow={"slide_type": "subslide"}
QuantExplorer(W[channel], bits, title=f"{layer}[{channel}]")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Bytes per round: the paper's Table 1
#
# Each of the K clients uploads its whole model every round. At b bits a tensor with N values in C
# channels costs N b bits of codes plus C 32-bit scales. `traffic_table` (also printed by
# `python -m fl_lib traffic`) counts it two ways: `encoded` is fl_lib's bit-packed upload, the bytes the
# experiments log; `torch_save` is the size of a `torch.save` file of the float32 state dict, or of the
# integer codes (int8/int16) plus float32 scales. The paper does not say how it counted; the cell after
# the table finds which of these counts, in MB or in MiB, lies closest to its numbers.

# %%
rows1 = traffic_table(model, num_clients, bits=(32, 16, 8, 4, 2), num_classes=data.num_classes)
table1 = pd.DataFrame(rows1)
table1[["label", "encoded_mb", "encoded_mib", "encoded_reduction_pct", "torch_save_mb", "torch_save_mib",
        "torch_save_reduction_pct", "paper_mib"]].round(3)

# %%
if PAPER_MIB and model == "squeezenet1_0" and num_clients == 10 and data.num_classes == 10:
    by_bits = table1.set_index("bits")
    fp32, int16 = by_bits.loc[32], by_bits.loc[16]
    counts = {"torch.save, MiB": "torch_save_mib", "torch.save, MB": "torch_save_mb",
              "encoded, MiB": "encoded_mib", "encoded, MB": "encoded_mb"}
    off = {name: [100 * (by_bits.loc[b, col] / PAPER_MIB[b] - 1) for b in (32, 16)] for name, col in counts.items()}
    ranked = sorted(off, key=lambda name: max(abs(d) for d in off[name]))
    closest, runner_up = ranked[0], ranked[1]
    display(Markdown(
        f"The paper reports {PAPER_MIB[32]} MB (FP32) and {PAPER_MIB[16]} MB (INT16) per round, "
        f"{100 * (1 - PAPER_MIB[16] / PAPER_MIB[32]):.1f}% less, without saying how it counted. Of our four counts "
        f"the closest to it is **{closest}**: {by_bits.loc[32, counts[closest]]:.2f} and "
        f"{by_bits.loc[16, counts[closest]]:.2f}, {off[closest][0]:+.2f}% and {off[closest][1]:+.2f}% from the paper's; "
        f"the next closest, {runner_up}, is {off[runner_up][0]:+.2f}% and {off[runner_up][1]:+.2f}% off. That is a "
        f"reading of the paper's unit that fits these sizes, not one the paper states. Bit-packed as fl_lib sends "
        f"them, INT16 saves {int16.encoded_reduction_pct:.1f}%, INT8 {by_bits.loc[8].encoded_reduction_pct:.1f}% and "
        f"INT4 {by_bits.loc[4].encoded_reduction_pct:.1f}%."))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# Each exercise asks for a prediction first. Write it down, change the variable at the top of the code cell,
# run the cell, and only then open the answer: the cell computes it from the model above, nothing in it is
# written in advance. Nothing is trained: each cell quantizes or counts in a few seconds.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 1: quantized weights or a quantized update?
#
# A client can send its trained weights $w$ quantized, or its update $\Delta = w - w_t$ quantized (lesson 05's
# `upload="delta"`; the server adds it to $w_t$, which it holds). Either way the model the server rebuilds is off
# by the quantization error of what was sent, $\|\hat{w} - w\|$ or $\|\hat{\Delta} - \Delta\|$, in the same units.
# **Predict:** at `bits_try` bits, which of the two errors is smaller, and by roughly what factor? Change
# `bits_try` and run; the narrowest widths are the interesting ones.

# %%
from fl_lib.core.quant import fake_quantize
from fl_lib.study.exercises import answer, holds

bits_try = 2  # change me: bit width of both uploads, 2..16


def error_norm(state, b):
    """||Q(x) - x|| over every float tensor of `state`: the error the server's rebuilt model carries."""
    return float(sum(((fake_quantize(v.float(), b) - v.float()) ** 2).sum() for v in state.values()) ** 0.5)


def norm(state):
    return float(sum((v.float() ** 2).sum() for v in state.values()) ** 0.5)


sent_weights = {k: trained[k] for k in update}  # the same float tensors as the update
if local_epochs > 0:
    err_w, err_d = error_norm(sent_weights, bits_try), error_norm(update, bits_try)
    display(answer(
        f"At {bits_try} bits, per channel: quantizing the trained weights leaves an error of norm {err_w:.3g} in "
        f"the model the server rebuilds, quantizing the update leaves {err_d:.3g}, "
        f"{err_w / err_d:.3g} times less. The update loses less: {holds(err_d < err_w)} in this run.\n\n"
        f"Why: the error of a channel is at most half its grid step, which is proportional to the channel's "
        f"largest value. The update's norm is {norm(update):.3g} against the weights' {norm(sent_weights):.3g}, "
        f"{norm(sent_weights) / norm(update):.3g} times smaller; its error is "
        f"{err_w / err_d:.3g} times smaller."))
else:
    display(answer("local_epochs = 0: the update is zero, so there is nothing to quantize; set local_epochs above 0."))

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 2: half the bits, half the bytes?
#
# **Predict:** at `bits_try` bits, is the encoded upload of one round exactly in proportion to the bit width, as a
# fraction of FP32's upload, or a little more, or a little less? Change `bits_try` and run.

# %%
bits_try = 2  # change me: bit width of the upload, 2..16
sized = pd.DataFrame(traffic_table(model, num_clients, bits=(32, bits_try), num_classes=data.num_classes)).set_index("bits")
ratio = sized.loc[bits_try, "encoded_mb"] / sized.loc[32, "encoded_mb"]
num_values = sum(v.numel() for v in init.values() if v.is_floating_point())
codes_mb = num_clients * num_values * bits_try / 8 / 1e6  # the codes alone, N b bits per client
display(answer(
    f"{model}, {num_clients} clients: {sized.loc[bits_try, 'encoded_mb']:.3f} MB per round at {bits_try} bits against "
    f"{sized.loc[32, 'encoded_mb']:.3f} MB at FP32, a ratio of {ratio:.4f}; in proportion to the bit width it would be "
    f"{bits_try / 32:.4f}. Exactly proportional: {holds(abs(ratio - bits_try / 32) < 1e-9)}; a little more: "
    f"{holds(ratio > bits_try / 32)} in this run.\n\n"
    f"The codes alone are {codes_mb:.3f} MB; the other {sized.loc[bits_try, 'encoded_mb'] - codes_mb:.3f} MB are what "
    f"every width sends besides the codes (one float32 scale per channel, integer buffers, the codec's framing)."))
