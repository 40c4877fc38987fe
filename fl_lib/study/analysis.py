"""Numbers that describe a partition or a quantized channel: what lessons 02 and 04 print and the widgets redraw."""
from __future__ import annotations

import math

import numpy as np

from ..core.partition import label_counts
from ..core.quant import dequantize, q_max, quantize, relative_error


# -- partitions (lesson 02) -----------------------------------------------------
def partition_stats(parts, labels, num_classes=None):
    """Per client: samples, classes held, and the total-variation distance of its label mix from the global mix.

    TV_k = 1/2 sum_c |n_kc / n_k - n_c / n|: 0 when client k's labels are mixed like the whole
    training set; a client holding only class c gets 1 - n_c / n (0.9 for 10 balanced classes).
    Returns a pandas DataFrame with columns client, samples, classes, tv_distance.
    """
    import pandas as pd

    counts = label_counts(parts, labels, num_classes)
    sizes = counts.sum(1)
    glob = counts.sum(0) / counts.sum()
    mix = counts / np.maximum(sizes, 1)[:, None]
    return pd.DataFrame({"client": np.arange(len(parts)), "samples": sizes,
                         "classes": (counts > 0).sum(1), "tv_distance": 0.5 * np.abs(mix - glob).sum(1)})


def summarize_stats(stats) -> dict:
    """The few numbers worth printing about a partition."""
    return {"clients": len(stats), "samples_min": int(stats.samples.min()), "samples_max": int(stats.samples.max()),
            "classes_per_client": float(stats.classes.mean()), "tv_mean": float(stats.tv_distance.mean()),
            "tv_max": float(stats.tv_distance.max())}


def describe_stats(stats) -> str:
    """summarize_stats as one sentence."""
    s = summarize_stats(stats)
    return (f"{s['clients']} clients, {s['samples_min']}-{s['samples_max']} samples each, "
            f"{s['classes_per_client']:.1f} classes per client on average; total-variation distance "
            f"from the global label mix: mean {s['tv_mean']:.3f}, max {s['tv_max']:.3f}")


# -- quantization (lesson 04) -----------------------------------------------------
def channel_quant_stats(w, bits: int) -> dict:
    """Equations (1)-(3) on one channel w (a 1-D tensor): scale, codes, reconstruction, error and bytes."""
    w = w.detach().float().reshape(1, -1)  # one row = one channel
    qt = quantize(w, bits)
    w_hat = dequantize(qt)
    err = (w_hat - w).abs()
    n = w.numel()
    return {"bits": bits, "q_max": q_max(bits), "scale": float(qt.scale[0]), "codes": qt.q.reshape(-1),
            "w_hat": w_hat.reshape(-1), "max_abs_error": float(err.max()),
            "relative_error": float(relative_error(w, w_hat)),
            "bytes": math.ceil(n * bits / 8) + 4, "bytes_fp32": 4 * n}  # + one float32 scale


def describe_quant(s) -> str:
    """channel_quant_stats as one sentence."""
    return (f"{s['bits']} bits: q_max = {s['q_max']}, s_c = {s['scale']:.3g}, max |w - w_hat| = "
            f"{s['max_abs_error']:.3g} (bound s_c/2 = {s['scale'] / 2:.3g}), relative error "
            f"{s['relative_error']:.2e}, {s['bytes']} bytes vs {s['bytes_fp32']} in float32 "
            f"(-{100 * (1 - s['bytes'] / s['bytes_fp32']):.1f}%)")
