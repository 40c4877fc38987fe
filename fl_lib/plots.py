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
from plotly.colors import qualitative
from plotly.subplots import make_subplots

COLORS = qualitative.Plotly  # the same color per hue value in plotly and seaborn
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
        color = COLORS[i % len(COLORS)]
        if (s["std"] > 0).any():
            band_x = np.concatenate([s[x].to_numpy(), s[x].to_numpy()[::-1]])
            band_y = np.concatenate([(s["mean"] + s["std"]).to_numpy(), (s["mean"] - s["std"]).to_numpy()[::-1]])
            fig.add_trace(go.Scatter(x=band_x, y=band_y, fill="toself", line=dict(width=0), fillcolor=color,
                                     opacity=0.2, hoverinfo="skip", showlegend=False, legendgroup=str(h)))
        fig.add_trace(go.Scatter(x=s[x], y=s["mean"], mode="lines", name=str(h), line=dict(color=color),
                                 legendgroup=str(h)))
    fig.update_layout(title=title, xaxis_title=xlabel or x, yaxis_title=ylabel or y, legend_title=hue,
                      template="plotly_white", height=420)
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
                     palette={str(k): v for k, v in palette.items()})
        ax.set(title=title, xlabel=xlabel or x, ylabel=ylabel or y,
               xscale="log" if log_x else "linear", yscale="log" if log_y else "linear")
        if integer_x:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # never over the lines
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
    fig.update_annotations(font_size=13)  # the subplot titles
    for i, n in enumerate(names, start=1):
        c = np.asarray(counts_by_name[n])
        fig.add_trace(go.Heatmap(z=c, colorscale="Blues", showscale=i == len(names), coloraxis=None,
                                 hovertemplate="client %{y}<br>class %{x}<br>%{z} samples<extra></extra>"), 1, i)
        fig.update_xaxes(title_text="class", row=1, col=i, dtick=1)
        fig.update_yaxes(autorange="reversed", row=1, col=i, title_text="client" if i == 1 else None)
    fig.update_layout(title=title, template="plotly_white", margin=dict(t=110),  # room for two-line titles
                      height=380 + 6 * max(len(np.asarray(c)) for c in counts_by_name.values()))
    if name:
        import seaborn as sns

        sfig, axes = _static(figsize=(4.2 * len(names), 4.0), ncols=len(names))
        for ax, n in zip(axes, names):
            sns.heatmap(np.asarray(counts_by_name[n]), cmap="Blues", ax=ax, cbar=False)
            ax.set(title=n.replace(" (", "\n("), xlabel="class", ylabel="client")
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
                      template="plotly_white", height=380)
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
