"""TeX in the offline report and slides: matplotlib's mathtext draws every lesson equation it can (no MathJax)."""
import io

import jupytext
import pytest
from matplotlib import mathtext
from matplotlib.font_manager import FontProperties

from fl_lib.study import report
from fl_lib.study.report import _MATH, _tex_image, mathtext_tex


def _draws(tex: str) -> bool:
    try:
        mathtext.math_to_image(f"${tex}$", io.BytesIO(), prop=FontProperties(size=12), format="svg")
        return True
    except Exception:
        return False


def test_rewrites_keep_the_symbols():
    assert mathtext_tex(r"\big\| x \big\|^2 \le S") == r"\| x \|^2 \leq S"
    assert mathtext_tex(r"\sqrt d \gg q_{\max}, \text{if any}") == r"\sqrt{d} \gg q_{\max}, \mathrm{if\ any}"
    assert mathtext_tex("a = b,\n  c = d") == "a = b, c = d"
    assert mathtext_tex(r"\left(x\right) \leq y") == r"\left(x\right) \leq y"  # \left, \leq are not \le


def test_every_lesson_equation_draws_but_cases():
    failed = []
    for path in report.lesson_paths():
        for cell in jupytext.read(str(path)).cells:
            if cell.cell_type == "markdown":
                failed += [(path.stem, m.group(0)[:60]) for m in _MATH.finditer(cell.source)
                           if not _draws(mathtext_tex(m.group(1) or m.group(2))) and r"\begin{cases}" not in m.group(0)]
    assert not failed, failed


@pytest.mark.parametrize("tex, display", [(r"D(x') = \sum_{\text{layers}} \big\| g \big\|^2", True), (r"x \le y", False)])
def test_what_used_to_fall_back_to_source_is_an_image(tex, display):
    assert "data:image/svg+xml;base64" in _tex_image(tex, display)
