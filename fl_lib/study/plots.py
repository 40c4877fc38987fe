"""Figures the notebooks share: each function returns an interactive plotly figure and,
when given a `name`, also saves a matching static seaborn PNG through `save_figure`.

Inputs are tidy pandas DataFrames (one row per round, run or cell). Where several rows
share a (hue, x) pair, e.g. one per seed, lines show their mean and a band of +-1 std.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import theme

COLORS = theme.PALETTE  # the same colour per hue value in plotly and seaborn (colour-blind safe)
MB = 1e6


def setup_notebook():
    """Show plotly figures as plotly's JSON output: JupyterLab, VS Code and the HTML report render it offline."""
    import plotly.io as pio

    pio.renderers.default = "plotly_mimetype"


def save_figure(fig, name: str, figures_dir="figures") -> Path:
    """Write the matplotlib figure `fig` to figures_dir/name.png (folders made as needed), close it, return the path."""
    import matplotlib.pyplot as plt

    path = Path(figures_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


def _static(figsize=(6.4, 4.0), ncols=1):
    """A matplotlib Figure made without pyplot: no backend state, never shown, only saved."""
    import seaborn as sns
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    with sns.axes_style("whitegrid"):
        axes = fig.subplots(1, ncols, squeeze=False)
    return fig, axes[0]


def _summary(df, x, y, hue):
    """Mean and std of y per (hue, x), in hue order of first appearance."""
    d = df.dropna(subset=[y])
    g = d.groupby([hue, x], sort=False)[y].agg(["mean", "std"]).reset_index()
    g["std"] = g["std"].fillna(0.0)
    order = list(dict.fromkeys(d[hue]))
    return g.sort_values(x), order


def lines(df, x, y, hue, title="", xlabel=None, ylabel=None, log_x=False, log_y=False,
          name=None, figures_dir="figures"):
    """One line per value of `hue` (mean over repeated rows, with a +-1 std band)."""
    g, order = _summary(df, x, y, hue)
    fig = go.Figure()
    for i, h in enumerate(order):
        s = g[g[hue] == h]
        style = theme.line_style(i)  # colour, dash and marker: apart in greyscale and on a projector too
        color = style["color"]
        if (s["std"] > 0).any():
            band_x = np.concatenate([s[x].to_numpy(), s[x].to_numpy()[::-1]])
            band_y = np.concatenate([(s["mean"] + s["std"]).to_numpy(), (s["mean"] - s["std"]).to_numpy()[::-1]])
            fig.add_trace(go.Scatter(x=band_x, y=band_y, fill="toself", line=dict(width=0), fillcolor=color,
                                     opacity=theme.current().band_opacity, hoverinfo="skip", showlegend=False,
                                     legendgroup=str(h)))
        fig.add_trace(go.Scatter(x=s[x], y=s["mean"], mode="lines+markers", name=str(h),
                                 line=dict(color=color, dash=style["dash"]), marker=dict(symbol=style["symbol"]),
                                 legendgroup=str(h)))
    fig.update_layout(title=title, xaxis_title=xlabel or x, yaxis_title=ylabel or y,
                      legend_title=theme.legend_title(hue), template=theme.template(), height=420)
    if log_x:
        fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    integer_x = pd.api.types.is_integer_dtype(df[x]) and not log_x  # rounds, bit widths: no 1.5 ticks
    if integer_x and df[x].max() - df[x].min() <= 10:
        fig.update_xaxes(dtick=1)  # wider spans get plotly's automatic ticks, which are whole numbers there
    if name:
        import seaborn as sns

        sfig, (ax,) = _static()
        palette = {h: COLORS[i % len(COLORS)] for i, h in enumerate(order)}
        d = df.dropna(subset=[y]).assign(**{hue: df[hue].astype(str)})
        sns.lineplot(data=d, x=x, y=y, hue=hue, hue_order=[str(h) for h in order], errorbar="sd", ax=ax,
                     palette={str(k): v for k, v in palette.items()}, style=hue, style_order=[str(h) for h in order],
                     dashes=[theme.MPL_DASHES[i % len(theme.MPL_DASHES)] for i in range(len(order))],
                     markers=[theme.MPL_MARKERS[i % len(theme.MPL_MARKERS)] for i in range(len(order))],
                     err_kws={"alpha": theme.current().band_opacity})
        ax.set(title=title, xlabel=xlabel or x, ylabel=ylabel or y,
               xscale="log" if log_x else "linear", yscale="log" if log_y else "linear")
        if integer_x:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), frameon=False,  # never over the lines
                        title=theme.legend_title(hue) or None)
        save_figure(sfig, name, figures_dir)
    return fig


def accuracy_over_rounds(df, hue="label", title="Test accuracy over rounds", name=None, figures_dir="figures"):
    """Test accuracy per round, one line per `hue` (rows without an evaluation are skipped)."""
    return lines(df, "round", "test_acc", hue, title, "round", "test accuracy", name=name, figures_dir=figures_dir)


def accuracy_vs_upload(df, hue="label", title="Test accuracy vs uploaded data", name=None, figures_dir="figures"):
    """Test accuracy against cumulative upload (MB = 1e6 bytes, all clients), one line per `hue`."""
    df = df.assign(cum_upload_mb=df["cum_upload_bytes"] / MB)
    return lines(df, "cum_upload_mb", "test_acc", hue, title, "cumulative upload (MB)", "test accuracy",
                 name=name, figures_dir=figures_dir)


def label_heatmaps(counts_by_name: dict, title="Label counts per client", name=None, figures_dir="figures"):
    """Side-by-side clients x classes heatmaps of label counts, one per partition."""
    names = list(counts_by_name)
    # long names ("Dirichlet per client (alpha=0.5)") break before "(" so neighbouring titles never overlap
    titles = [n.replace(" (", "<br>(") for n in names]
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=titles, horizontal_spacing=0.05)
    fig.update_annotations(font_size=theme.current().font_size)  # the subplot titles
    top = max(float(np.asarray(c).max()) for c in counts_by_name.values())  # one colour scale for every panel
    for i, n in enumerate(names, start=1):
        c = np.asarray(counts_by_name[n])
        fig.add_trace(go.Heatmap(z=c, colorscale="Blues", showscale=i == len(names), coloraxis=None, zmin=0, zmax=top,
                                 hovertemplate="client %{y}<br>class %{x}<br>%{z} samples<extra></extra>"), 1, i)
        fig.update_xaxes(title_text="class", row=1, col=i, dtick=1)
        fig.update_yaxes(autorange="reversed", row=1, col=i, title_text="client" if i == 1 else None)
    fig.update_layout(title=title, template=theme.template(), margin=dict(t=110),  # room for two-line titles
                      height=380 + 6 * max(len(np.asarray(c)) for c in counts_by_name.values()))
    if name:
        import seaborn as sns

        sfig, axes = _static(figsize=(4.2 * len(names), 4.0), ncols=len(names))
        for ax, n in zip(axes, names):
            sns.heatmap(np.asarray(counts_by_name[n]), cmap="Blues", ax=ax, cbar=False, vmin=0, vmax=top)
            ax.set(title=n.replace(" (", "\n("), xlabel="class", ylabel="client")
        sfig.colorbar(axes[-1].collections[0], ax=list(axes), label="samples")  # one scale, shared by every panel
        sfig.suptitle(title)
        sfig.set_layout_engine("constrained")  # keeps the two-line titles clear of the suptitle
        save_figure(sfig, name, figures_dir)
    return fig


def grid_heatmap(table, title="", fmt=".3f", colorbar="", name=None, figures_dir="figures"):
    """A heatmap of a 2-D pandas table (index = rows, columns = columns) with each value printed."""
    z = table.to_numpy(dtype=float)
    text = [[format(v, fmt) for v in row] for row in z]
    fig = go.Figure(go.Heatmap(z=z, x=[str(c) for c in table.columns], y=[str(i) for i in table.index],
                               text=text, texttemplate="%{text}", colorscale="Viridis",
                               colorbar=dict(title=colorbar)))
    fig.update_layout(title=title, xaxis_title=table.columns.name, yaxis_title=table.index.name,
                      template=theme.template(), height=380)
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    if name:
        import seaborn as sns

        sfig, (ax,) = _static()
        sns.heatmap(table.astype(float), annot=True, fmt=fmt, cmap="viridis", ax=ax,
                    cbar_kws={"label": colorbar})
        ax.set(title=title)
        save_figure(sfig, name, figures_dir)
    return fig


def common_grid(df, x, y, hue, run="seed", points=60):
    """Each run's y interpolated onto one x grid per `hue` value, so `lines` can average runs at equal x.

    For an x that differs between runs of one hue (simulated time, or bytes under an adaptive
    policy), rows of different seeds never share an x, and a mean per (hue, x) would just zigzag
    between seeds. The grid spans what every run of that hue covers (the latest first x to the
    earliest last x), in `points` even steps; y is interpolated linearly between a run's rows.
    Rows without y (rounds without an evaluation) are skipped. Returns columns hue, run, x, y.
    """
    d = df.dropna(subset=[x, y])
    out = []
    for h, g in d.groupby(hue, sort=False):
        curves = [(r, c.sort_values(x)) for r, c in g.groupby(run, sort=False)]
        lo = max(c[x].iloc[0] for _, c in curves)
        hi = min(c[x].iloc[-1] for _, c in curves)
        grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
        for r, c in curves:
            out.append(pd.DataFrame({hue: h, run: r, x: grid,
                                     y: np.interp(grid, c[x].to_numpy(float), c[y].to_numpy(float))}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=[hue, run, x, y])


def histogram_edges(values, bins=30, log_x=False):
    """Shared bin edges for all values: even steps, or even steps of log10 x (positive values only) if log_x."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)] if log_x else v[np.isfinite(v)]
    if len(v) == 0:
        return np.array([0.0, 1.0]) if not log_x else np.array([1.0, 10.0])
    lo, hi = v.min(), v.max()
    if hi <= lo:  # every value equal: one bin around it
        lo, hi = (lo / 1.1, hi * 1.1) if log_x else (lo - 0.5, hi + 0.5)
    return np.geomspace(lo, hi, bins + 1) if log_x else np.linspace(lo, hi, bins + 1)


def step_xy(values, edges):
    """(x, y) of a step outline of the histogram of `values` over `edges`, for a line with shape 'hv'."""
    counts, _ = np.histogram(np.asarray(values, dtype=float), bins=edges)
    return np.r_[edges[0], edges], np.r_[0, counts, 0]


def histogram(df, x, hue, title="", xlabel=None, ylabel="count", bins=30, log_x=False, name=None,
              figures_dir="figures"):
    """Overlaid step histograms of `x`, one per value of `hue`, on shared bin edges (log-spaced if log_x)."""
    order = list(dict.fromkeys(df[hue]))
    edges = histogram_edges(df[x], bins, log_x)
    fig = go.Figure()
    for i, h in enumerate(order):
        sx, sy = step_xy(df.loc[df[hue] == h, x], edges)
        fig.add_trace(go.Scatter(x=sx, y=sy, mode="lines", line_shape="hv", name=str(h),
                                 line=dict(color=COLORS[i % len(COLORS)], width=2)))
    fig.update_layout(title=title, xaxis_title=xlabel or x, yaxis_title=ylabel, legend_title=hue,
                      template=theme.template(), height=420)
    if log_x:
        fig.update_xaxes(type="log")
    if name:
        sfig, (ax,) = _static()
        for i, h in enumerate(order):
            counts, _ = np.histogram(df.loc[df[hue] == h, x].to_numpy(float), bins=edges)
            ax.stairs(counts, edges, label=str(h), color=COLORS[i % len(COLORS)], linewidth=2)
        ax.set(title=title, xlabel=xlabel or x, ylabel=ylabel, xscale="log" if log_x else "linear")
        ax.legend(title=hue, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        save_figure(sfig, name, figures_dir)
    return fig


# -- lesson 07: gradient leakage ---------------------------------------------------
def _image(img):
    """(C, H, W) in [0, 1] (float) or uint8 -> (H, W, 3) floats in [0, 1] for imshow."""
    a = np.asarray(img.detach().cpu() if hasattr(img, "detach") else img)
    a = a.astype(float) / 255 if a.dtype == np.uint8 else a.astype(float)
    a = np.clip(a, 0, 1).transpose(1, 2, 0)
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


def image_table(rows, name, figures_dir="figures", size=None):
    """Save a PNG of images laid out in rows: `rows` is a list of lists of (title, (C, H, W) image); return its path.

    `size`: inches per image (default: the theme's, larger on a projector so the titles stay readable)."""
    ncols = max(len(r) for r in rows)
    t = theme.current()
    size = size or (1.8 if t.name == "screen" else 2.6)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size * ncols, (size + 0.35) * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for i, row in enumerate(rows):
        for j in range(ncols):
            ax = axes[i][j]
            ax.set_xticks([]), ax.set_yticks([])
            if j >= len(row):
                ax.set_axis_off()
                continue
            title, img = row[j]
            ax.imshow(_image(img))
            ax.set_title(title, fontsize=t.font_size - 3)
    return save_figure(fig, name, figures_dir)


def psnr_panels(rows, reference=None, name=None, figures_dir="figures"):
    """Attack quality in three panels: PSNR against bits (one line per batch size, no noise), against batch size
    (FP32, no noise) and against the client's noise std (FP32, the smallest batch). `reference`: a dashed line
    (e.g. the PSNR of a flat gray guess)."""
    df = pd.DataFrame(rows)
    clean = df[df.noise == 0]
    fp32 = clean[clean.bits == 32].sort_values("batch_size")
    noisy = df[(df.bits == 32) & (df.batch_size == df.batch_size.min())].sort_values("noise")
    panels = [("bit width of the upload", clean, "bits", "batch_size"),
              ("batch size B (FP32)", fp32, "batch_size", None),
              ("client noise std (FP32)", noisy, "noise", None)]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[p[0] for p in panels], shared_yaxes=True)
    for col, (_, d, x, hue) in enumerate(panels, start=1):
        groups = d.groupby(hue, sort=True) if hue else [(None, d)]
        for i, (h, g) in enumerate(groups):
            g = g.sort_values(x, ascending=x != "bits")
            fig.add_trace(go.Scatter(x=[str(v) if x == "bits" else v for v in g[x]], y=g.psnr, mode="lines+markers",
                                     name=f"B = {h}" if hue else x, showlegend=bool(hue),
                                     line=dict(color=COLORS[i % len(COLORS)])), 1, col)
        if reference is not None:
            fig.add_hline(y=reference, line_dash="dash", line_color="gray", row=1, col=col)
    fig.update_xaxes(type="category", title_text="bits", row=1, col=1)
    fig.update_xaxes(title_text="B", row=1, col=2)
    fig.update_xaxes(title_text="noise std", row=1, col=3)
    fig.update_yaxes(title_text="PSNR (dB)", row=1, col=1)
    fig.update_layout(title="Reconstruction quality" + (f" (dashed: flat gray guess, {reference:.1f} dB)"
                                                        if reference is not None else ""),
                      template=theme.template(), height=400, legend_title="batch size")
    if name:
        sfig, axes = _static(figsize=(12, 3.6), ncols=3)
        for ax, (title, d, x, hue) in zip(axes, panels):
            groups = d.groupby(hue, sort=True) if hue else [(None, d)]
            for i, (h, g) in enumerate(groups):
                g = g.sort_values(x, ascending=x != "bits")
                ax.plot([str(v) for v in g[x]] if x == "bits" else g[x], g.psnr, "o-",
                        color=COLORS[i % len(COLORS)], label=f"B = {h}" if hue else None)
            if reference is not None:
                ax.axhline(reference, ls="--", color="gray")
            ax.set(title=title, xlabel=x, ylabel="PSNR (dB)")
            if hue:
                ax.legend(frameon=False)
        save_figure(sfig, name, figures_dir)
    return fig


def cluster_assignments(assignments, groups, norms, eps1, eps2, name, figures_dir="figures"):
    """Clustered FL in two panels: each client's cluster per round (its true group on the left), and the split
    criterion per cluster (mean and largest update norm against eps_1 and eps_2); saves the PNG, returns its path.

    `assignments`: (rounds, K) cluster ids; `norms`: a row per round and cluster (round, cluster, mean_norm, max_norm).
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    a = np.asarray(assignments)
    rounds, k = a.shape
    fig = Figure(figsize=(10, 0.9 + 0.28 * max(k, 8)), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.2, 1])
    colors = ListedColormap(COLORS[: int(a.max()) + 1])
    left.imshow(a.T, aspect="auto", cmap=colors, vmin=-0.5, vmax=a.max() + 0.5, interpolation="nearest",
                extent=(0.5, rounds + 0.5, k - 0.5, -0.5))
    left.set_yticks(range(k), [f"client {i} (group {g})" for i, g in enumerate(groups)], fontsize=7)
    for i, g in enumerate(groups):  # the true group: a marker beside each row, filled for group 0
        left.plot(0.2, i, marker="o" if g == 0 else "s", color="black", fillstyle="full" if g == 0 else "none",
                  clip_on=False)
    left.set_xlim(0, rounds + 0.5)
    left.set_xlabel("round")
    left.set_title("cluster of each client after each round (colour: cluster id)", fontsize=9)
    for c, part in norms.groupby("cluster"):
        color = COLORS[int(c) % len(COLORS)]
        right.plot(part["round"], part.mean_norm, color=color, label=f"cluster {c}: mean update norm")
        right.plot(part["round"], part.max_norm, color=color, linestyle="--", label=f"cluster {c}: largest norm")
    right.axhline(eps1, color="gray", linewidth=1)
    right.axhline(eps2, color="gray", linewidth=1, linestyle="--")
    right.text(1, eps1, "eps_1", va="bottom", fontsize=7)
    right.text(1, eps2, "eps_2", va="bottom", fontsize=7)
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_xlabel("round")
    right.set_title("split criterion: mean below eps_1 and largest above eps_2", fontsize=9)
    right.legend(fontsize=6)
    return save_figure(fig, name, figures_dir)
