"""Live slides: lesson 02 presented in JupyterLab (jupyterlab-slideshow's deck mode), its slider redrawing the figure.

jupyterlab-rise 0.43.1 cannot show ipywidgets 8 (its /rise/ page bundles JupyterLab 4.3 and has no
@jupyterlab/console to share, so the widget manager fails to load: jupyterlab-contrib/rise#119, #126).
jupyterlab-slideshow presents inside JupyterLab itself, so the widgets use JupyterLab's own widget manager.
The test runs lesson 02 on the small synthetic data set in a real JupyterLab on a free local port, as a
teacher would: Run All, select the title, start the deck, advance to the slider and move it.
"""
import os
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

from tests.servers import CHROMIUM, free_port, playwright_or_skip, stop_group, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
LESSON = ROOT / "notebooks" / "02_non_iid_partitions.py"
WAIT_MS = 120_000  # Run All of lesson 02 on synthetic data took 15 s alone; generous for a loaded 2-core machine
MAX_STEPS = 60  # space presses allowed to reach the slider from the title


def _lesson_notebook(folder: Path) -> Path:
    """Lesson 02 as an .ipynb whose parameters cell (still skipped in the slides) picks the synthetic data set."""
    notebook = jupytext.read(LESSON)
    [params] = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    params.source += (f'\ndataset = "synthetic"\ndata_root = "{folder / "data"}"\n'
                      f'figures_dir = "{folder / "figures"}"\n')
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "lesson" / "02_non_iid_partitions.ipynb"
    path.parent.mkdir()
    jupytext.write(notebook, path)
    return path






def _start_lab(folder: Path, port: int, token: str, log):
    news = folder / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')  # no "get notified of Jupyter news?" toast over the deck's remote
    jupyter = Path(sys.executable).parent / "jupyter"
    command = [str(jupyter), "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={folder / 'lesson'}",
               f"--LabApp.user_settings_dir={folder / 'settings'}",  # not the user's own settings
               f"--LabApp.workspaces_dir={folder / 'workspaces'}", "--LabApp.news_url=None"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: the kernel stops with it


@pytest.mark.slow
@pytest.mark.browser
def test_lesson_02_presents_live_and_its_slider_redraws(tmp_path):
    sync_api = playwright_or_skip()
    pytest.importorskip("jupyterlab_slideshow", reason="jupyterlab-slideshow is not installed (pip install -r requirements.txt)")
    notebook = _lesson_notebook(tmp_path)
    port, token = free_port(), os.urandom(16).hex()
    errors, log = [], open(tmp_path / "lab.log", "w")
    server = _start_lab(tmp_path, port, token, log)
    try:
        wait_for_port(port, server, 120, "jupyter lab")
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                try:
                    _present(sync_api, page, f"http://127.0.0.1:{port}/lab/tree/{notebook.name}?token={token}")
                finally:  # what the page showed, for a failure's report
                    page.screenshot(path=tmp_path / "page.png")
            finally:
                browser.close()
    finally:
        stop_group(server)
        log.close()
    assert errors == [], f"console errors: {errors}\njupyter lab log:\n{(tmp_path / 'lab.log').read_text()[-3000:]}"


def _present(sync_api, page, url: str) -> None:
    """Run All, start the deck on the title, advance to the slider, move it and see the heatmap redrawn."""
    expect = sync_api.expect
    page.goto(url, timeout=WAIT_MS)
    cells = page.locator(".jp-Notebook .jp-Cell")
    expect(cells.first).to_be_visible(timeout=WAIT_MS)
    expect(page.locator(".jp-StatusBar-Widget", has_text="Idle")).to_have_count(1, timeout=WAIT_MS)  # kernel ready
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    figure = page.locator(".widget-vbox .js-plotly-plot")  # the explorer's FigureWidget
    expect(figure).to_have_count(1, timeout=WAIT_MS)
    title = figure.locator(".gtitle")
    expect(title).to_have_text("dirichlet, alpha = 0.5, K = 10", timeout=WAIT_MS)
    assert _heatmap_rows(figure) == 10
    expect(page.locator(".jp-InputArea-prompt", has_text="[*]")).to_have_count(0, timeout=WAIT_MS)

    cells.first.click()  # the title cell, in command mode: the deck starts on the slide of the active cell
    page.keyboard.press("Escape")
    page.locator(".jp-NotebookPanel-toolbar [data-command='deck:toggle']").click()
    onscreen = page.locator(".jp-Cell.jp-deck-mod-onscreen")
    expect(onscreen.first).to_contain_text("02 · Non-IID partitions")
    slider_cell = page.locator(".jp-Cell.jp-deck-mod-onscreen", has=figure)
    for _ in range(MAX_STEPS):  # space goes down through sub-slides, then on to the next slide
        if slider_cell.count():
            break
        page.keyboard.press("Space")
        page.wait_for_timeout(300)
    expect(slider_cell).to_have_count(1)
    expect(figure).to_be_in_viewport()

    slider = slider_cell.locator(".widget-slider", has_text="num_clients")
    handle = slider.locator(".noUi-handle")
    box = handle.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 40, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    readout = slider.locator(".widget-readout")
    expect(readout).not_to_have_text("10")
    clients = int(readout.inner_text())
    expect(title).to_have_text(f"dirichlet, alpha = 0.5, K = {clients}", timeout=WAIT_MS // 4)
    assert clients > 10 and _heatmap_rows(figure) == clients  # one row of label counts per client


def _heatmap_rows(figure) -> int:
    """Rows of the heatmap plotly.js is drawing now (its graph div keeps the data it drew)."""
    return figure.evaluate("div => div.data[0].z.length")
