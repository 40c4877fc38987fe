"""Figure themes (study/theme.py): one template for every figure, screen or projector, lines apart without colour."""
import pandas as pd
import plotly.io as pio
import pytest

from fl_lib.core.errors import ConfigError
from fl_lib.study import plots, theme


@pytest.fixture(autouse=True)
def back_to_screen():
    yield
    theme.use("screen")


def _curves(n=4):
    return pd.DataFrame([{"label": f"run {i}", "seed": s, "round": r, "test_acc": 0.1 * r + 0.01 * i + 0.001 * s}
                         for i in range(n) for s in (0, 1) for r in range(1, 4)])


def test_projector_theme_sets_larger_fonts_and_thicker_lines_for_every_new_figure():
    screen = plots.accuracy_over_rounds(_curves())
    theme.use("projector")
    assert pio.templates.default == "fl_projector"
    projector = plots.accuracy_over_rounds(_curves())
    assert projector.layout.template.layout.font.size >= 16 > screen.layout.template.layout.font.size
    assert projector.layout.template.data.scatter[0].line.width > screen.layout.template.data.scatter[0].line.width
    band = [t for t in projector.data if t.fill == "toself"][0]
    assert band.opacity == theme.THEMES["projector"].band_opacity > theme.THEMES["screen"].band_opacity


def test_lines_differ_by_dash_and_marker_as_well_as_colour():
    fig = plots.accuracy_over_rounds(_curves(6))
    lines = [t for t in fig.data if t.fill != "toself"]
    assert len({t.line.dash for t in lines}) == len({t.marker.symbol for t in lines}) == len({t.line.color for t in lines}) == 6
    assert fig.layout.legend.title.text in (None, "")  # a plain 'label' column gets no legend title


def test_an_unknown_theme_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"theme='beamer' is not a figure theme: choose screen or projector"):
        theme.use("beamer")


def test_every_lesson_takes_the_theme_parameter_and_applies_it():
    import jupytext

    from fl_lib.study import lesson, report

    for path in report.lesson_paths([]):
        cells = jupytext.read(str(path)).cells
        params = next(c for c in cells if "parameters" in c.metadata.get("tags", []))
        assert lesson.parameter_line("theme") in params.source.splitlines(), path.stem
        assert sum("theme=theme" in c.source and "lesson.setup(" in c.source for c in cells) == 1, path.stem


def test_compared_heatmaps_share_one_colour_scale(tmp_path):
    import numpy as np

    counts = {"IID": np.full((3, 4), 5), "skewed": np.array([[40, 0, 0, 0], [0, 20, 0, 0], [0, 0, 10, 0]])}
    fig = plots.label_heatmaps(counts, name="heat", figures_dir=tmp_path)
    assert [(t.zmin, t.zmax) for t in fig.data] == [(0, 40.0), (0, 40.0)]
    assert (tmp_path / "heat.png").exists()
