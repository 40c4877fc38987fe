"""Sliders for lessons 02 and 03. They only redraw: no widget ever starts training.

Each explorer calls the same fl_lib.analysis function the lesson calls directly (`partition_stats`,
`channel_quant_stats`), so a headless run (papermill, the HTML report) still prints every
number, and the figure (a plotly FigureWidget) is updated in place when a slider moves.
"""
from __future__ import annotations

import numpy as np

from .analysis import channel_quant_stats, describe_quant, describe_stats, partition_stats
from .partition import label_counts, make_partition


# -- partitions (lesson 02) ------------------------------------------------
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


# -- quantization (lesson 03) -----------------------------------------------
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
