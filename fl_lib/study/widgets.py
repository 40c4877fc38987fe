"""Sliders and check boxes for lessons 02, 04, 07, 09 and 10. They only redraw: no widget ever starts training.

Each explorer calls the same function the lesson calls directly (`partition_stats`,
`channel_quant_stats`, `clock_stats`; lesson 10's curves are read off its cached runs), so a
headless run (papermill, the HTML report) still prints every number, and the figure (a plotly
FigureWidget) is updated in place when a slider moves or a box is ticked.
"""
from __future__ import annotations

import math

import numpy as np

from . import theme
from .analysis import channel_quant_stats, describe_quant, describe_stats, partition_stats
from ..core.partition import label_counts, make_partition


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
        self.figure.update_layout(xaxis_title="class", yaxis_title="client", template=theme.template(), height=420)
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


# -- quantization (lesson 04) -----------------------------------------------
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
                                  template=theme.template(), height=420)
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


# -- links and adaptive bit widths (lesson 09) ---------------------------------
def clock_view(fed, **changes):
    """The simulated clock of `fed` under other settings (link, deadline, bits, bits_policy, min_bits,
    secure_aggregation): `plan`, `client_time` and `upload_size` with `fed`'s clients and model sizes.

    Built from the changed (and checked) config by the simulator's own builder; nothing is trained
    and the federation is left as it is.
    """
    from ..simulator.build import build_clock, build_pipeline

    cfg = fed.cfg.replace(**changes)
    pipeline = build_pipeline(cfg, fed.sizes, fed.num_params, fed.device)  # what a masked DP upload costs follows bits
    return build_clock(cfg, fed.sizes, fed.info, pipeline)


def width_label(bits) -> str:
    """32 -> 'FP32', 16 -> 'INT16', None (an adaptive straggler: not even min_bits fit) -> 'late'."""
    if bits is None or (isinstance(bits, float) and math.isnan(bits)):
        return "late"
    return "FP32" if int(bits) == 32 else f"INT{int(bits)}"


def clock_stats(fed, link: str, deadline: float = 0.0, bit_widths=(32, 16, 8), num_rounds=None, min_bits=2,
                max_bits=16):
    """Every sampled client of rounds 1..num_rounds on `link`, at each fixed width and under the adaptive policy.

    One row per (policy, round, client): policy ('FP32', 'INT16', ..., 'adaptive'), round, client,
    bits (the width it uploads at; NaN for an adaptive straggler), the parts of its time
    T_k = D/down_k + n_k E F/speed_k + U_k/up_k + latency_k (download_s, compute_s, upload_s,
    latency_s, total_s), kept (False: dropped by the deadline or the adaptive budget) and
    round_s (the round's duration). The adaptive policy picks from min_bits..max_bits.
    Everything comes from `Clock.plan` and `client_time` on a `clock_view` of `fed`:
    the engine's own clock, without training.
    """
    import pandas as pd

    num_rounds = num_rounds or fed.cfg.num_rounds
    views = {width_label(b): clock_view(fed, link=link, deadline=deadline, bits_policy="fixed", bits=b, min_bits=2)
             for b in bit_widths}
    views["adaptive"] = clock_view(fed, link=link, deadline=deadline, bits_policy="adaptive", bits=max_bits,
                                   min_bits=min_bits)
    rows = []
    for t in range(1, num_rounds + 1):
        chosen = fed.sample_clients(t)
        for policy, view in views.items():
            widths, duration, kept = view.plan(t, chosen)
            for k, keep in zip(chosen, kept):
                c = view.client_time(t, k, widths[k] or min_bits)  # a straggler's time at the narrowest width
                rows.append({"policy": policy, "round": t, "client": k,
                             "bits": float("nan") if widths[k] is None else widths[k],
                             "download_s": c.download, "compute_s": c.compute, "upload_s": c.upload,
                             "latency_s": c.latency, "total_s": c.total, "kept": keep, "round_s": duration})
    return pd.DataFrame(rows)


def clock_summary(stats):
    """Per policy: mean round seconds, median and largest upload seconds, share of clients dropped, mean kept width."""
    import pandas as pd

    g = stats.groupby("policy", sort=False)
    rounds = stats.drop_duplicates(["policy", "round"]).groupby("policy", sort=False).round_s
    kept = stats[stats.kept].groupby("policy", sort=False).bits
    return pd.DataFrame({"mean round (s)": rounds.mean(), "median upload (s)": g.upload_s.median(),
                         "largest upload (s)": g.upload_s.max(), "dropped (%)": 100 * (1 - g.kept.mean()),
                         "mean bits of kept clients": kept.mean()})


class LinkExplorer:
    """Sliders for the spread sigma of a `lognormal:MEDIAN,SIGMA` link and the deadline.

    Redraws the clients' upload times at the fixed widths (a histogram over rounds and clients)
    and the widths the adaptive policy picks, with `clock_stats` on the federation `fed`
    (its data sizes, model and FLOPs). It only redraws: nothing is trained.
    """

    def __init__(self, fed, sigma=None, deadline=0.0, median_mbps=None, bit_widths=(32, 16, 8), num_rounds=None,
                 max_deadline=None, bins=30, min_bits=2):
        import ipywidgets as w
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from ..core.links import MAX_SIGMA, MOBILE, adaptive_widths

        profile = fed.links.profile if fed.links is not None else MOBILE
        self.fed, self.bit_widths, self.num_rounds, self.bins = fed, tuple(bit_widths), num_rounds, bins
        self.min_bits = min_bits
        self.median_mbps = profile.up_mbps if median_mbps is None else median_mbps
        sigma = profile.up_sigma if sigma is None else sigma
        self.sigma = w.FloatSlider(value=round(sigma, 2), min=0.0, max=MAX_SIGMA, step=0.05, description="sigma",
                                   continuous_update=False, readout_format=".2f")
        if max_deadline is None:  # twice the slowest FP32 client at the starting spread
            start = clock_stats(fed, self.link(), 0.0, (32,), num_rounds)
            max_deadline = max(2 * start.total_s.max(), deadline)
        step = 10 ** math.floor(math.log10(max_deadline / 100))
        self.deadline = w.FloatSlider(value=deadline, min=0.0, max=math.ceil(max_deadline / step) * step, step=step,
                                      description="deadline (s)", continuous_update=False, readout_format=".3g",
                                      style={"description_width": "initial"})
        # the bars' labels: "INT16" .. "INT<min_bits>", "late", drawn as tick text on a numeric axis
        # at 0, 1, 2, ...: a categorical axis inside an ipywidgets box lost all its labels in
        # JupyterLab (checked in Chromium: plotly draws none; alone in a cell it draws them)
        self.categories = [width_label(b) for b in adaptive_widths(16, min_bits)] + ["late"]
        positions = list(range(len(self.categories)))
        fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4],
                            subplot_titles=("upload seconds of every client and round", "adaptive widths picked"))
        for i, b in enumerate(self.bit_widths):
            fig.add_trace(go.Scatter(x=[], y=[], mode="lines", line_shape="hv", name=width_label(b),
                                     line=dict(width=2)), 1, 1)
        fig.add_trace(go.Bar(x=positions, y=[0] * len(self.categories), name="adaptive",
                             hovertext=self.categories,
                             marker_color="gray"), 1, 2)
        fig.update_xaxes(type="log", title_text="upload seconds U_k / up_k", row=1, col=1)
        fig.update_xaxes(type="linear", range=[-0.5, len(positions) - 0.5], tickmode="array", tickvals=positions,
                         ticktext=self.categories, tickangle=-90,
                         title_text="width", row=1, col=2)
        fig.update_yaxes(title_text="client-rounds", row=1, col=1)
        fig.update_layout(template=theme.template(), height=440)
        self.figure = go.FigureWidget(fig)
        self.text = w.HTML()
        self.sigma.observe(self.redraw, names="value")
        self.deadline.observe(self.redraw, names="value")
        self.widget = w.VBox([w.HBox([self.sigma, self.deadline]), self.figure, self.text])
        self.redraw()

    def link(self) -> str:
        return f"lognormal:{self.median_mbps:g},{self.sigma.value:g}"

    def redraw(self, change=None):
        from .plots import histogram_edges, step_xy

        self.stats = s = clock_stats(self.fed, self.link(), self.deadline.value, self.bit_widths, self.num_rounds,
                                     min_bits=self.min_bits)
        fixed = s[s.policy != "adaptive"]
        edges = histogram_edges(fixed.upload_s, self.bins, log_x=True)
        picked = s[s.policy == "adaptive"].bits.map(width_label)
        self.widths = picked.value_counts().reindex(self.categories, fill_value=0)
        with self.figure.batch_update():
            for i, b in enumerate(self.bit_widths):
                self.figure.data[i].x, self.figure.data[i].y = step_xy(fixed.upload_s[fixed.policy == width_label(b)],
                                                                       edges)
            self.figure.data[-1].y = self.widths.to_numpy()
            deadline = f"deadline {self.deadline.value:.3g} s" if self.deadline.value > 0 else "no deadline"
            self.figure.layout.title = f"{self.link()}, {deadline}"
        self.summary = clock_summary(s)
        self.text.value = self.summary.round(3).to_html()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


# -- gradient leakage (lesson 07) -------------------------------------------------
def attack_key(model, batch_size, bits, noise) -> str:
    """The key `leakage.run_grid` stores one reconstruction under in reconstructions.npz."""
    return f"{model}_B{batch_size}_bits{bits}_noise{noise:g}"


def load_attacks(*folders):
    """Rows (a DataFrame) and images ({key: uint8 (B, C, H, W)}) of the run_grid outputs in `folders`, merged."""
    import json
    from pathlib import Path

    import pandas as pd

    rows, images = [], {}
    for folder in folders:
        folder = Path(folder)
        rows += json.loads((folder / "leakage_rows.json").read_text())
        with np.load(folder / "reconstructions.npz") as z:
            images.update({k: z[k] for k in z.files})
    return pd.DataFrame(rows), images


_STOPS = {"plateau": "on a plateau", "cap": "at its step cap", "exact": "at an exact match",
          "diverged": "on a non-finite loss"}  # leakage.AttackResult.stop, in words


def _rgb(img):
    """(C, H, W) uint8 -> (H, W, 3) uint8 for plotly's Image trace (gray channels repeated)."""
    img = np.asarray(img).transpose(1, 2, 0)
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


class LeakageExplorer:
    """Sliders for the upload's bit width and the client's noise; redraw a stored reconstruction beside the original.

    `rows` and `images` are `leakage.run_grid`'s outputs (see `load_attacks`): nothing is attacked
    or trained here. A setting that was not attacked shows a gray panel and says so.
    """

    def __init__(self, rows, images, model="lenet", batch_size=1, bits=None, noise=None):
        import ipywidgets as w
        import pandas as pd
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        rows = pd.DataFrame(rows)
        self.rows = rows[(rows.model == model) & (rows.batch_size == batch_size)]
        if self.rows.empty:
            raise ValueError(f"no stored attack on model={model!r} at batch_size={batch_size}")
        self.model, self.batch_size, self.images = model, batch_size, images
        self.original = images[f"{model}_B{batch_size}_original"]
        bit_options = sorted(self.rows.bits.unique(), reverse=True)
        noise_options = sorted(self.rows.noise.unique())
        self.bits = w.SelectionSlider(options=[(width_label(b), int(b)) for b in bit_options],
                                      value=int(bits if bits is not None else bit_options[0]),
                                      description="bits", continuous_update=False)
        self.noise = w.SelectionSlider(options=[(f"{s:g}", float(s)) for s in noise_options], value=float(noise if noise is not None else noise_options[0]),
                                       description="noise std", continuous_update=False,
                                       style={"description_width": "initial"})
        fig = make_subplots(rows=2, cols=batch_size, vertical_spacing=0.08, horizontal_spacing=0.02,
                            row_titles=["original", "what the server rebuilds"])
        for i in range(batch_size):
            fig.add_trace(go.Image(z=_rgb(self.original[i]), hoverinfo="skip"), 1, i + 1)
        for i in range(batch_size):
            fig.add_trace(go.Image(z=_rgb(self.original[i]), hoverinfo="skip"), 2, i + 1)
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        fig.update_layout(template=theme.template(), height=360, width=max(360, 180 * batch_size),
                          margin=dict(l=10, r=40, t=60, b=10))
        self.figure = go.FigureWidget(fig)
        self.text = w.HTML()
        self.bits.observe(self.redraw, names="value")
        self.noise.observe(self.redraw, names="value")
        self.widget = w.VBox([w.HBox([self.bits, self.noise]), self.figure, self.text])
        self.redraw()

    def key(self) -> str:
        return attack_key(self.model, self.batch_size, self.bits.value, self.noise.value)

    def redraw(self, change=None):
        key = self.key()
        hit = self.rows[(self.rows.bits == self.bits.value) & (self.rows.noise == self.noise.value)]
        self.row = hit.iloc[0].to_dict() if len(hit) and key in self.images else None
        recon = self.images[key] if self.row is not None else np.full_like(self.original, 128)
        setting = f"{width_label(self.bits.value)}, noise std {self.noise.value:g}"
        with self.figure.batch_update():
            for i in range(self.batch_size):
                self.figure.data[self.batch_size + i].z = _rgb(recon[i])
            self.figure.layout.title = (f"{self.model}, B = {self.batch_size}, {setting}: "
                                        + (f"{self.row['psnr']:.1f} dB" if self.row is not None else "not attacked"))
        if self.row is None:
            done = ", ".join(f"{width_label(b)} / noise {s:g}" for b, s in zip(self.rows.bits, self.rows.noise))
            self.text.value = f"<p>{setting} was not attacked in this lesson; stored settings: {done}.</p>"
        else:
            r = self.row
            self.text.value = (f"<p>PSNR {r['psnr']:.2f} dB (worst image {r['psnr_min']:.2f} dB), labels "
                               f"{'recovered' if r['label_correct'] else 'wrong'}; upload {r['upload_bytes']:,} B "
                               f"(rms {r['upload_rms']:.3g}); {r['method']} attack, {r['steps_run']:,} "
                               f"step{'' if r['steps_run'] == 1 else 's'} (stopped "
                               f"{_STOPS.get(r['stop'], r['stop'])}), final gradient-matching loss "
                               f"{r['match_loss']:.3g}.</p>")

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


# -- methods against FedAvg (lesson 10) ---------------------------------------------
class CurveExplorer:
    """Check boxes pick which methods' curves are overlaid; a menu picks the metric. Cached runs only.

    `frame` is a sweep's table (one row per run and round, a column `hue` naming the method and one
    `run` column telling the seeds apart). Each method's curve is the mean over its runs at each `x`
    with a band of one standard deviation, as `plots.lines` draws them. The curves of every metric
    are computed once from the frame; a check box only shows or hides its method's two traces, so
    nothing is trained or recomputed when one is clicked.
    """

    METRICS = {"test_acc": "test accuracy", "test_loss": "test loss", "train_loss": "clients' training loss"}

    def __init__(self, frame, hue="label", x="round", run="seed", metrics=tuple(METRICS), chosen=None, title=""):
        import ipywidgets as w
        import plotly.graph_objects as go

        self.hue, self.x, self.title = hue, x, title
        self.names = list(dict.fromkeys(frame[hue]))
        shown = [m for m in metrics if m in frame and frame[m].notna().any()]
        if not shown:
            raise ValueError(f"none of the metrics {', '.join(metrics)} has a value in the frame")
        chosen = self.names if chosen is None else list(chosen)
        unknown = [c for c in chosen if c not in self.names]
        if unknown:
            raise ValueError(f"chosen {unknown[0]!r} is not a {hue} of the frame: {', '.join(map(str, self.names))}")
        self.curves = {m: frame.dropna(subset=[m]).groupby([hue, x], sort=False)[m].agg(["mean", "std"])
                       .fillna({"std": 0.0}) for m in shown}
        self.runs = {name: frame.loc[frame[hue] == name, run].nunique() for name in self.names}
        self.metric = w.Dropdown(options=[(self.METRICS.get(m, m), m) for m in shown], value=shown[0],
                                 description="metric")
        self.boxes = {name: w.Checkbox(value=name in chosen, description=str(name), indent=False,
                                       layout=w.Layout(width="auto")) for name in self.names}
        traces = []
        for i, name in enumerate(self.names):  # two traces per method: its band, then its line
            style = theme.line_style(i)
            traces.append(go.Scatter(x=[], y=[], fill="toself", line=dict(width=0), fillcolor=style["color"],
                                     opacity=theme.current().band_opacity, hoverinfo="skip", showlegend=False,
                                     legendgroup=str(name)))
            traces.append(go.Scatter(x=[], y=[], mode="lines+markers", name=str(name),
                                     line=dict(color=style["color"], dash=style["dash"]),
                                     marker=dict(symbol=style["symbol"]), legendgroup=str(name)))
        self.figure = go.FigureWidget(traces)
        self.figure.update_layout(xaxis_title=x, template=theme.template(), height=440,
                                  legend_title=theme.legend_title(hue))
        self.text = w.HTML()
        self.metric.observe(self.redraw, names="value")
        for box in self.boxes.values():
            box.observe(self.show, names="value")
        self.widget = w.VBox([self.metric, w.HBox(list(self.boxes.values()), layout=w.Layout(flex_flow="row wrap")),
                              self.figure, self.text])
        self.redraw()

    def chosen(self) -> list:
        """The methods whose check box is ticked, in the frame's order."""
        return [name for name in self.names if self.boxes[name].value]

    def redraw(self, change=None):
        """Put the chosen metric's curves into every trace (shown or not), then show the ticked ones."""
        curves = self.curves[self.metric.value]
        with self.figure.batch_update():
            for i, name in enumerate(self.names):
                c = curves.loc[name] if name in curves.index.get_level_values(0) else curves.iloc[:0]
                xs, mean, std = c.index.to_numpy(), c["mean"].to_numpy(), c["std"].to_numpy()
                band, line = self.figure.data[2 * i], self.figure.data[2 * i + 1]
                band.x, band.y = np.r_[xs, xs[::-1]], np.r_[mean + std, (mean - std)[::-1]]
                line.x, line.y = xs, mean
            self.figure.layout.yaxis.title = self.METRICS.get(self.metric.value, self.metric.value)
            self.figure.layout.title = self.title or f"{self.METRICS.get(self.metric.value, self.metric.value)} " \
                                                     f"against {self.x}"
        self.show()

    def show(self, change=None):
        """Show the ticked methods' traces, hide the others, and table where each chosen curve ends."""
        chosen = set(self.chosen())
        with self.figure.batch_update():
            for i, name in enumerate(self.names):
                self.figure.data[2 * i].visible = self.figure.data[2 * i + 1].visible = name in chosen
        curves, rows = self.curves[self.metric.value], []
        for name in self.chosen():
            if name in curves.index.get_level_values(0):
                last = curves.loc[name].iloc[-1]
                rows.append(f"<tr><td>{name}</td><td>{curves.loc[name].index[-1]}</td><td>{last['mean']:.4f}</td>"
                            f"<td>{last['std']:.4f}</td><td>{self.runs[name]}</td></tr>")
        head = f"<tr><th>{self.hue}</th><th>last {self.x}</th><th>mean</th><th>std</th><th>runs</th></tr>"
        self.text.value = f"<table>{head}{''.join(rows)}</table>" if rows else "<p>No method chosen.</p>"

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
