"""The lessons: clean text sources, each runs under papermill on tiny synthetic data, the report's HTML is offline.

One report run (`report.main` with notebooks/params/smoke.yaml, datasets swapped for tiny
synthetic .npz files) executes every lesson once from its text source; the tests below read
its outputs. Issue 15's tests run a lesson with papermill from an unrelated directory.
"""
import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import numpy as np
import papermill as pm
import pytest
import torch
import yaml

from fl_lib.study import lesson
from fl_lib.study import prose
from fl_lib.study import report
from fl_lib.study.analysis import channel_quant_stats
from fl_lib.core.config import parse_list, parse_seeds
from fl_lib.core.data import synthetic
from fl_lib.core.errors import ConfigError, DataError
from fl_lib.study.widgets import PartitionExplorer, QuantExplorer

NOTEBOOKS = report.lesson_paths()
STEMS = [p.stem for p in NOTEBOOKS]
SMOKE = report.NOTEBOOKS_DIR / "params" / "smoke.yaml"
BIN = Path(sys.executable).parent  # jupytext and papermill's commands, installed beside this python


def test_the_lessons_are_there_in_order():
    assert STEMS == ["01_fedsgd_to_fedavg", "02_non_iid_partitions", "03_shakespeare", "04_channelwise_quantization",
                     "05_quantized_fedavg", "06_what_if_report", "07_upload_leakage", "08_privacy_defences",
                     "09_links_and_adaptive_bits", "10_beyond_averaging"]
    assert [int(s[:2]) for s in STEMS] == list(range(1, len(STEMS) + 1))  # numbered without gaps


# -- clean sources ----------------------------------------------------------------------------
def test_lessons_are_text_sources_only():
    """One copy of each lesson: the percent-format .py; no committed .ipynb, no generator script."""
    assert sorted(p.name for p in report.NOTEBOOKS_DIR.glob("*.ipynb")) == []
    assert not (report.NOTEBOOKS_DIR / "make_notebooks.py").exists()
    for path in NOTEBOOKS:
        assert "# %% [markdown]" in path.read_text() and '# %% tags=["parameters"]' in path.read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_notebook_is_committed_without_outputs(path):
    nb = jupytext.read(str(path))
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a cell carries outputs"
            assert cell.execution_count is None, f"{path.name}: a cell carries an execution count"
    assert "widgets" not in nb.metadata and "papermill" not in nb.metadata


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_tex_is_written_as_tex(path):
    """No doubled backslashes: a teacher writes \\alpha as in any TeX document."""
    for cell in jupytext.read(str(path)).cells:
        if cell.cell_type == "markdown":
            assert not re.search(r"\\\\[a-zA-Z]", cell.source), cell.source[:80]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_parameters_cell_holds_only_commented_annotated_scalars(path):
    nb = jupytext.read(str(path))
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first_code.metadata.get("tags", []), "the first code cell must be tagged parameters"
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1
    names = []
    for stmt in ast.parse(first_code.source).body:
        assert isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name), ast.unparse(stmt)
        kind = stmt.annotation.id
        assert kind in ("int", "float", "str", "bool")
        value = ast.literal_eval(stmt.value)  # a literal: nothing derived from other parameters
        assert type(value) is {"int": int, "float": float, "str": str, "bool": bool}[kind], ast.unparse(stmt)
        names.append(stmt.target.id)
    for line in first_code.source.splitlines():
        code, sep, comment = line.partition("  # ")
        assert sep and comment.strip(), f"no trailing comment: {line}"
        assert "=" not in comment, f"papermill cannot parse a comment holding '=': {line}"
    assert list(report.lesson_parameters(path)) == names  # so `papermill --help-notebook` documents them all
    for common in ("data_root", "figures_dir"):
        assert common in names
    for folder in set(lesson.FOLDERS) & set(names):  # "" = the project's own folder, wherever papermill runs
        assert ast.literal_eval(report.lesson_parameters(path)[folder]["default"]) == ""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_common_parameters_are_written_as_lesson_common_declares_them(path):
    """Folders, device, seeds, workers: one declaration (lesson.COMMON), the same line in every lesson with them."""
    cell = next(c for c in jupytext.read(str(path)).cells if "parameters" in c.metadata.get("tags", []))
    common = [line for line in cell.source.splitlines() if line.partition(":")[0] in lesson.COMMON]
    assert common, f"{path.stem} has no common parameter"
    for line in common:
        name, default = line.partition(":")[0], ast.literal_eval(line.partition(" = ")[2].partition("  # ")[0])
        assert line == lesson.parameter_line(name, default)
    lesson.check_parameters(path.stem, report.lesson_parameters(path))  # what the report checks before a run


def test_a_common_parameter_declared_otherwise_is_refused_in_one_line():
    declared = dict(report.lesson_parameters(report.lesson_paths(["05"])[0]))
    lesson.check_parameters("05", declared)
    for name, change in [("device", {"default": '"cpu"'}), ("workers", {"inferred_type_name": "float"}),
                         ("seeds", {"help": "seeds"})]:
        drifted = declared | {name: declared[name] | change}
        with pytest.raises(ConfigError, match=f"05: parameter {name} is declared otherwise .* write it as: "
                                              f"{name}: ") as e:
            lesson.check_parameters("05", drifted)
        assert "\n" not in str(e.value)
    # seeds keeps each lesson's own default
    lesson.check_parameters("05", declared | {"seeds": declared["seeds"] | {"default": '"7"'}})


@pytest.mark.parametrize("params_file", sorted((report.NOTEBOOKS_DIR / "params").glob("*.yaml")), ids=lambda p: p.stem)
def test_params_files_set_common_parameters_once(params_file):
    """A common parameter is set in the shared part; a lesson's section sets it only to differ from it."""
    shared, own = report.read_params(params_file)
    for name in lesson.COMMON:
        sections = [stem for stem, values in own.items() if name in values]
        if name in shared:
            assert not [s for s in sections if own[s][name] == shared[name]], f"{name} repeats the shared value"
        else:
            assert len(sections) <= 1, f"{name} is set in {sections}: set it once, in the shared part"


def test_list_parameters_have_plural_names():
    """A comma-separated list is a plural: bit_widths, seeds, alphas; a single bit width is `bits`."""
    for path in NOTEBOOKS:
        params = report.lesson_parameters(path)
        for name, p in params.items():
            if "comma-separated" in p["help"]:
                assert name.endswith("s"), f"{path.stem}: {name} holds a list"
    assert "bit_widths" in report.lesson_parameters(report.lesson_paths(["05"])[0])
    assert report.lesson_parameters(report.lesson_paths(["04"])[0])["bits"]["inferred_type_name"] == "int"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_every_code_cell_compiles(path):
    for i, cell in enumerate(jupytext.read(str(path)).cells):
        if cell.cell_type == "code":
            source = "\n".join(line for line in cell.source.splitlines() if not line.startswith("%"))
            compile(source, f"{path.name}, cell {i}", "exec")


def test_help_notebook_through_the_documented_pipe():
    """`jupytext --to ipynb -o - LESSON.py | papermill --help-notebook -` lists every parameter."""
    path = report.lesson_paths(["05"])[0]
    conv = subprocess.run([str(BIN / "jupytext"), "--to", "ipynb", "-o", "-", str(path)], capture_output=True,
                          check=True)
    out = subprocess.run([str(BIN / "papermill"), "--help-notebook", "-"], input=conv.stdout, capture_output=True,
                         check=True).stdout.decode()
    for name in report.lesson_parameters(path):
        assert f"  {name}: " in out


# -- one smoke report ---------------------------------------------------------------------------
def _save_npz(path, ds):
    np.savez(path, x_train=ds.x_train.numpy(), y_train=ds.y_train.numpy(),
             x_test=ds.x_test.numpy(), y_test=ds.y_test.numpy())
    return str(path)


@pytest.fixture(scope="module")
def tiny_params(tmp_path_factory):
    """smoke.yaml with its datasets swapped for tiny synthetic .npz files and a private results cache."""
    tmp = tmp_path_factory.mktemp("smoke")
    images = _save_npz(tmp / "images.npz", synthetic(num_train=400, num_test=200, seed=0))
    digits = _save_npz(tmp / "digits.npz", synthetic(num_train=400, num_test=200, channels=1, size=28, seed=0))
    params = yaml.safe_load(SMOKE.read_text())
    for stem, section in params.items():
        if isinstance(section, dict) and "dataset" in report.lesson_parameters(report.NOTEBOOKS_DIR / f"{stem}.py"):
            section["dataset"] = digits if stem.startswith("01") else images
    params["01_fedsgd_to_fedavg"]["mixing_samples"] = 100
    params["results_dir"] = str(tmp / "runs")
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(params))
    return tmp, path, images


@pytest.fixture(scope="module")
def smoke_report(tiny_params):
    tmp, path, _ = tiny_params
    args = argparse.Namespace(params=str(path), name="smoke", notebooks=None, figures_dir=str(tmp / "figures"),
                              no_progress=True, jobs=2)  # two kernels at once: start-up and imports dominate here
    assert report.main(args) == 0
    return tmp / "figures" / "reports" / "smoke"


@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.slow
def test_notebook_runs_under_papermill(smoke_report, stem):
    nb = nbformat.read(str(smoke_report / f"{stem}.ipynb"), as_version=4)
    source = jupytext.read(str(report.NOTEBOOKS_DIR / f"{stem}.py"))
    executed = [c.source for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    assert executed == [c.source for c in source.cells]  # the report ran the text source as it is now
    assert not nb.metadata.papermill.get("exception")
    assert nb.metadata.papermill["duration"] < 120  # each takes seconds here; the guard is loose for busy machines
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "figures_dir" in injected[0].source  # the report points PNGs at its folder
    pngs = sorted(p.name for p in (smoke_report / "figures").glob(f"{stem[:2]}_*.png"))
    assert pngs, f"{stem} saved no figure"
    plotly_outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
                      if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(plotly_outputs) >= 1


@pytest.mark.slow
def test_executed_lessons_type_no_number_into_prose(smoke_report):
    """The report's markdown, as a reader sees it, passes the same check as the sources (test_prose_numbers.py)."""
    quoted = prose.source_phrases(report.NOTEBOOKS_DIR / "prose_numbers.yaml")
    for stem in STEMS:
        nb = nbformat.read(str(smoke_report / f"{stem}.ipynb"), as_version=4)
        assert prose.lesson_typed_numbers(nb.cells, quoted.get(stem, [])) == [], stem


def _exercises(cells) -> list[int]:
    """Indices of a lesson's '### Exercise' cells, checked to sit under one closing '## Exercises' section."""
    sections = [i for i, c in enumerate(cells) if c.cell_type == "markdown"
                and re.search(r"^## ", c.source, flags=re.M)]
    found = [i for i, c in enumerate(cells) if c.cell_type == "markdown"
             and re.search(r"^### Exercise \d+: \S", c.source, flags=re.M)]
    titled = [i for i in sections if cells[i].source.startswith("## Exercises")]
    assert len(titled) == 1 and titled[0] == sections[-1], "one '## Exercises' section, the lesson's last"
    assert 2 <= len(found) <= 3 and all(i > titled[0] for i in found)
    return found


@pytest.mark.slow
def test_every_lesson_ends_with_exercises_whose_answers_the_run_computed(smoke_report):
    """2-3 exercises per lesson; the code cell after each holds a non-empty answer folded into <details>."""
    for stem in STEMS:
        nb = nbformat.read(str(smoke_report / f"{stem}.ipynb"), as_version=4)
        cells = nb.cells
        for i in _exercises(cells):
            code = next(c for c in cells[i + 1:] if c.cell_type == "code")
            assert re.search(r"^\w+ = .+# change me", code.source, flags=re.M), f"{stem}: no variable to change"
            html = "".join(o.get("data", {}).get("text/html", "") for o in code.outputs)
            body = re.search(r"<details><summary>Answer</summary>(.*?)</details>", html, flags=re.S)
            assert body and re.sub(r"<[^>]+>", "", body.group(1)).strip(), f"{stem}, cell {i + 1}: no computed answer"


def _printed(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.slow
def test_lesson_01_prints_its_counts_from_a_second_parameter_set(tiny_params, smoke_report, tmp_path):
    """Shards and theta values follow the parameters: the smoke run and a run with other counts print their own."""
    _, path, _ = tiny_params
    smoke = yaml.safe_load(path.read_text())
    values = smoke["01_fedsgd_to_fedavg"] | {"device": "cpu", "seeds": "0", "results_dir": smoke["results_dir"],
                                              "num_clients": 10, "mixing_thetas": 7, "cnn_rows": "fedsgd",
                                              "figures_dir": str(tmp_path / "figs")}
    nb = jupytext.read(str(report.NOTEBOOKS_DIR / "01_fedsgd_to_fedavg.py"))
    out = pm.execute_notebook(nb, str(tmp_path / "01.ipynb"), parameters=values, kernel_name="python3",
                              progress_bar=False, kernel_manager_class=report.kernel_manager_class())
    first = _printed(nbformat.read(str(smoke_report / "01_fedsgd_to_fedavg.ipynb"), as_version=4))
    second = _printed(out)
    for text, (clients, thetas) in ((first, (20, 5)), (second, (10, 7))):
        assert re.search(rf"non-IID split: {clients} clients x 2 shards = {2 * clients} shards", text), text
        assert f"{thetas} values of theta" in text
    quoted = prose.source_phrases(report.NOTEBOOKS_DIR / "prose_numbers.yaml")["01_fedsgd_to_fedavg"]
    assert prose.lesson_typed_numbers(out.cells, quoted) == []


@pytest.mark.slow
def test_report_html_is_one_offline_page(smoke_report):
    page = (smoke_report / "report.html").read_text(encoding="utf-8")
    assert report.network_references(page) == []
    assert not re.search(r"<script[^>]+src=", page)  # every script is inline
    assert page.count("Plotly.newPlot") >= 13  # 3 + 3 + 1 + 4 + 2 figures, drawn from the inlined plotly.js
    for p in NOTEBOOKS:  # every lesson's title
        heading = next(line for line in p.read_text().splitlines() if line.startswith("# # "))
        title = heading.split("·")[-1].split(":")[0].strip()
        assert title in page
    assert "data:image/svg+xml;base64" in page  # equations drawn as SVG, no MathJax needed
    assert "$$" not in page.split("<script")[0]
    assert "application/vnd.jupyter.widget-state+json" not in page
    widgets = sum("Explorer(" in p.read_text() for p in NOTEBOOKS)  # lessons that show a widget
    assert widgets >= 4 and page.count("An interactive widget was here") == widgets


@pytest.mark.slow
def test_report_shows_progress_bars_in_their_final_state(smoke_report):
    """tqdm's widget text is frozen at 0%; the report keeps one line with the final state instead."""
    nb = nbformat.read(str(smoke_report / "05_quantized_fedavg.ipynb"), as_version=4)
    texts = [o.get("data", {}).get("text/plain", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    bars = [t for t in texts if t.startswith("rounds:")]
    assert bars and all("100%" in t and "2/2" in t for t in bars), bars[:3]
    widgets = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets == []  # 04 has no slider; every widget output was a progress bar
    page = (smoke_report / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"rounds:\s*0%", page) and re.search(r"rounds:\s*100%", page)


def test_report_preflight_fails_before_running_anything(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("02_non_iid_partitions:\n  dataset: no/such/file.npz\n")
    args = argparse.Namespace(params=str(params), name="x", notebooks=["02"], figures_dir=str(tmp_path),
                              no_progress=True)  # only 02: the others would download MNIST/CIFAR-10 if online
    with pytest.raises(DataError, match="no such file"):
        report.main(args)
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("jobs", ["0", "17", "two"])
def test_report_jobs_out_of_range_is_one_line_with_exit_status_2(tmp_path, jobs):
    proc = subprocess.run([sys.executable, "-m", "fl_lib", "report", "--params", str(SMOKE), "--jobs", jobs,
                           "--figures-dir", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "--jobs" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr and not (tmp_path / "reports").exists()


@pytest.mark.parametrize("text, message", [
    ("seedz: '0'\n", "no lesson has a parameter seedz"),
    ("05_quantized_fedavg:\n  alpah: 0.5\n", "has no parameter alpah"),
    ("05_quantized_fedavg:\n  bits: '32,16'\n", "has no parameter bits"),
    ("06_nothing:\n  seeds: '0'\n", "no lesson named 06_nothing"),
    ("05_quantized_fedavg:\n  num_rounds: ten\n", "num_rounds='ten' is not allowed: must be int"),
    ("- 1\n- 2\n", "mapping"),
])
def test_report_rejects_bad_parameter_files(tmp_path, text, message):
    params = tmp_path / "p.yaml"
    params.write_text(text)
    with pytest.raises(ConfigError, match=message):
        report.plan(params)


def test_plan_merges_shared_and_own_values_and_resolves_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.npz").write_bytes(b"")
    params = tmp_path / "p.yaml"
    params.write_text("seeds: 3\nresults_dir: runs\n05_quantized_fedavg:\n  dataset: d.npz\n  seeds: '0,1'\n"
                      "  alpha: 1\n")
    steps = dict((p.stem, v) for p, v in report.plan(params, ["05", "06"], figures_dir="figs"))
    assert steps["05_quantized_fedavg"] == {"seeds": "0,1", "results_dir": str(tmp_path / "runs"),
                                            "dataset": str(tmp_path / "d.npz"), "alpha": 1.0,
                                            "figures_dir": str(tmp_path / "figs")}
    assert steps["06_what_if_report"]["seeds"] == "3"  # a number given for a str parameter becomes text


def test_parse_helpers():
    assert parse_list("32, 16,8") == [32, 16, 8]
    assert parse_list("0.1,100", float) == [0.1, 100.0]
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds(4) == [4]
    with pytest.raises(ConfigError):
        parse_seeds("")
    with pytest.raises(ConfigError):
        parse_list("a,b")


# -- widgets --------------------------------------------------------------------------------------
def test_partition_explorer_redraws_in_place():
    labels = synthetic(num_train=500, num_test=10, seed=0).y_train
    ex = PartitionExplorer(labels, 10, alpha=0.05, num_clients=10, min_size=0)
    fig, z0, text0 = ex.figure, np.array(ex.figure.data[0].z), ex.text.value
    ex.alpha.value = 100.0
    assert ex.figure is fig and not np.array_equal(np.array(fig.data[0].z), z0)
    assert ex.text.value != text0 and ex.stats.tv_distance.mean() < 0.2  # near IID at alpha = 100
    ex.num_clients.value = 25
    assert np.array(fig.data[0].z).shape == (25, 10) and np.array(fig.data[0].z).sum() == 500


def test_quant_explorer_redraws_in_place():
    w = torch.randn(60, generator=torch.Generator().manual_seed(0))
    ex = QuantExplorer(w, bits=3)
    fig, w_hat3 = ex.figure, np.array(ex.figure.data[2].y)
    assert len([v for v in fig.data[0].y if v is not None]) == 2 * 7  # 7 grid levels, two points each
    ex.bits.value = 12
    assert ex.figure is fig
    np.testing.assert_allclose(np.array(fig.data[2].y), channel_quant_stats(w, 12)["w_hat"].numpy())
    assert not np.allclose(np.array(fig.data[2].y), w_hat3)
    assert len(fig.data[0].y) == 0  # 4095 levels: too dense to draw
    assert "12 bits" in ex.text.value


@pytest.mark.slow
def test_partition_widget_in_a_real_kernel(tiny_params, tmp_path, capfd):
    """Lesson 02 in a kernel, then the slider moved from code: the figure's data must change.

    The kernel runs as the report runs it, over IPC: it must not log the TCP warning.
    """
    _, _, images = tiny_params
    nb = report.to_notebook(report.NOTEBOOKS_DIR / "02_non_iid_partitions.py")
    nb.cells.append(nbformat.v4.new_code_cell(
        "z0 = explorer.figure.data[0].z.copy()\n"
        "explorer.alpha.value = 100.0\n"
        "assert (explorer.figure.data[0].z != z0).any()\n"
        "explorer.num_clients.value = 7\n"
        "assert len(explorer.figure.data[0].z) == 7\n"
        "print('widget ok:', explorer.text.value)"))
    out = pm.execute_notebook(nb, str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False,
                              kernel_manager_class=report.kernel_manager_class(),
                              parameters={"dataset": images, "figures_dir": str(tmp_path / "figs")})
    assert "widget ok" in "".join(o.get("text", "") for o in out.cells[-1].outputs)
    assert "TCP without encryption" not in capfd.readouterr().err


# -- issue 15: papermill from any directory writes inside the project or where the user said ----------
def _tree(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


def test_folder_defaults_are_the_projects_wherever_the_kernel_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    project = Path(lesson.__file__).resolve().parents[2]  # fl_lib/study/lesson.py
    assert lesson.folder("results_dir", "") == str(project / "data" / "runs")
    assert lesson.folder("data_root", "") == str(project / "data")
    assert lesson.folder("figures_dir", "") == str(project / "figures")
    assert lesson.folder("results_dir", "runs") == str(tmp_path / "runs")  # relative: to the cwd
    assert lesson.folder("figures_dir", "/abs/figs") == "/abs/figs"
    assert _tree(tmp_path) == []  # resolving writes nothing


@pytest.mark.slow
def test_papermill_from_an_unrelated_directory(tiny_params, tmp_path, monkeypatch):
    """papermill.execute_notebook run from a temporary cwd: relative paths are the cwd's, defaults the project's."""
    _, _, images = tiny_params
    base = tmp_path / "a"
    cwd = base / "b" / "c"  # the kernel starts here; nothing but the output may appear in c or in b
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    path = report.lesson_paths(["06"])[0]
    nb = jupytext.read(str(path))  # what the README's one-line conversion gives papermill
    nb.cells.append(nbformat.v4.new_code_cell(  # the defaults as the kernel sees them
        "from fl_lib import lesson\n"
        "print(lesson.folder('results_dir', ''))\n"
        "print(lesson.folder('data_root', ''))"))
    smoke = yaml.safe_load(SMOKE.read_text())["06_what_if_report"] | {"dataset": images, "device": "cpu"}
    pm.execute_notebook(nb, "out.ipynb", parameters=smoke | {"results_dir": "../../runs", "figures_dir": "../../figs"},
                        kernel_name="python3", progress_bar=False, kernel_manager_class=report.kernel_manager_class())
    assert _tree(base / "b") == ["c", "c/out.ipynb"]
    runs = [p for p in (base / "runs").iterdir() if (p / "summary.json").is_file()]
    assert len(runs) == 6  # 2 alphas x 2 bit widths x 1 seed, and alpha 0.5's 2 with a second seed for the
    # spread between seeds, each a cached run folder
    assert sorted(p.name for p in (base / "figs").glob("*.png")) == ["06_accuracy_grid.png", "06_upload_grid.png"]
    out = nbformat.read("out.ipynb", as_version=4)
    assert not out.metadata.papermill.get("exception")
    project = Path(lesson.__file__).resolve().parents[2]  # fl_lib/study/lesson.py
    printed = out.cells[-1].outputs[0]["text"].split()
    assert printed == [str(project / "data" / "runs"), str(project / "data")]  # the README's "data/runs"
