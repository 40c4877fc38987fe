"""`python -m fl_lib report`: run the lessons with papermill and bind them into one offline HTML file.

A lesson's source is the jupytext percent-format text file notebooks/0N_name.py, the one copy a
teacher edits. The report converts each to a notebook in memory and runs it with papermill,
so the executed .ipynb in the report folder always comes from the text as it is now.

The parameters file is a YAML mapping. Top-level scalar keys are shared: each goes to every
lesson that has a parameter of that name. A top-level key naming a lesson (its file
stem, e.g. `05_quantized_fedavg`) holds a mapping of parameters for that lesson only,
which win over the shared ones:

    seeds: "0,1,2"              # shared
    05_quantized_fedavg:
      dataset: cifar10
      num_rounds: 20

The parameters common to the lessons (fl_lib.study.lesson.COMMON: folders, device, seeds,
workers) belong in the shared part; a lesson whose parameters cell declares one of them
otherwise than COMMON does is refused before anything runs.
A shared key no lesson has, or a lesson key that lesson lacks, is an error (a typo
would otherwise be ignored silently). Paths given in the file (data_root, results_dir,
figures_dir, and a dataset that is an .npz file) are relative to the current directory;
folders the file leaves out are the project's own (fl_lib.lesson.FOLDERS).
Every dataset is loaded once before any lesson runs, so a missing download fails at
once with fl_lib's DataError instead of half-way through the report.
"""
from __future__ import annotations

import base64
import html
import io
import os
import re
import sys
import time
from pathlib import Path

from ..core import dataset_name
from ..core.errors import ConfigError, FLError
from .lesson import FOLDERS, NOTEBOOKS_DIR, PROJECT, check_parameters

PATH_PARAMS = tuple(FOLDERS)
KERNEL = "python3"


# -- the plan: which lessons, with which parameters ---------------------------
def lesson_paths(selection=None) -> list[Path]:
    """The numbered lesson sources in order; `selection` picks some by stem or number prefix ('01', '05_quantized')."""
    paths = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.py"))
    if not selection:
        return paths
    chosen = []
    for s in selection:
        hits = [p for p in paths if p.stem == s or p.stem.startswith(s)]
        if len(hits) != 1:
            names = ", ".join(p.stem for p in paths)
            raise ConfigError(f"--notebooks {s!r} matches {len(hits)} lessons; choose from {names}")
        chosen.append(hits[0])
    return sorted(set(chosen))


def to_notebook(lesson: Path):
    """The lesson's text source as an nbformat notebook (no outputs), what papermill runs."""
    import jupytext

    return jupytext.read(str(lesson))


def lesson_parameters(lesson: Path) -> dict:
    """papermill's reading of the lesson's `parameters` cell: {name: {inferred_type_name, default, help}}."""
    import tempfile

    import nbformat
    import papermill as pm

    with tempfile.TemporaryDirectory() as tmp:  # papermill inspects a notebook file, so write one
        path = Path(tmp) / f"{lesson.stem}.ipynb"
        nbformat.write(to_notebook(lesson), str(path))
        return pm.inspect_notebook(str(path))


def read_params(path) -> tuple[dict, dict]:
    """The YAML file as (shared parameters, {notebook stem: its own parameters})."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--params {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--params {path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--params {path}: must hold a mapping of parameter names to values")
    def is_section(k, v):  # a notebook's own mapping; an empty one ("02_non_iid_partitions:") reads as None
        return isinstance(v, dict) or (v is None and re.match(r"\d\d_", str(k)))

    shared = {k: v for k, v in data.items() if not is_section(k, v)}
    own = {k: v or {} for k, v in data.items() if is_section(k, v)}
    return shared, own


def _coerce(notebook, name, value, kind):
    """A YAML value checked against the parameter's annotation (numbers given for str become text)."""
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "bool": lambda v: isinstance(v, bool),
          "str": lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool)}
    if kind in ok and not ok[kind](value):
        raise ConfigError(f"{notebook}: {name}={value!r} is not allowed: must be {kind}")
    return float(value) if kind == "float" else str(value) if kind == "str" else value


def _resolve(name, value, base: Path):
    """Make a path-valued parameter absolute, relative to `base`."""
    is_npz = name == "dataset" and (str(value).endswith(".npz") or (base / str(value)).is_file())
    if name in PATH_PARAMS or is_npz:
        return str((base / str(value)).resolve())
    named = dataset_name.parse(str(value), ConfigError) if name == "dataset" else None
    if named is not None and named.subset and named.source.endswith(".npz"):  # a subset of a file
        return f"{(base / named.source).resolve()}:{named.subset}"
    return value


def plan(params_file, selection=None, figures_dir=None) -> list[tuple[Path, dict]]:
    """(lesson, parameters to inject) for each lesson to run, every value checked."""
    shared, own = read_params(params_file)
    paths = lesson_paths(selection)
    declared = {p.stem: lesson_parameters(p) for p in lesson_paths()}
    unknown = sorted(set(own) - set(declared))
    if unknown:
        raise ConfigError(f"{params_file}: no lesson named {', '.join(unknown)}; lessons: {', '.join(declared)}")
    every = set().union(*(d.keys() for d in declared.values()))
    stray = sorted(set(shared) - every)
    if stray:
        raise ConfigError(f"{params_file}: no lesson has a parameter {', '.join(stray)}")
    cwd = Path.cwd()
    out = []
    for p in paths:
        params = declared[p.stem]
        check_parameters(p.stem, params)
        bad = sorted(set(own.get(p.stem, {})) - set(params))
        if bad:
            raise ConfigError(f"{params_file}: {p.stem} has no parameter {', '.join(bad)}; "
                              f"it has {', '.join(params)}")
        values = {k: v for k, v in shared.items() if k in params} | own.get(p.stem, {})
        values = {k: _resolve(k, _coerce(p.stem, k, v, params[k]["inferred_type_name"]), cwd)
                  for k, v in values.items()}
        if figures_dir is not None and "figures_dir" in params and "figures_dir" not in values:
            values["figures_dir"] = str(Path(figures_dir).resolve())
        out.append((p, values))
    return out


def _default(params, name):
    """A lesson parameter's default value (the literal in its parameters cell)."""
    import ast

    return ast.literal_eval(params[name]["default"]) if name in params else None


def preflight(steps) -> None:
    """Load every dataset the lessons will use (downloading it if needed); raises fl_lib's DataError."""
    from ..core.data import load_dataset
    from ..core.errors import DataError
    from .lesson import folder

    seen = set()
    for lesson, values in steps:
        params = lesson_parameters(lesson)
        if "dataset" not in params:
            continue
        dataset = _resolve("dataset", values.get("dataset", _default(params, "dataset")), Path.cwd())
        root = folder("data_root", values.get("data_root", _default(params, "data_root") or ""))
        if (dataset, root) not in seen:
            seen.add((dataset, root))
            print(f"checking dataset {dataset} (data_root {root})", file=sys.stderr)
            try:
                load_dataset(dataset, root)
            except DataError as e:
                hint = "" if str(dataset).endswith(".npz") else (
                    ". The whole report without internet: point the dataset lines of "
                    "notebooks/params/offline.yaml at your .npz files and run python -m fl_lib report "
                    "--params notebooks/params/offline.yaml (README: 'Running offline')")
                raise DataError(f"{lesson.stem}: {e}{hint}") from None


# -- running -----------------------------------------------------------------
def kernel_manager_class():
    """A kernel manager that talks to the kernel over local IPC sockets instead of TCP.

    Over TCP the kernel logs "Kernel is running over TCP without encryption" into every
    report. The sockets are files beside the kernel's connection file in Jupyter's runtime
    folder (never the working directory) and are removed with it when the kernel stops.
    ZeroMQ has no IPC sockets on Windows, so there the kernel keeps TCP on localhost.
    """
    from jupyter_client.manager import AsyncKernelManager

    if os.name == "nt":
        return AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            import uuid

            from jupyter_core.paths import jupyter_runtime_dir

            super().__init__(**kwargs)
            runtime = Path(jupyter_runtime_dir())
            runtime.mkdir(parents=True, exist_ok=True)
            self.connection_file = str(runtime / f"kernel-{uuid.uuid4()}.json")
            self.transport = "ipc"  # the sockets: <connection file without .json>-ipc-<n>

    return IPCKernelManager


def execute(steps, out_dir: Path, progress=True, jobs=1) -> list[tuple[Path, float]]:
    """Run each lesson with papermill; returns (executed notebook, seconds) each, in lesson order.

    The kernel starts in the current directory, like papermill's own command; every path a
    lesson uses is absolute by then (plan() resolves the file's, fl_lib.lesson the defaults).
    `jobs` lessons run at once, each in its own kernel; the per-cell progress bars then stay
    off, since several would overwrite each other's line. The first lesson that fails stops
    the report: lessons still waiting are cancelled, those already running finish.
    """
    from concurrent.futures import ThreadPoolExecutor

    out_dir.mkdir(parents=True, exist_ok=True)
    env_path = os.environ.get("PYTHONPATH", "")
    if str(PROJECT) not in env_path.split(os.pathsep):  # the kernel imports this fl_lib even if not installed
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT), env_path) if p)
    if jobs <= 1:
        return [_execute_one(lesson, values, out_dir, progress) for lesson, values in steps]
    with ThreadPoolExecutor(jobs) as pool:  # a thread waits on its kernel; the kernels do the work
        futures = [pool.submit(_execute_one, lesson, values, out_dir, False) for lesson, values in steps]
        try:
            return [f.result() for f in futures]
        except BaseException:
            pool.shutdown(cancel_futures=True)  # lessons not started yet never start
            raise


def _execute_one(lesson: Path, values: dict, out_dir: Path, progress: bool) -> tuple[Path, float]:
    import nbformat
    import papermill as pm

    target = out_dir / f"{lesson.stem}.ipynb"
    print(f"running {lesson.name} with {values or 'its defaults'}", file=sys.stderr)
    start = time.perf_counter()
    try:
        pm.execute_notebook(to_notebook(lesson), str(target), parameters=values, kernel_name=KERNEL,
                            progress_bar=progress, kernel_manager_class=kernel_manager_class())
    except pm.PapermillExecutionError as e:
        raise FLError(f"{lesson.name} failed in cell {e.exec_count} ({e.ename}: {e.evalue}); "
                      f"the executed copy with the whole traceback is {target}") from None
    seconds = time.perf_counter() - start
    nbformat.write(settle_progress_bars(nbformat.read(str(target), as_version=4)), str(target))
    print(f"  {lesson.name}: {seconds:.0f} s", file=sys.stderr)
    return target, seconds


def settle_progress_bars(nb):
    """Replace each tqdm bar in an executed notebook by one text line with its final state.

    In a kernel tqdm draws an ipywidgets bar whose text fallback is frozen at its first
    frame ("rounds: 0%| | 0/20"); the final values live in the widget state that nbclient
    stores in the notebook's metadata. Other widgets (the lessons' sliders) are left alone.
    """
    import nbformat

    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})

    def model(ref):
        return state.get(str(ref).removeprefix("IPY_MODEL_"), {})

    def final_text(out):
        view = out.get("data", {}).get("application/vnd.jupyter.widget-view+json")
        box = model(view["model_id"]) if view else {}
        parts = [model(c) for c in box.get("state", {}).get("children", [])]
        names = [m.get("model_name") for m in parts]
        if box.get("model_name") != "HBoxModel" or names not in (["HTMLModel", "FloatProgressModel", "HTMLModel"],
                                                                 ["HTMLModel", "IntProgressModel", "HTMLModel"]):
            return None  # not a tqdm bar
        left, right = (html.unescape(m["state"].get("value", "")) for m in (parts[0], parts[2]))
        return f"{left} |{right}".replace("\u2007", " ")

    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [nbformat.v4.new_output("display_data", data={"text/plain": text})
                            if (text := final_text(out)) is not None else out for out in cell.get("outputs", [])]
    return nb


# -- one offline HTML file ------------------------------------------------------
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}<script type="text/javascript">{{ resources.plotly_js }}</script>{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""
WIDGET_NOTE = ("<p><i>An interactive widget was here: open the lesson in JupyterLab to move its sliders. "
               "The text printed just above it comes from the same computation, at the lesson's parameter "
               "values.</i></p>")
_MATH = re.compile(r"\$\$(.+?)\$\$|\$([^$\n]+?)\$", re.S)


def mathtext_tex(tex: str) -> str:
    """The lessons' TeX in the subset matplotlib's mathtext draws: the same symbols, other spellings.

    mathtext has no sizing commands (the delimiters are drawn at their natural size), spells
    \\le and \\ge as \\leq and \\geq, wants braces after \\sqrt and accents, has no \\text,
    \\dots, \\bmod, \\pmod or \\! and draws one line. What it still cannot draw (`cases`) stays TeX source.
    """
    tex = " ".join(tex.split())  # one line
    tex = re.sub(r"\\(?:big|Big|bigg|Bigg)(?![a-zA-Z])", "", tex)
    tex = re.sub(r"\\(le|ge)(?![a-zA-Z])", r"\\\1q", tex)
    tex = re.sub(r"\\text\{([^}]*)\}", lambda m: r"\mathrm{" + m.group(1).replace(" ", r"\ ") + "}", tex)
    tex = re.sub(r"\\sqrt\s*([A-Za-z0-9])", r"\\sqrt{\1}", tex)
    tex = re.sub(r"\\(tilde|hat|bar)\\([A-Za-z]+)", r"\\\1{\\\2}", tex)
    tex = re.sub(r"\\dots(?![a-zA-Z])", r"\\ldots", tex)
    tex = re.sub(r"\\bmod(?![a-zA-Z])", r"\\ \\mathrm{mod}\\ ", tex)
    tex = re.sub(r"\\pmod\{([^}]*)\}", r"\\ (\\mathrm{mod}\\ \1)", tex)
    return tex.replace(r"\!", "")


def _tex_image(tex: str, display: bool) -> str:
    """TeX rendered to an inline SVG <img> by matplotlib's mathtext (no MathJax, no network)."""
    from matplotlib import mathtext
    from matplotlib.font_manager import FontProperties

    buf = io.BytesIO()
    try:
        depth = mathtext.math_to_image(f"${mathtext_tex(tex)}$", buf, prop=FontProperties(size=15 if display else 12),
                                       format="svg")
    except Exception:  # a symbol mathtext lacks: show the TeX source instead
        return html.escape(f"$${tex}$$" if display else f"${tex}$")
    src = "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode()
    alt = html.escape(tex.strip(), quote=True)
    if display:
        return f'\n\n<div style="text-align:center;margin:0.6em 0"><img src="{src}" alt="{alt}"></div>\n\n'
    return f'<img src="{src}" alt="{alt}" style="vertical-align:-{depth or 0:.1f}px">'


def _offline_cells(nb):
    """Rewrite an executed notebook for a static page: TeX as SVG, plotly JSON as HTML, widgets as a note."""
    import plotly.io as pio

    nb.metadata.pop("widgets", None)  # widget state would pull the widget manager from a CDN
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = _MATH.sub(lambda m: _tex_image(m.group(1) or m.group(2), m.group(1) is not None),
                                    cell.source)
            continue
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                continue  # progress bars and sliders: nothing to show without a kernel
            if "application/vnd.plotly.v1+json" in data:
                fig = data["application/vnd.plotly.v1+json"]
                data["text/html"] = pio.to_html(fig, include_plotlyjs=False, full_html=False,
                                                config={"displaylogo": False})
            outputs.append(out)
        if "widget" in cell.metadata.get("tags", []):
            import nbformat

            outputs.append(nbformat.v4.new_output("display_data", data={"text/html": WIDGET_NOTE}))
        cell.outputs = outputs
    return nb


def build_html(executed, html_path: Path, title: str, header_md: str) -> Path:
    """One self-contained HTML page of all executed notebooks, plotly.js inlined once."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    from plotly.offline import get_plotlyjs

    book = nbformat.v4.new_notebook()
    book.cells.append(nbformat.v4.new_markdown_cell(header_md))
    for path in executed:
        nb = nbformat.read(str(path), as_version=4)
        for i, cell in enumerate(nb.cells):  # ids must stay unique in the merged notebook
            cell.id = f"{path.stem[:40]}-{i}"
        book.cells.extend(_offline_cells(nb).cells)
        if not book.metadata.get("kernelspec"):
            book.metadata = nb.metadata
    exporter = HTMLExporter(extra_loaders=[DictLoader({"offline.html.j2": _TEMPLATE})],
                            template_file="offline.html.j2")
    body, _ = exporter.from_notebook_node(book, resources={"plotly_js": get_plotlyjs(),
                                                           "metadata": {"name": title}})
    html_path.write_text(body, encoding="utf-8")
    return html_path


def network_references(text: str) -> list[str]:
    """Scripts, stylesheets, images, frames or CSS imports the page would fetch from the network.

    (The inlined plotly.js mentions CDN addresses as strings, for map tiles and geo outlines:
    plotly fetches them only for map plots, which the notebooks do not draw.)
    """
    tags = re.findall(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//[^\"' >]+",
                      text, re.I)
    css = re.findall(r"@import\s+(?:url\()?[\"']?(?:https?:)?//[^\"' )]+|url\([\"']?https?://[^\"' )]+", text, re.I)
    return tags + css


# -- the command -------------------------------------------------------------------
MAX_JOBS = 16  # one kernel each: a few hundred MB of memory apiece


def add_arguments(p) -> None:
    p.add_argument("--params", default=str(NOTEBOOKS_DIR / "params" / "default.yaml"),
                   help="YAML file of notebook parameters (default notebooks/params/default.yaml)")
    p.add_argument("--name", default=None, help="report name: figures/reports/NAME/ (default: the params file's name)")
    p.add_argument("--notebooks", nargs="+", default=None, metavar="NB",
                   help="run only these notebooks, by number or name (e.g. 02 03); default all")
    p.add_argument("--figures-dir", default=str(FOLDERS["figures_dir"]),
                   help="base folder for reports (default: the project's figures/)")
    p.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="lessons run at once, each in its own kernel (default 1). More pays where kernel "
                        "start-up and imports dominate, as with smoke.yaml; the lessons' own runs already "
                        "use every core (their workers parameter), so for real runs keep 1")


def main(args) -> int:
    name = args.name or Path(args.params).stem
    if not re.fullmatch(r"[\w.-]+", name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '_', '-' or '.'")
    jobs = getattr(args, "jobs", 1)
    if not 1 <= jobs <= MAX_JOBS:
        raise ConfigError(f"--jobs {jobs}: run 1 to {MAX_JOBS} lessons at once")
    out_dir = Path(args.figures_dir) / "reports" / name
    steps = plan(args.params, args.notebooks, figures_dir=out_dir / "figures")
    preflight(steps)  # before anything runs: an offline machine stops here, with DataError
    start = time.perf_counter()
    done = execute(steps, out_dir, progress=not getattr(args, "no_progress", False), jobs=jobs)
    total = time.perf_counter() - start
    timing = "\n".join(f"| {p.stem} | {s:.0f} s |" for p, s in done)
    command = f"python -m fl_lib report --params {args.params}" + (f" --jobs {jobs}" if jobs > 1 else "")
    header = (f"# Report `{name}`\n\nMade by `{command}` on "
              f"{time.strftime('%Y-%m-%d %H:%M')}. Each notebook below starts with its parameters "
              f"(the cell tagged `injected-parameters` holds the values from the file).\n\n"
              f"| notebook | run time |\n|---|---|\n{timing}\n| total | {total:.0f} s |\n\n"
              f"Parameters file:\n\n```yaml\n{Path(args.params).read_text().strip()}\n```\n")
    page = build_html([p for p, _ in done], out_dir / "report.html", f"fl_lib report {name}", header)
    remote = network_references(page.read_text(encoding="utf-8"))
    if remote:  # the page must open offline
        raise FLError(f"{page} would fetch {remote[:3]} from the network")
    print(f"report: {page.resolve()} ({len(done)} notebooks, {total:.0f} s); executed notebooks and PNGs in "
          f"{out_dir.resolve()}")
    return 0
