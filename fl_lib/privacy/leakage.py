"""Gradient leakage: the images a server can rebuild from one client's upload, as the codec delivers it.

The attacker is the server. It knows the global model w it broadcast and sees exactly
what it receives: the client's upload, maybe noised by the client, then encoded and
decoded by `fl_lib.codec` at the run's bit width. Two attacks, each fed the inputs of
its reference code:

- "dlg": Zhu et al. 2019, *Deep Leakage from Gradients*, on a FedSGD upload (the
  gradient g of the batch loss). As in DLG's and iDLG's code (github.com/mit-han-lab/dlg,
  github.com/PatrickZH/Improved-Deep-Leakage-from-Gradients) the network sees pixels in
  [0, 1] (`ToTensor()`, no mean/std normalization) and the dummy image starts from a
  standard normal draw (`torch.randn`). The label comes first from the last layer's
  gradient (iDLG, Zhao et al. 2020: with non-negative features, only the true class's
  weight row has a negative gradient sum); then dummy images x' minimize
      D(x') = sum_layers || grad_w L(f(x'), y') - g ||^2
  with L-BFGS (lr 1, 20 inner iterations per step, history 100, as DLG's code).
- "cosine": Geiping et al. 2020, *Inverting Gradients*, on a FedAvg upload made of
  `local_steps` plain SGD steps: the attacker takes g = -(w_after - w_before) / (lr E)
  as a gradient direction and minimizes
      1 - <grad_w L(f(x'), y'), g> / (||grad_w L|| ||g||) + tv * TV(x')
  with Adam (lr 0.1) on the signed gradient, x' kept in [0, 1]. As in their code
  (github.com/JonasGeiping/invertinggradients) the network sees (x - mean) / std with the
  dataset's mean and std, and x' starts from a standard normal draw in that normalized
  space. Two simplifications of their code: TV is taken on pixels in [0, 1] rather
  than on normalized inputs, and the FedAvg delta is read as one gradient direction
  rather than unrolled through E simulated local steps (their `FedAvgReconstructor`,
  which costs E double-backward passes per attack step).

Both run to convergence, not for a fixed number of steps: an attack stops once its best
loss has fallen by less than a fraction `tol` over the last `window` steps (`Plateau`), or
at the `steps` cap. The cosine attack decays its step x0.1 at each plateau, three times
(0.1 -> 1e-4, Geiping et al.'s three x0.1 decays, there at 3/8, 5/8, 7/8 of a fixed
budget), and stops at the fourth. Each result records how many steps ran, why it stopped
and its final gradient-matching loss (D for dlg, 1 - cos for cosine, at the returned image).

For B > 1 the labels (a multiset) come from the last layer's bias gradient,
dL/db_c = mean_j p_jc - n_c / B, with mean_j p_jc estimated on the dummy images.
Quality is PSNR against the original in [0, 1], each reconstruction matched to its
original by the assignment of least total MSE (the order of a batch is not recoverable).
SSIM is left out: no well-kept implementation (torchmetrics, scikit-image) is installed.
"""
from __future__ import annotations

import collections
import copy
import functools
import json
import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core import codec
from ..core.errors import ConfigError
from ..core.quant import check_bits
from ..core.rng import Stream, seed_for, torch_generator

MODELS = ("lenet", "cifar_cnn")
METHODS = ("dlg", "cosine")
DEFAULT_METHOD = {"lenet": "dlg", "cifar_cnn": "cosine"}  # L-BFGS needs a smooth net; ReLU nets get the cosine loss
# Caps only: an attack stops earlier on a plateau. dlg: 10x the old fixed 100, over 3x DLG's and iDLG's 300
# iterations (on CIFAR-10 at B = 1 it plateaus within ~150); cosine: the 24,000 of Geiping et al.'s longer runs.
DEFAULT_STEPS = {"dlg": 1000, "cosine": 24_000}
# (window, tol): stalled once the best loss fell by less than tol (relative) over window steps. dlg's D halves every
# ~10 L-BFGS steps until it stalls at float32's floor; signed Adam's loss jitters, so cosine gets a longer window.
PLATEAU = {"dlg": (20, 0.01), "cosine": (500, 0.001)}
LR_DECAYS = 3  # the cosine attack's x0.1 step decays, one per plateau (Geiping et al. decay three times)
INPUTS = {"dlg": "pixels", "cosine": "normalized"}  # what the network sees in each reference: x, or (x - mean) / std
LOCAL_STEPS = {"dlg": 1, "cosine": 5}  # dlg inverts one gradient (FedSGD); cosine a FedAvg delta of E steps
CLIENT_LR = 0.01  # the victim's plain-SGD step size for the FedAvg delta
TV_WEIGHT = 0.1  # total-variation weight of the cosine attack (Geiping et al.'s default; best of 0.01-0.3 here)
COSINE_LR = 0.1  # Adam step on x' in [0, 1] (Geiping et al. use 0.1)
_KEY_MODEL, _KEY_DATA, _KEY_DUMMY = 0x6C65616B, 0x64617461, 0x64756D79  # seed_for keys, one per purpose
VERSION = 2  # 2: runs to a plateau, reference inputs, randn init (1: fixed 100 / 2,000 steps, normalized, uniform init)


def defaults() -> dict:
    """Everything besides the call's arguments that shapes an attack's result: part of any cache key of attacks."""
    return dict(version=VERSION, steps=DEFAULT_STEPS, plateau=PLATEAU, lr_decays=LR_DECAYS, inputs=INPUTS,
                init="randn", local_steps=LOCAL_STEPS, client_lr=CLIENT_LR, tv=TV_WEIGHT, cosine_lr=COSINE_LR)


class LeNet(nn.Module):
    """The LeNet-style network of DLG (Zhu et al. 2019, github.com/mit-han-lab/dlg, models/vision.py).

    Three 5x5 convs of 12 channels (strides 2, 2, 1) with sigmoid activations, which
    DLG uses because the attack needs a twice-differentiable, non-vanishing gradient,
    then one linear layer. Weights and biases are uniform(-0.5, 0.5), DLG's init.
    """

    def __init__(self, num_classes=10, in_channels=3, image_size=32, generator=None):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 12, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=1), nn.Sigmoid())
        side = (image_size + 3) // 4  # two stride-2 convs with padding 2 halve the side twice, rounding up
        self.fc = nn.Linear(12 * side * side, num_classes)
        for p in self.parameters():
            nn.init.uniform_(p, -0.5, 0.5, generator=generator)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


@dataclass
class AttackResult:
    """One attack: the reconstruction (matched to the originals), its quality, and what it saw."""

    reconstruction: torch.Tensor  # (B, C, H, W) in [0, 1]; row i is matched to original image i
    psnr: float  # dB, mean of psnr_per_image
    label_correct: bool  # the recovered labels equal the true ones (as multisets when B > 1)
    history: list  # attack loss at each step
    match_loss: float  # gradient-matching loss at the returned images: D for dlg, 1 - cos for cosine
    steps_run: int  # attack steps taken, at most settings["steps"] (the cap)
    stop: str  # why it stopped: "plateau", "cap", "exact" (D = 0) or "diverged" (a non-finite loss)
    labels: torch.Tensor  # recovered labels, (B,)
    psnr_per_image: list
    observed: dict  # the upload as the server decoded it: what the attack inverted
    upload_bytes: int  # len() of the encoded upload
    upload_rms: float  # root mean square of the clean upload, to compare `noise` against
    seconds: float
    settings: dict = field(default_factory=dict)


# -- checks ---------------------------------------------------------------
def _fail(name, value, allowed):
    raise ConfigError(f"{name}={value!r} is not allowed; use {allowed}")


def _int_in(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        _fail(name, value, f"an int in [{lo}, {hi}]")
    return int(value)


def _float_in(name, value, lo, hi, lo_open=False):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < lo or value > hi or (lo_open and value == lo):
        _fail(name, value, f"a number in {'(' if lo_open else '['}{lo}, {hi}]")
    return float(value)


def _check_bits(bits):
    return check_bits(bits)  # "bits=3 is not allowed; use an int in 2..16 or 32"


def _choice(name, value, choices):
    if value not in choices:
        _fail(name, value, f"one of {', '.join(choices)}")
    return value


# -- victim ---------------------------------------------------------------
def build_victim(model="lenet", num_classes=10, in_channels=3, image_size=32, seed=0):
    """The attacked network at its broadcast weights, deterministic given seed (torch's global RNG untouched)."""
    _choice("model", model, MODELS)
    if model == "lenet":
        g = torch.Generator().manual_seed(seed_for(seed, _KEY_MODEL))
        return LeNet(num_classes, in_channels, image_size, generator=g)
    from ..core.models import build_model
    with torch.random.fork_rng(devices=[]):  # build_model draws from the global generator
        torch.manual_seed(seed_for(seed, _KEY_MODEL))
        return build_model(model, num_classes, in_channels, image_size)


def input_stats(method, mean, std, channels):
    """(m, s), each (1, C, 1, 1): the network sees (x - m) / s for x in [0, 1], as in `method`'s reference code.

    dlg: m = 0, s = 1 (pixels in [0, 1], DLG's and iDLG's ToTensor()); cosine: the dataset's mean
    and std (Geiping et al. normalize), or 0 and 1 when mean or std is None.
    """
    if INPUTS[_choice("method", method, METHODS)] == "pixels" or mean is None or std is None:
        return torch.zeros(1, channels, 1, 1), torch.ones(1, channels, 1, 1)
    return (torch.as_tensor(mean, dtype=torch.float32).reshape(1, channels, 1, 1),
            torch.as_tensor(std, dtype=torch.float32).reshape(1, channels, 1, 1))


def _param_grads(model, x, y, create_graph=False):
    """Gradient of the mean cross-entropy over (x, y) with respect to every parameter, in order."""
    loss = F.cross_entropy(model(x), y)
    return torch.autograd.grad(loss, list(model.parameters()), create_graph=create_graph)


def client_upload(model, x, y, local_steps=1, lr=CLIENT_LR):
    """What the client sends: its gradient at w (local_steps = 1, FedSGD), else w_after - w_before of plain SGD."""
    names = [n for n, _ in model.named_parameters()]
    if local_steps == 1:
        return {n: g.detach() for n, g in zip(names, _param_grads(model, x, y))}
    local = copy.deepcopy(model)  # once per attack: the broadcast model itself must stay as sent
    for _ in range(local_steps):
        grads = _param_grads(local, x, y)
        with torch.no_grad():
            for p, g in zip(local.parameters(), grads):
                p -= lr * g
    return {n: (p1.detach() - p0.detach()) for n, p0, p1 in zip(names, model.parameters(), local.parameters())}


def server_view(upload, bits, noise=0.0, seed=0):
    """The upload as the server decodes it: client-side Gaussian noise (std `noise`), encode at `bits`, decode.

    Returns (decoded dict, blob). The noise comes from torch_generator(seed, 0, 0, DP_NOISE),
    drawn tensor by tensor in the upload's order.
    """
    if noise > 0:
        g = torch_generator(seed, 0, 0, Stream.DP_NOISE)
        upload = {k: v + noise * torch.randn(v.shape, generator=g) for k, v in upload.items()}
    blob = codec.encode(upload, bits=bits)
    return codec.decode(blob), blob


# -- labels (iDLG, and counts for B > 1) ------------------------------------
def _last_layer(model):
    """Names of the last linear layer's weight and bias."""
    names = [n for n, p in model.named_parameters()]
    shapes = dict((n, p.shape) for n, p in model.named_parameters())
    w = [n for n in names if len(shapes[n]) == 2][-1]
    b = names[names.index(w) + 1] if names.index(w) + 1 < len(names) else None
    return w, b


def recover_labels(model, grad, batch_size, probe):
    """Labels from the last layer's gradient `grad` (a dict in gradient sign); probe: dummy inputs for mean p."""
    w_name, b_name = _last_layer(model)
    if batch_size == 1 or b_name is None:
        # iDLG: dL/dW_c = (p_c - y_c) h with h >= 0 (sigmoid/ReLU features): only the label's row sums below 0.
        order = grad[w_name].sum(1).argsort()
        return order[:batch_size].sort().values
    # dL/db_c = mean_j p_jc - n_c / B, so n_c = B (mean p_c - dL/db_c); round to B labels, largest remainder first.
    with torch.no_grad():
        p = F.softmax(model(probe), 1).mean(0)
    est = (batch_size * (p - grad[b_name])).clamp_min(0).double()
    counts = est.floor()
    rest = est - counts
    while counts.sum() < batch_size:
        c = int(rest.argmax())
        counts[c] += 1
        rest[c] = -1
    while counts.sum() > batch_size:
        c = int(torch.where(counts > 0, rest, torch.full_like(rest, 2)).argmin())
        counts[c] -= 1
        rest[c] = 2
    return torch.repeat_interleave(torch.arange(len(counts)), counts.long())


# -- the attacks ---------------------------------------------------------------
def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def total_variation(x):
    """Mean absolute difference of neighbouring pixels (Geiping et al.'s TV)."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


class Plateau:
    """Has a minimization stalled? Its best loss fell by less than a fraction `tol` over the last `window` steps."""

    def __init__(self, window, tol):
        self.window, self.tol = window, tol
        self.reset()

    def reset(self):
        """Forget the past: the next `window` steps are judged on their own (after a step-size decay)."""
        self.bests = collections.deque(maxlen=self.window + 1)  # best loss so far, after each of the last steps

    def update(self, loss) -> bool:
        """Record one step's loss; True once stalled."""
        self.bests.append(min(loss, self.bests[-1]) if self.bests else loss)
        # stalled when best_t >= (1 - tol) best_{t - window}; ">=" so a loss stuck at 0 counts as stalled too
        return len(self.bests) > self.window and self.bests[-1] >= (1 - self.tol) * self.bests[0]


def _dlg(model, norm, target, labels, x, steps, window, tol):
    """DLG: L-BFGS on the squared gradient distance until a plateau; returns (best x, loss per step, stop, best D).

    DLG's own L-BFGS has no line search; a strong-Wolfe line search reached a 10x lower
    gradient distance in the same time on CIFAR-10 (measured) and does not blow up.
    """
    target = [t.detach() for t in target]
    opt = torch.optim.LBFGS([x], lr=1, max_iter=20, history_size=100, line_search_fn="strong_wolfe")
    best = {"loss": math.inf, "x": x.detach().clone()}  # the lowest distance at any point L-BFGS evaluated

    def closure():
        opt.zero_grad()
        grads = _param_grads(model, norm(x), labels, create_graph=True)
        loss = sum(((g - t) ** 2).sum() for g, t in zip(grads, target))
        if float(loss.detach()) < best["loss"]:
            best["loss"], best["x"] = float(loss.detach()), x.detach().clone()
        loss.backward()
        return loss

    history, plateau, stop = [], Plateau(window, tol), "cap"
    for _ in range(steps):
        loss = float(opt.step(closure).detach())  # the distance at the start of this step
        history.append(loss)
        if not math.isfinite(loss):
            stop = "diverged"
            break
        if best["loss"] == 0:
            stop = "exact"
            break
        if plateau.update(best["loss"]):
            stop = "plateau"
            break
    return best["x"], history, stop, best["loss"]


def _cosine_distance(model, norm, t, labels, x, create_graph=False):
    """1 - cos between the gradient x would produce and the flat target direction t."""
    g = _flat(_param_grads(model, norm(x), labels, create_graph=create_graph))
    return 1 - torch.dot(g, t) / (g.norm() * t.norm() + 1e-12)


def _cosine(model, norm, target, labels, x, steps, tv, lr, window, tol):
    """Inverting Gradients: Adam on signed gradients of 1 - cos + tv TV, x in [0, 1], step x0.1 at each plateau.

    Returns (last x, loss per step, stop, 1 - cos at the last x).
    """
    t = _flat(target).detach()
    opt = torch.optim.Adam([x], lr=lr)
    history, plateau, decays, stop = [], Plateau(window, tol), 0, "cap"
    for _ in range(steps):
        opt.zero_grad()
        loss = _cosine_distance(model, norm, t, labels, x, create_graph=True) + tv * total_variation(x)
        loss.backward()
        x.grad.sign_()
        opt.step()
        with torch.no_grad():
            x.clamp_(0, 1)
        history.append(float(loss.detach()))
        if not math.isfinite(history[-1]):
            stop = "diverged"
            break
        if plateau.update(history[-1]):
            if decays == LR_DECAYS:
                stop = "plateau"
                break
            decays += 1
            for group in opt.param_groups:
                group["lr"] *= 0.1
            plateau.reset()
    # The last iterate, not the lowest loss (as Geiping et al.): signed Adam's loss jitters,
    # and after the decays the step is 1e-3 of lr, so the last iterate is the settled one.
    best = x.detach().clone()
    return best, history, stop, float(_cosine_distance(model, norm, t, labels, best).detach())


def psnr(a, b):
    """Peak signal-to-noise ratio in dB of images in [0, 1] (capped at 100 dB for identical images)."""
    mse = float(((a.double() - b.double()) ** 2).mean())
    return 100.0 if mse < 1e-10 else 10 * math.log10(1 / mse)


def _match(recon, images):
    """Reorder recon so row i is the reconstruction closest (least total MSE) to images[i]."""
    if len(images) == 1:
        return recon
    from scipy.optimize import linear_sum_assignment
    cost = ((images[:, None] - recon[None]) ** 2).flatten(2).mean(2).double().numpy()
    _, cols = linear_sum_assignment(cost)
    return recon[torch.as_tensor(cols)]


def _on_one_thread(fn):
    """`fn` with torch on one thread. An attack is a long chain of small steps that a second thread only slows
    (1.6-3.5x on this project's 2-core VM), and on one thread its floats do not depend on the caller's threads."""
    @functools.wraps(fn)
    def on_one_thread(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return on_one_thread


@_on_one_thread
def attack(images, labels, model="lenet", bits=32, noise=0.0, steps=None, seed=0, method=None,
           local_steps=None, lr=CLIENT_LR, tv=TV_WEIGHT, num_classes=10, mean=None, std=None, window=None,
           tol=None):
    """Invert one client's upload of a batch (images in [0, 1], (B, C, H, W)) as the server decodes it.

    model: "lenet" (DLG's network) or "cifar_cnn"; method: "dlg" (L-BFGS on the L2 gradient
    distance, FedSGD gradient) or "cosine" (Geiping et al., FedAvg delta of local_steps SGD
    steps at lr); default per model. noise: std of Gaussian noise the client adds to its
    upload before encoding. steps: a cap; the attack stops earlier once its best loss fell by
    less than a fraction tol over the last window steps (defaults per method: PLATEAU).
    mean/std: the dataset's per-channel statistics, used by the methods whose reference
    normalizes its inputs (cosine; dlg sees pixels in [0, 1]: see `input_stats`).
    Deterministic given seed; it runs on one torch thread, whatever the caller's.
    """
    method = _choice("method", DEFAULT_METHOD.get(model, "dlg") if method is None else method, METHODS)
    _choice("model", model, MODELS)
    bits = _check_bits(bits)
    noise = _float_in("noise", noise, 0, 1e6)
    steps = _int_in("steps", DEFAULT_STEPS[method] if steps is None else steps, 1, 1_000_000)
    local_steps = _int_in("local_steps", LOCAL_STEPS[method] if local_steps is None else local_steps, 1, 1000)
    seed = _int_in("seed", seed, 0, 2**63 - 1)
    lr = _float_in("lr", lr, 0, 100, lo_open=True)
    tv = _float_in("tv", tv, 0, 100)
    window = _int_in("window", PLATEAU[method][0] if window is None else window, 1, 1_000_000)
    tol = _float_in("tol", PLATEAU[method][1] if tol is None else tol, 0, 0.5)
    if method == "dlg" and local_steps != 1:
        _fail("local_steps", local_steps, "1 with method=dlg (it inverts one gradient; use method=cosine for a FedAvg delta)")
    images = torch.as_tensor(images)
    images = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    labels = torch.as_tensor(labels).long()
    if images.ndim != 4 or len(labels) != len(images) or len(images) == 0:
        _fail("images", tuple(images.shape), "a (B, C, H, W) batch with B labels, B >= 1")
    batch, channels, height, width = images.shape
    if height != width:
        _fail("images", tuple(images.shape), "square images")

    start = time.perf_counter()
    net = build_victim(model, num_classes, channels, height, seed)
    m, s = input_stats(method, mean, std, channels)

    def norm(v):
        return (v - m) / s  # exactly v for dlg (m = 0, s = 1)

    upload = client_upload(net, norm(images), labels, local_steps, lr)
    observed, blob = server_view(upload, bits, noise, seed)
    sign = 1.0 if local_steps == 1 else -1.0 / (lr * local_steps)  # a delta points against the gradient
    target = [sign * observed[n] for n, _ in net.named_parameters()]

    # The dummy starts from a standard normal draw in the network's input space (torch.randn, as in DLG's,
    # iDLG's and Geiping et al.'s code), mapped to pixels; one draw per seed, the same for every setting.
    g = torch.Generator().manual_seed(seed_for(seed, _KEY_DUMMY))
    x = (m + s * torch.randn(images.shape, generator=g)).requires_grad_()
    found = recover_labels(net, dict(zip([n for n, _ in net.named_parameters()], target)), batch, norm(x.detach()))
    if method == "dlg":
        best, history, stop, match_loss = _dlg(net, norm, target, found, x, steps, window, tol)
    else:
        best, history, stop, match_loss = _cosine(net, norm, target, found, x, steps, tv, COSINE_LR, window, tol)
    recon = _match(best.clamp(0, 1), images)
    per_image = [psnr(r, o) for r, o in zip(recon, images)]
    upload_rms = float(_flat(list(upload.values())).pow(2).mean().sqrt())
    return AttackResult(
        reconstruction=recon, psnr=float(np.mean(per_image)),
        label_correct=bool(torch.equal(found.sort().values, labels.sort().values)),
        history=history, match_loss=match_loss, steps_run=len(history), stop=stop, labels=found,
        psnr_per_image=per_image, observed=observed,
        upload_bytes=len(blob), upload_rms=upload_rms, seconds=time.perf_counter() - start,
        settings=dict(model=model, method=method, bits=bits, noise=noise, steps=steps, window=window, tol=tol,
                      local_steps=local_steps, lr=lr, tv=tv, seed=seed, batch_size=batch,
                      inputs="pixels" if bool((m == 0).all() and (s == 1).all()) else "normalized"))


# -- grid, figures and CLI ---------------------------------------------------
def pick_batch(ds, batch_size, seed=0):
    """batch_size training images of a Dataset in [0, 1] and their labels, chosen by seed (nested across B)."""
    n = len(ds.x_train)
    _int_in("batch_size", batch_size, 1, min(64, n))
    idx = torch.from_numpy(np.random.default_rng(seed_for(seed, _KEY_DATA)).permutation(n)[:batch_size])
    return ds.x_train[idx].float().div(255), ds.y_train[idx]


def run_grid(dataset, batch_sizes=(1,), bits=(32, 16, 8, 4), noises=(0.0,), model="lenet", steps=None,
             seed=0, method=None, out=None, log=None, window=None, tol=None):
    """Attack every (batch size, bits, noise) setting on `dataset` (a name, .npz path or Dataset); rows of dicts.

    steps is each attack's cap; window and tol its plateau rule (see `attack`).

    With `out`, writes leakage_<model>_B<b>.png per batch size (originals, then one column per
    setting), leakage_rows.json, reconstructions.npz (uint8 images keyed like the rows) and
    leakage_histories.json (each attack's loss per step, under the same keys).
    """
    from ..core.data import Dataset, load_dataset

    _choice("model", model, MODELS)
    for b in bits:
        _check_bits(b)
    for s in noises:
        _float_in("noise", s, 0, 1e6)
    for b in batch_sizes:
        _int_in("batch_size", b, 1, 64)
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    rows, images, histories = [], {}, {}
    for b in batch_sizes:
        x, y = pick_batch(ds, b, seed)
        shown = [("original", x)]
        for nbits in bits:
            for s in noises:
                r = attack(x, y, model, nbits, s, steps, seed, method, num_classes=ds.num_classes,
                           mean=ds.mean, std=ds.std, window=window, tol=tol)
                row = {"bits": nbits, "batch_size": b, "noise": s, "model": model, "method": r.settings["method"],
                       "inputs": r.settings["inputs"], "steps": r.settings["steps"], "steps_run": r.steps_run,
                       "stop": r.stop, "window": r.settings["window"], "tol": r.settings["tol"],
                       "local_steps": r.settings["local_steps"],
                       "psnr": round(r.psnr, 2), "psnr_min": round(min(r.psnr_per_image), 2),
                       "match_loss": _json_number(r.match_loss, 4),
                       "label_correct": r.label_correct, "upload_bytes": r.upload_bytes,
                       "upload_rms": float(f"{r.upload_rms:.4g}"), "seconds": round(r.seconds, 1), "seed": seed}
                rows.append(row)
                key = f"{model}_B{b}_bits{nbits}_noise{s:g}"
                images[key], histories[key] = r.reconstruction, [_json_number(v) for v in r.history]
                shown.append((f"{'FP32' if nbits == 32 else f'INT{nbits}'}"
                              f"{f' noise {s:g}' if s else ''}\n{r.psnr:.1f} dB", r.reconstruction))
                if log:
                    log(format_rows([row], header=not rows[:-1]))
        if out:
            images[f"{model}_B{b}_original"] = x
            save_image_grid(shown, Path(out) / f"leakage_{model}_B{b}.png")
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "leakage_rows.json").write_text(json.dumps(rows, indent=2) + "\n")
        (out / "leakage_histories.json").write_text(json.dumps(histories) + "\n")
        np.savez_compressed(out / "reconstructions.npz", **{k: (v.clamp(0, 1) * 255).round().byte().numpy()
                                                           for k, v in images.items()})
    return rows


def _json_number(v, digits=6):
    """v rounded to `digits` significant digits; None if not finite (results are strict JSON)."""
    return float(f"{v:.{digits}g}") if math.isfinite(v) else None


def save_image_grid(columns, path):
    """One column per (title, (B, C, H, W) images in [0, 1]), one row per image; saved as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no backend state touched in a notebook

    batch = len(columns[0][1])
    fig = Figure(figsize=(1.8 * len(columns), 1.8 * batch + 0.6), layout="constrained")  # titles of 10 pt fit
    axes = fig.subplots(batch, len(columns), squeeze=False)
    for j, (title, imgs) in enumerate(columns):
        for i in range(batch):
            ax = axes[i][j]
            img = imgs[i].clamp(0, 1).permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


COLUMNS = ("model", "method", "batch_size", "bits", "noise", "psnr", "psnr_min", "match_loss", "steps_run", "stop",
           "label_correct", "upload_bytes", "seconds")


def format_rows(rows, header=True):
    """The rows as a fixed-width table."""
    widths = {c: max(len(c), 9) for c in COLUMNS}
    lines = ["  ".join(c.rjust(widths[c]) for c in COLUMNS)] if header else []
    for r in rows:
        lines.append("  ".join(str(r[c]).rjust(widths[c]) for c in COLUMNS))
    return "\n".join(lines)


def add_arguments(p) -> None:
    """Flags of `python -m fl_lib leakage`."""
    p.add_argument("--dataset", default="cifar10", help="dataset name or .npz path (default cifar10)")
    p.add_argument("--batch-size", type=int, nargs="+", default=[1], help="victim batch sizes B (default 1)")
    p.add_argument("--bits", type=int, nargs="+", default=[32, 16, 8, 4], help="upload bit widths, 2..16 or 32")
    p.add_argument("--noise", type=float, nargs="+", default=[0.0],
                   help="std of Gaussian noise the client adds to its upload before encoding (default 0)")
    p.add_argument("--model", default="lenet", help=f"victim network, one of {', '.join(MODELS)} (default lenet)")
    p.add_argument("--method", default=None,
                   help="dlg (L-BFGS, FedSGD gradient) or cosine (Geiping et al., FedAvg delta); "
                        "default dlg for lenet, cosine for cifar_cnn")
    p.add_argument("--steps", type=int, default=None,
                   help=f"cap on attack steps; an attack stops earlier on a plateau (default cap "
                        f"{DEFAULT_STEPS['dlg']:,} L-BFGS steps for dlg, {DEFAULT_STEPS['cosine']:,} Adam steps "
                        f"for cosine)")
    p.add_argument("--window", type=int, default=None,
                   help=f"plateau rule: stop once the best loss fell by less than --tol over this many steps "
                        f"(default {PLATEAU['dlg'][0]} for dlg, {PLATEAU['cosine'][0]} for cosine)")
    p.add_argument("--tol", type=float, default=None,
                   help=f"plateau rule: the relative fall that counts as progress, in [0, 0.5] (default "
                        f"{PLATEAU['dlg'][1]:g} for dlg, {PLATEAU['cosine'][1]:g} for cosine; the cosine attack "
                        f"decays its step x0.1 at each of its first {LR_DECAYS} plateaus)")
    p.add_argument("--seed", type=int, default=0, help="fixes the victim model, the images, the noise and the init")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", default="figures/leakage", help="folder for PNGs and results (default figures/leakage)")


def main(args) -> int:
    """Run the grid the flags describe; print a table (or JSON) and write figures into --out."""
    import sys

    _choice("model", args.model, MODELS)
    if args.method is not None:
        _choice("method", args.method, METHODS)
    if args.steps is not None:
        _int_in("steps", args.steps, 1, 1_000_000)
    if args.window is not None:
        _int_in("window", args.window, 1, 1_000_000)
    if args.tol is not None:
        _float_in("tol", args.tol, 0, 0.5)
    _int_in("seed", args.seed, 0, 2**63 - 1)
    log = None if args.json else (lambda text: print(text, flush=True))
    rows = run_grid(args.dataset, tuple(args.batch_size), tuple(args.bits), tuple(args.noise), args.model,
                    args.steps, args.seed, args.method, args.out, log, args.window, args.tol)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"figures and results in {args.out}", file=sys.stderr)
    return 0
