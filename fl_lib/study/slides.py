"""`python -m fl_lib slides`: each executed lesson as a reveal.js slide deck that opens with no network.

Where the slide breaks come from: the lessons' own cell metadata (`slideshow`), which jupytext keeps
in the `# %%` header lines, so the decks here and the live deck in JupyterLab (jupyterlab-slideshow) break
at the same cells: the title and each `##` section start a slide, text and figures below them are sub-slides.

Where the executed notebooks come from: the report's folder, figures/reports/NAME/ (NAME is the
parameters file's name, as for `python -m fl_lib report`). A lesson whose executed copy there ran
the current text with the current parameters is reused as it is, so `make study` then `make slides`
runs nothing twice; any other lesson is run first, by the report's own machinery, into that folder.
The slide metadata is then taken from the lesson's text as it is now, so moving a slide break never
needs a rerun.

What lands in the output folder (default figures/slides/NAME/): one NN_name.slides.html per lesson,
an index.html linking them, reveal.js (copied from the sphinx-revealjs package) and plotly.min.js
(from the plotly package). The decks load both by relative path: copy the folder as a whole.
TeX and plotly figures are made static by the report's own functions (TeX as SVG, no MathJax).
"""
from __future__ import annotations

import html
import re
import shutil
import sys
from pathlib import Path

from ..core.errors import ConfigError, FLError
from . import report
from .lesson import FOLDERS, NOTEBOOKS_DIR

REVEAL_DIR = "reveal.js"  # beside the decks; the template's reveal_url_prefix
PLOTLY_JS = "plotly.min.js"
THEME = "white"  # its fonts ship beside it; other themes (and nbconvert's default, simple) import web fonts
REVEAL_FILES = ("LICENSE", "dist/reveal.js", "dist/reveal.css", f"dist/theme/{THEME}.css",
                "dist/theme/fonts/source-sans-pro", "plugin/notes/notes.js")
WIDTH, HEIGHT = 1280, 720  # a 16:9 projector; reveal.js scales the slide to the window

_TEMPLATE = """{%- extends 'reveal/index.html.j2' -%}
{%- block html_head_js -%}<script src="PLOTLY_JS"></script>{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_css -%}
<style type="text/css">
/* a slide taller than the screen scrolls instead of being cut off */
.reveal .slides section:not(.stack) { max-height: 100%; overflow-y: auto; }
.reveal .slides { text-align: left; }
.reveal h1, .reveal h2, .reveal h3 { text-transform: none; }  /* the theme's capitals hide symbols like E and K */
.reveal section img { margin: 0; }  /* TeX drawn as SVG sits on the line of text, as in the report */
</style>
{%- endblock html_head_css -%}
{% block footer_js %}
<script src="REVEAL_DIR/dist/reveal.js"></script>
<script src="REVEAL_DIR/plugin/notes/notes.js"></script>
<script>
Reveal.initialize({
  controls: true, progress: true, history: true, hash: true,
  navigationMode: "linear",  // the arrow keys and a clicker visit every slide, sub-slides included
  transition: "{{ resources.reveal.transition }}", slideNumber: "{{ resources.reveal.number }}",
  width: {{ resources.reveal.width }}, height: {{ resources.reveal.height }},
  plugins: [RevealNotes]
});
// plotly sizes a figure when it is drawn; one drawn on a hidden slide gets its size when shown
Reveal.on("slidechanged", function (event) {
  event.currentSlide.querySelectorAll(".js-plotly-plot").forEach(function (el) { Plotly.Plots.resize(el); });
});
</script>
{% endblock footer_js %}
""".replace("PLOTLY_JS", PLOTLY_JS).replace("REVEAL_DIR", REVEAL_DIR)


# -- where reveal.js comes from ----------------------------------------------------------------------
def reveal_source() -> Path:
    """reveal.js's folder inside the installed sphinx-revealjs package (found, not imported: no Sphinx start-up)."""
    import importlib.util

    spec = importlib.util.find_spec("sphinx_revealjs")
    folder = Path(next(iter(spec.submodule_search_locations))) / "_static" / "revealjs" if spec else None
    if folder is None or not (folder / "dist" / "reveal.js").is_file():
        raise FLError("reveal.js not found: the offline slides copy it from the sphinx-revealjs package "
                      "(pip install -r requirements.txt, or pip install sphinx-revealjs)")
    return folder


def copy_assets(out: Path) -> None:
    """reveal.js (only what a deck loads) and plotly.js, beside the decks."""
    from plotly.offline import get_plotlyjs

    source, target = reveal_source(), out / REVEAL_DIR
    for name in REVEAL_FILES:
        src, dst = source / name, target / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copyfile(src, dst)
    (out / PLOTLY_JS).write_text(get_plotlyjs(), encoding="utf-8")


# -- executed notebooks: reused when current, run otherwise ------------------------------------------
def _own_cells(nb):
    """The cells that came from the lesson's text (papermill adds one with the injected parameters)."""
    return [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]


def is_current(executed: Path, lesson: Path, values: dict) -> bool:
    """Whether `executed` ran the lesson's text as it is now, with these parameters, without an error."""
    import nbformat

    if not executed.is_file():
        return False
    nb = nbformat.read(str(executed), as_version=4)
    run = nb.metadata.get("papermill", {})
    source = report.to_notebook(lesson)
    return (not run.get("exception") and run.get("parameters", {}) == values
            and [c.source for c in _own_cells(nb)] == [c.source for c in source.cells])


def executed_notebooks(steps, report_dir: Path, progress=True) -> list[Path]:
    """Each lesson's executed notebook in the report folder, running only those missing or out of date."""
    stale = [(lesson, values) for lesson, values in steps
             if not is_current(report_dir / f"{lesson.stem}.ipynb", lesson, values)]
    for lesson, _ in steps:
        fresh = all(lesson != s for s, _ in stale)
        print(f"{lesson.stem}: {'reusing the executed copy in ' + str(report_dir) if fresh else 'running it'}",
              file=sys.stderr)
    if stale:
        report.preflight(stale)
        report.execute(stale, report_dir, progress=progress)
    return [report_dir / f"{lesson.stem}.ipynb" for lesson, _ in steps]


# -- one deck -----------------------------------------------------------------------------------------
def slide_notebook(executed: Path, lesson: Path):
    """The executed notebook with the lesson's current slide metadata, made static for an offline page."""
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    for cell in nb.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.metadata["slideshow"] = {"slide_type": "skip"}  # the values are the report's business
    for cell, now in zip(_own_cells(nb), report.to_notebook(lesson).cells):
        cell.metadata.pop("slideshow", None)
        if "slideshow" in now.metadata:
            cell.metadata["slideshow"] = now.metadata["slideshow"]
    return report._offline_cells(nb)


def write_deck(executed: Path, lesson: Path, out: Path) -> Path:
    """One lesson's slides as out/NN_name.slides.html; refuses a page that would reach the network."""
    from jinja2 import DictLoader
    from nbconvert import SlidesExporter

    exporter = SlidesExporter(extra_loaders=[DictLoader({"offline_slides.html.j2": _TEMPLATE})],
                              template_file="offline_slides.html.j2", reveal_url_prefix=REVEAL_DIR,
                              reveal_theme=THEME, reveal_number="c/t", reveal_width=str(WIDTH),
                              reveal_height=str(HEIGHT), reveal_transition="none")
    body, _ = exporter.from_notebook_node(slide_notebook(executed, lesson),
                                          resources={"metadata": {"name": lesson.stem}})
    remote = network_references(body)
    if remote:
        raise FLError(f"the slides of {lesson.stem} would fetch {remote[:3]} from the network")
    path = out / f"{lesson.stem}.slides.html"
    path.write_text(body, encoding="utf-8")
    return path


def network_references(page: str) -> list[str]:
    """The report's check, plus any script loaded by URL: a deck loads only files beside it."""
    scripts = [s for s in re.findall(r"<script[^>]*\bsrc\s*=\s*[\"']?([^\"' >]+)", page, re.I)
               if re.match(r"(?:[a-z]+:)?//", s, re.I)]
    return report.network_references(page) + scripts


def write_index(decks: list[Path], out: Path, source: str) -> Path:
    links = "\n".join(f'<li><a href="{html.escape(p.name)}">{html.escape(p.name.removesuffix(".slides.html"))}</a></li>'
                      for p in decks)
    page = out / "index.html"
    page.write_text(f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>fl_lib slides</title>"
                    f"</head><body><h1>fl_lib slides</h1><p>From {html.escape(source)}. Arrow keys or space: next "
                    f"slide; Esc: overview; S: speaker notes.</p><ul>\n{links}\n</ul></body></html>\n",
                    encoding="utf-8")
    return page


# -- the command ---------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("lessons", nargs="*", metavar="LESSON",
                   help="lessons by number or name (e.g. 02 05_quantized); default all")
    p.add_argument("--params", default=str(NOTEBOOKS_DIR / "params" / "default.yaml"),
                   help="YAML file of lesson parameters, as for report (default notebooks/params/default.yaml)")
    p.add_argument("--name", default=None,
                   help="the report whose executed lessons to reuse, figures/reports/NAME/ (default: the params "
                        "file's name); lessons missing there, or run from other text or parameters, run first")
    p.add_argument("--figures-dir", default=str(FOLDERS["figures_dir"]),
                   help="base folder of reports and slides (default: the project's figures/)")
    p.add_argument("--out", default=None, help="folder for the decks (default: FIGURES_DIR/slides/NAME/)")
    p.add_argument("--no-progress", action="store_true", help="no per-cell progress bar when a lesson runs")


def main(args) -> int:
    name = args.name or Path(args.params).stem
    if not re.fullmatch(r"[\w.-]+", name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '_', '-' or '.'")
    report_dir = Path(args.figures_dir) / "reports" / name
    out = Path(args.out) if args.out else Path(args.figures_dir) / "slides" / name
    steps = report.plan(args.params, args.lessons or None, figures_dir=report_dir / "figures")
    executed = executed_notebooks(steps, report_dir, progress=not args.no_progress)
    out.mkdir(parents=True, exist_ok=True)
    copy_assets(out)
    decks = [write_deck(nb, lesson, out) for nb, (lesson, _) in zip(executed, steps)]
    index = write_index(decks, out, f"python -m fl_lib slides --params {args.params}")
    print(f"slides: {index.resolve()} ({len(decks)} decks; reveal.js and plotly.js beside them, no network needed)")
    return 0
