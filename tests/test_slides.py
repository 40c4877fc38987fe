"""Slides: the lessons carry slide breaks in their text, the offline decks reach no network, and they present.

The metadata tests read the lessons' text; the deck test builds a small executed notebook by hand; the
slow tests run lesson 02 on a tiny synthetic data set through `python -m fl_lib slides` and open its deck
in Debian's chromium with Playwright, from a file:// address, as a teacher would on a laptop with no network.
"""
import os
import re

import jupytext
import nbformat
import numpy as np
import plotly.graph_objects as go
import pytest
import yaml

from fl_lib import cli
from fl_lib.core.data import synthetic
from fl_lib.study import report, slides
from tests.servers import CHROMIUM, playwright_or_skip

NOTEBOOKS = report.lesson_paths()
STEMS = [p.stem for p in NOTEBOOKS]
SLIDE_TYPES = {"slide", "subslide", "fragment", "-", "skip", "notes"}


def slide_type(cell) -> str:
    return cell.metadata.get("slideshow", {}).get("slide_type", "-")


def headings(markdown: str) -> list[str]:
    """The '#' and '##' heading lines of a markdown cell, outside fenced code."""
    found, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,2} ", line):
            found.append(line)
    return found


# -- the slide metadata in the lessons' text ----------------------------------------------------------------
@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_the_title_and_every_section_start_a_slide(path):
    cells = jupytext.read(str(path)).cells
    assert cells[0].source.startswith("# ") and slide_type(cells[0]) == "slide"
    for i, cell in enumerate(cells):
        assert slide_type(cell) in SLIDE_TYPES, f"{path.name}, cell {i}: {slide_type(cell)!r}"
        if cell.cell_type != "markdown":
            continue
        found = headings(cell.source)
        if found:  # a section heading opens its cell, which opens a slide; a second one would hide inside
            assert len(found) == 1 and cell.source.startswith(found[0]), f"{path.name}, cell {i}: {found}"
            assert slide_type(cell) == "slide", f"{path.name}, cell {i} ({found[0]}) does not start a slide"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_figures_and_widgets_are_on_slides_and_parameters_are_not(path):
    for i, cell in enumerate(jupytext.read(str(path)).cells):
        tags = cell.metadata.get("tags", [])
        if "parameters" in tags:
            assert slide_type(cell) == "skip"
        elif cell.cell_type == "code" and ("widget" in tags or ".show()" in cell.source):
            assert slide_type(cell) in {"slide", "subslide", "fragment", "-"}, f"{path.name}, cell {i}"


# -- one deck, from a small executed notebook made here ---------------------------------------------------
def _tiny_lesson(tmp_path):
    """A lesson source (percent format, with slide metadata) and an 'executed' copy with outputs, as papermill leaves it."""
    title = nbformat.v4.new_markdown_cell("# 99 · A tiny lesson\n\nThe mean $\\bar{x} = \\frac{1}{n} \\sum_i x_i$.")
    section = nbformat.v4.new_markdown_cell("## A figure\n\nAn explanation.")
    params = nbformat.v4.new_code_cell("n: int = 3  # points")
    figure = nbformat.v4.new_code_cell("fig.show()")
    widget = nbformat.v4.new_code_cell("explorer")
    title.metadata["slideshow"] = section.metadata["slideshow"] = {"slide_type": "slide"}
    params.metadata.update(tags=["parameters"], slideshow={"slide_type": "skip"})
    figure.metadata["slideshow"] = {"slide_type": "subslide"}
    widget.metadata.update(tags=["widget"], slideshow={"slide_type": "subslide"})
    source = nbformat.v4.new_notebook(cells=[title, params, section, figure, widget])
    lesson = tmp_path / "99_tiny.py"
    jupytext.write(source, str(lesson), fmt="py:percent")

    executed = jupytext.read(str(lesson))
    for cell in executed.cells:  # as a report run before the slide breaks were added would have it
        cell.metadata.pop("slideshow", None)
    injected = nbformat.v4.new_code_cell("n = 5\n")
    injected.metadata["tags"] = ["injected-parameters"]
    executed.cells.insert(2, injected)
    fig = go.Figure(go.Scatter(x=[0, 1, 2], y=[1, 3, 2]))
    executed.cells[4].outputs = [nbformat.v4.new_output("display_data",
                                                        data={"application/vnd.plotly.v1+json": fig.to_plotly_json(),
                                                              "text/plain": "a figure"})]
    executed.cells[5].outputs = [nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
        "text/plain": "a widget"})]
    path = tmp_path / "99_tiny.ipynb"
    nbformat.write(executed, str(path))
    return lesson, path


def test_a_deck_loads_only_files_beside_it(tmp_path):
    lesson, executed = _tiny_lesson(tmp_path)
    out = tmp_path / "slides"
    out.mkdir()
    slides.copy_assets(out)
    page = slides.write_deck(executed, lesson, out).read_text(encoding="utf-8")
    assert report.network_references(page) == [] and slides.network_references(page) == []
    sources = re.findall(r"<script[^>]*\bsrc\s*=\s*[\"']?([^\"' >]+)", page)
    links = re.findall(r"<link[^>]*\bhref\s*=\s*[\"']?([^\"' >]+)", page)
    assert sorted(sources) == ["plotly.min.js", "reveal.js/dist/reveal.js", "reveal.js/plugin/notes/notes.js"]
    assert not any(re.match(r"(https?:)?//", s) for s in sources + links), sources + links
    for name in sources + links:  # every file the page loads is there, beside it
        assert (out / name).is_file(), name
    assert (out / "reveal.js" / "LICENSE").is_file()
    for css in out.rglob("*.css"):  # the theme's fonts too are files beside it
        assert report.network_references(css.read_text(encoding="utf-8")) == [], css
    # the slide breaks come from the lesson's text, though the executed copy has none
    assert page.count("<section") == 2 + 4  # two slides (title, section), each a stack: 4 slides within
    assert "Plotly.newPlot" in page and "data:image/svg+xml;base64" in page  # the figure, and TeX as SVG
    assert "$" not in page.split("<section")[1].split("</section>")[0]
    assert "n = 5" not in page and "n: int = 3" not in page  # parameters are skipped
    assert "An interactive widget was here" in page


def test_an_executed_copy_is_reused_only_when_it_ran_this_text_with_these_values(tmp_path):
    lesson, executed = _tiny_lesson(tmp_path)
    nb = nbformat.read(str(executed), as_version=4)
    nb.metadata["papermill"] = {"parameters": {"n": 5}, "exception": None}
    nbformat.write(nb, str(executed))
    assert slides.is_current(executed, lesson, {"n": 5})
    assert not slides.is_current(executed, lesson, {"n": 6})  # other parameters
    assert not slides.is_current(tmp_path / "missing.ipynb", lesson, {"n": 5})
    lesson.write_text(lesson.read_text().replace("An explanation.", "Another explanation."))
    assert not slides.is_current(executed, lesson, {"n": 5})  # the text changed since


def test_reveal_js_comes_from_an_installed_package():
    folder = slides.reveal_source()
    assert "reveal.js 5" in (folder / "dist" / "reveal.js").read_text(encoding="utf-8")[:200]


def test_a_bad_lesson_name_is_one_line(capsys, tmp_path):
    assert cli.main(["slides", "--figures-dir", str(tmp_path), "77"]) == 2
    err = capsys.readouterr().err
    assert "77" in err and "matches 0 lessons" in err and err.count("\n") == 1


# -- lesson 02 through the command, then in a browser ------------------------------------------------------
@pytest.fixture(scope="module")
def deck(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slides")
    ds = synthetic(num_train=400, num_test=200, seed=0)
    data = tmp / "images.npz"
    np.savez(data, x_train=ds.x_train.numpy(), y_train=ds.y_train.numpy(), x_test=ds.x_test.numpy(),
             y_test=ds.y_test.numpy())
    params = tmp / "tiny.yaml"
    params.write_text(yaml.safe_dump({"02_non_iid_partitions": {"dataset": str(data), "num_clients": 6}}))
    args = ["slides", "--params", str(params), "--figures-dir", str(tmp / "figures"), "--no-progress", "02"]
    assert cli.main(args) == 0
    return tmp, args


@pytest.mark.slow
def test_the_command_reuses_the_executed_lesson(deck, capsys):
    tmp, args = deck
    executed = tmp / "figures" / "reports" / "tiny" / "02_non_iid_partitions.ipynb"
    stamp = executed.stat().st_mtime_ns
    assert cli.main(args) == 0
    assert executed.stat().st_mtime_ns == stamp  # not run again
    assert "reusing the executed copy" in capsys.readouterr().err
    out = tmp / "figures" / "slides" / "tiny"
    page = (out / "02_non_iid_partitions.slides.html").read_text(encoding="utf-8")
    assert slides.network_references(page) == [] and page.count("Plotly.newPlot") >= 3
    assert "02_non_iid_partitions.slides.html" in (out / "index.html").read_text()


@pytest.mark.slow
@pytest.mark.browser
def test_the_offline_deck_advances_and_draws_its_figures_in_chromium(deck):
    sync_api = playwright_or_skip()
    tmp, _ = deck
    url = (tmp / "figures" / "slides" / "tiny" / "02_non_iid_partitions.slides.html").as_uri()
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 720}, offline=True)
            page = context.new_page()
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            page.wait_for_function("window.Reveal && Reveal.isReady()", timeout=30_000)
            assert page.evaluate("Reveal.getIndices().h") == 0
            title = page.locator("section.present h1").first.inner_text()  # the lesson's title slide
            for _ in range(len(page.locator("section:not(.stack)").all())):  # until a slide shows a figure
                before = page.evaluate("JSON.stringify(Reveal.getIndices())")
                page.keyboard.press("ArrowRight")
                page.wait_for_function(f"JSON.stringify(Reveal.getIndices()) !== {before!r}", timeout=5_000)
                if page.locator("section.present:not(.stack) .js-plotly-plot").count():
                    break
            assert page.locator("section.present h1").count() == 0 or \
                page.locator("section.present h1").first.inner_text() != title  # we left the title slide
            figure = page.locator("section.present:not(.stack) svg.main-svg").first
            sync_api.expect(figure).to_be_visible(timeout=10_000)
            assert figure.bounding_box()["width"] > 200  # drawn at the slide's size, not in a hidden 0-px box
            shot = os.environ.get("SLIDES_SCREENSHOT")
            if shot:
                page.screenshot(path=shot)
        finally:
            browser.close()
    assert errors == [], f"console errors: {errors}"
