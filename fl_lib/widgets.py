"""Sliders for notebooks 02 and 03. They only redraw: no widget ever starts training.

Each explorer calls the same fl_lib function the notebook calls directly (`partition_stats`,
`channel_quant_stats`), so a headless run (papermill, the HTML report) still prints every
number, and the figure (a plotly FigureWidget) is updated in place when a slider moves.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .partition import label_counts, make_partition
from .quant import dequantize, q_max, quantize


# -- partitions (notebook 02) ------------------------------------------------
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
    s = summarize_stats(stats)
    return (f"{s['clients']} clients, {s['samples_min']}-{s['samples_max']} samples each, "
            f"{s['classes_per_client']:.1f} classes per client on average; total-variation distance "
            f"from the global label mix: mean {s['tv_mean']:.3f}, max {s['tv_max']:.3f}")


class PartitionExplorer:
    """alpha (log slider, 0.01..100) and num_clients redraw the clients x classes label counts."""

    def __init__(self, labels, num_classes=None, alpha=0.5, num_clients=10, seed=0, kind="dirichlet", min_size=0):
        import ipywidgets as w
        import plotly.graph_objects as go

        self.labels = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
        self.num_classes = int(self.labels.max()) + 1 if num_classes is None else num_classes
        self.seed, self.kind, self.min_size = seed, kind, min_size
        self.alpha = w.FloatLogSlider(value=alpha, base=10, min=-2, max=2, step=0.05, description="alpha",
                                      continuous_update=False, readout_format=".3g")
        self.num_clients = w.IntSlider(value=num_clients, min=2, max=100, description="num_clients",
                                       continuous_update=False)
        self.figure = go.FigureWidget(go.Heatmap(z=[[0]], colorscale="Blues",
                                                 hovertemplate="client %{y}<br>class %{x}<br>%{z}<extra></extra>"))
        self.figure.update_layout(xaxis_title="class", yaxis_title="client", template="plotly_white", height=420)
        self.figure.update_yaxes(autorange="reversed")
        self.text = w.HTML()
        self.alpha.observe(self.redraw, names="value")
        self.num_clients.observe(self.redraw, names="value")
        self.widget = w.VBox([w.HBox([self.alpha, self.num_clients]), self.figure, self.text])
        self.redraw()

    def partition(self):
        return make_partition(self.kind, self.labels, self.num_clients.value, self.seed, alpha=self.alpha.value,
                              min_size=self.min_size)

    def redraw(self, change=None):
        parts = self.partition()
        counts = label_counts(parts, self.labels, self.num_classes)
        self.stats = partition_stats(parts, self.labels, self.num_classes)
        with self.figure.batch_update():  # one message to the browser, the figure object stays the same
            self.figure.data[0].z = counts
            self.figure.layout.title = f"{self.kind}, alpha = {self.alpha.value:.3g}, K = {self.num_clients.value}"
        self.text.value = describe_stats(self.stats)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


# -- quantization (notebook 03) -----------------------------------------------
def channel_quant_stats(w, bits: int) -> dict:
    """Equations (1)-(3) on one channel w (a 1-D tensor): scale, codes, reconstruction, error and bytes."""
    w = w.detach().float().reshape(1, -1)  # one row = one channel
    qt = quantize(w, bits)
    w_hat = dequantize(qt)
    err = (w_hat - w).abs()
    n = w.numel()
    return {"bits": bits, "q_max": q_max(bits), "scale": float(qt.scale[0]), "codes": qt.q.reshape(-1),
            "w_hat": w_hat.reshape(-1), "max_abs_error": float(err.max()),
            "relative_error": float(torch.linalg.vector_norm(w_hat - w) / torch.linalg.vector_norm(w)),
            "bytes": math.ceil(n * bits / 8) + 4, "bytes_fp32": 4 * n}  # + one float32 scale


def describe_quant(s) -> str:
    return (f"{s['bits']} bits: q_max = {s['q_max']}, s_c = {s['scale']:.3g}, max |w - w_hat| = "
            f"{s['max_abs_error']:.3g} (bound s_c/2 = {s['scale'] / 2:.3g}), relative error "
            f"{s['relative_error']:.2e}, {s['bytes']} bytes vs {s['bytes_fp32']} in float32 "
            f"(-{100 * (1 - s['bytes'] / s['bytes_fp32']):.1f}%)")


MAX_GRID_LINES = 64  # above this many levels the grid is too dense to draw


class QuantExplorer:
    """A bit-width slider (2..16) redrawing one channel's weights, their quantized values and the grid."""

    def __init__(self, w, bits=4, title="one channel"):
        import ipywidgets as widgets
        import plotly.graph_objects as go

        self.w = w.detach().float().reshape(-1)
        self.title = title
        self.bits = widgets.IntSlider(value=bits, min=2, max=16, description="bits", continuous_update=False)
        i = np.arange(len(self.w))
        self.figure = go.FigureWidget([
            go.Scatter(x=[], y=[], mode="lines", line=dict(color="lightgray", width=1), name="grid s_c q",
                       hoverinfo="skip"),
            go.Scatter(x=i, y=self.w.numpy(), mode="markers", name="w", marker=dict(size=6)),
            go.Scatter(x=i, y=[], mode="markers", name="w_hat", marker=dict(symbol="x", size=6)),
        ])
        self.figure.update_layout(xaxis_title="index i within the channel", yaxis_title="weight",
                                  template="plotly_white", height=420)
        self.text = widgets.HTML()
        self.bits.observe(self.redraw, names="value")
        self.widget = widgets.VBox([self.bits, self.figure, self.text])
        self.redraw()

    def redraw(self, change=None):
        self.stats = s = channel_quant_stats(self.w, self.bits.value)
        levels = 2 * s["q_max"] + 1
        grid_x, grid_y = [], []
        if levels <= MAX_GRID_LINES:  # one trace of horizontal segments separated by None
            for q in range(-s["q_max"], s["q_max"] + 1):
                grid_x += [0, len(self.w) - 1, None]
                grid_y += [s["scale"] * q, s["scale"] * q, None]
        with self.figure.batch_update():
            self.figure.data[0].x, self.figure.data[0].y = grid_x, grid_y
            self.figure.data[2].y = s["w_hat"].numpy()
            grid = f"{levels} levels" + ("" if levels <= MAX_GRID_LINES else ", too dense to draw")
            self.figure.layout.title = f"{self.title}: {s['bits']} bits ({grid})"
        self.text.value = describe_quant(s)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
