"""Figure themes: one look for every figure of the course, sized for a laptop screen or a projector.

`use("projector")` (a lesson's `theme` parameter) switches both plotly (a registered
template, `pio.templates.default`) and matplotlib (rcParams of the static PNGs).
Whatever the theme, lines differ in three ways at once, so a figure reads in
greyscale and for colour-blind viewers: colour from the Okabe-Ito palette (Okabe &
Ito 2008, safe for the common colour-vision deficiencies), dash pattern and marker.
"""
from __future__ import annotations

from dataclasses import dataclass

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442"]
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")  # plotly's names
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star")
MPL_DASHES = ["", (4, 2), (1, 2), (4, 2, 1, 2), (8, 3), (8, 3, 1, 3)]  # the same patterns for seaborn
MPL_MARKERS = ["o", "s", "D", "^", "X", "*"]


@dataclass(frozen=True)
class Theme:
    """Sizes of one theme: fonts in points, line width and marker size in pixels, the seed-spread band's opacity."""

    name: str
    font_size: int
    title_size: int
    line_width: float
    marker_size: int
    band_opacity: float


THEMES = {
    "screen": Theme("screen", font_size=13, title_size=17, line_width=2.0, marker_size=6, band_opacity=0.2),
    "projector": Theme("projector", font_size=18, title_size=24, line_width=3.5, marker_size=10, band_opacity=0.35),
}
_current = THEMES["screen"]


def current() -> Theme:
    return _current


def template() -> str:
    """The registered plotly template of the current theme ('fl_screen' or 'fl_projector')."""
    _register()
    return f"fl_{_current.name}"


def _register() -> None:
    import plotly.graph_objects as go
    import plotly.io as pio

    for t in THEMES.values():
        name = f"fl_{t.name}"
        if name in pio.templates:
            continue
        tpl = go.layout.Template(pio.templates["plotly_white"])
        tpl.layout.font = dict(size=t.font_size)
        tpl.layout.title = dict(font=dict(size=t.title_size))
        tpl.layout.colorway = PALETTE
        tpl.layout.legend = dict(font=dict(size=t.font_size))
        tpl.data.scatter = [go.Scatter(line=dict(width=t.line_width), marker=dict(size=t.marker_size))]
        pio.templates[name] = tpl


def use(name: str) -> Theme:
    """Make `name` ('screen' or 'projector') the theme of every figure made from now on; returns it."""
    global _current
    if name not in THEMES:
        from ..core.errors import ConfigError

        raise ConfigError(f"theme={name!r} is not a figure theme: choose {' or '.join(THEMES)}")
    _current = THEMES[name]
    import matplotlib as mpl
    import plotly.io as pio

    _register()
    pio.templates.default = template()
    t = _current
    mpl.rcParams.update({"font.size": t.font_size, "axes.titlesize": t.title_size, "axes.labelsize": t.font_size,
                         "legend.fontsize": t.font_size, "xtick.labelsize": t.font_size,
                         "ytick.labelsize": t.font_size, "lines.linewidth": t.line_width,
                         "lines.markersize": t.marker_size / 1.5})
    return t


def line_style(i: int) -> dict:
    """Colour, dash and marker of the i-th line of a figure (plotly names)."""
    return dict(color=PALETTE[i % len(PALETTE)], dash=DASHES[i % len(DASHES)], symbol=SYMBOLS[i % len(SYMBOLS)])


def legend_title(hue: str) -> str:
    """A legend title a reader understands: the column's name in words; none for a plain 'label' column."""
    return "" if hue == "label" else hue.replace("_", " ")
