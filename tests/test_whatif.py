"""The what-if dashboard (fl_lib/study/whatif.py, app/whatif.py) on a small cache of tiny runs.

The unit tests call the module's functions and drive the WhatIf widgets in-process; the
browser test serves the real notebook with Voila and drives it with Playwright in Debian's
chromium, as an analyst would.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fl_lib.core.config import PRESETS
from fl_lib.core.errors import ConfigError
from fl_lib.runtime import results
from fl_lib.study import whatif
from tests.servers import CHROMIUM, free_port, playwright_or_skip, stop_group, wait_for_port

ROOT = Path(__file__).resolve().parents[1]


def _run(cfg, root, data):
    return results.run(cfg, root=root, data=data, progress=False, log=lambda msg: None)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Three finished tiny runs (32 bits; 8 bits; 32 bits on the mobile link), an unfinished and a damaged folder."""
    from tests.tiny import tiny_config, tiny_data

    root = tmp_path_factory.mktemp("runs")
    data = tiny_data()
    runs = {name: _run(tiny_config(**fields), root, data)
            for name, fields in [("float", {}), ("eight", {"bits": 8}), ("mobile", {"link": "mobile"})]}
    (root / "unfinished").mkdir()
    (root / "unfinished" / "config.json").write_text("{}")
    (root / "damaged").mkdir()
    (root / "damaged" / "summary.json").write_text("{}")
    (root / "damaged" / "config.json").write_text('{"no_such_field": 1}')
    return root, runs


def test_scan_finds_the_finished_runs_and_counts_the_rest(cache):
    root, runs = cache
    catalog = whatif.scan(root)
    assert sorted(s.dir for s in catalog.runs) == sorted(r.dir for r in runs.values())
    assert catalog.skipped == 2
    assert whatif.scan(root / "not_there").runs == ()


def test_any_matches_everything_and_each_control_narrows(cache):
    root, runs = cache
    catalog = whatif.scan(root)
    dirs = lambda sel: {s.dir for s in whatif.select(catalog, sel)}  # noqa: E731
    assert dirs({}) == dirs({c: whatif.ANY for c in whatif.CONTROLS}) == {r.dir for r in runs.values()}
    assert dirs({"bits": 8}) == {runs["eight"].dir}
    assert dirs({"bits": 32}) == {runs["float"].dir, runs["mobile"].dir}
    assert dirs({"link": "mobile", "bits": 32}) == {runs["mobile"].dir}
    assert dirs({"alpha": 0.5, "local_epochs": 1, "algorithm": "fedavg"}) == dirs({})
    assert dirs({"alpha": 0.1}) == dirs({"bits": whatif.ADAPTIVE}) == set()


def test_adaptive_bits_is_a_policy_not_a_width(tiny):
    cfg = tiny(link="mobile", bits_policy="adaptive", bits=16, min_bits=4)
    assert whatif.matches(cfg, {"bits": whatif.ADAPTIVE})
    assert not whatif.matches(cfg, {"bits": 16})
    assert whatif.matches(tiny(bits=16), {"bits": 16})


def test_options_offer_any_and_every_stored_value(cache):
    options = whatif.options(whatif.scan(cache[0]))
    assert set(options) == set(whatif.CONTROLS)
    assert all(values[0] == whatif.ANY for values in options.values())
    assert {8, 32, whatif.ADAPTIVE} <= set(options["bits"]) and "mobile" in options["link"]


def test_traces_are_the_stored_metrics_on_each_axis(cache):
    root, runs = cache
    m = runs["mobile"].metrics
    [rounds] = whatif.traces([whatif.Stored(runs["mobile"].dir, runs["mobile"].config)], "rounds")
    assert rounds["x"] == m["round"].tolist() and rounds["y"] == m["test_acc"].tolist()
    assert "link=mobile" in rounds["name"]
    stored = whatif.select(whatif.scan(root), {})
    upload = {t["name"]: t for t in whatif.traces(stored, "upload")}
    assert len(upload) == 3
    eight = upload[whatif.label(runs["eight"].config)]
    assert eight["x"] == (runs["eight"].metrics["cum_upload_bytes"] / 1e6).tolist()
    assert eight["x"][-1] < upload[whatif.label(runs["float"].config)]["x"][-1]  # 8 bits upload less than 32
    [hours] = whatif.traces(stored, "hours")  # only the run with a link keeps a clock
    assert hours["name"] == rounds["name"]
    assert hours["x"] == (m["cum_sim_seconds"] / 3600).tolist() and hours["x"][-1] > 0


def test_table_lists_the_matches_with_their_summaries(cache):
    root, runs = cache
    frame = whatif.table(whatif.select(whatif.scan(root), {"bits": 8}))
    assert frame["key"].tolist() == [runs["eight"].config.key()]
    assert frame["final_test_acc"].iloc[0] == runs["eight"].summary["final_test_acc"]


def test_new_config_puts_the_controls_on_the_preset():
    cfg = whatif.new_config({"alpha": 0.1, "bits": 8, "local_epochs": 2, "link": "any"}, "smoke")
    assert cfg == PRESETS["smoke"].replace(alpha=0.1, bits=8, local_epochs=2)
    adaptive = whatif.new_config({"bits": whatif.ADAPTIVE, "link": "mobile", "algorithm": "fedbuff"}, "smoke")
    assert (adaptive.bits_policy, adaptive.link, adaptive.algorithm) == ("adaptive", "mobile", "fedbuff")


@pytest.mark.parametrize("selection,preset,message", [
    ({"algorithm": "fedbuff"}, "smoke", "algorithm='fedbuff' needs a clock"),
    ({"bits": whatif.ADAPTIVE}, "smoke", "bits_policy='adaptive' needs a link"),
    ({}, "nope", "preset='nope' is not allowed"),
])
def test_a_bad_combination_is_refused_in_one_line(selection, preset, message):
    with pytest.raises(ConfigError, match=message) as err:
        whatif.new_config(selection, preset)
    assert "\n" not in str(err.value)


def test_the_dashboard_redraws_when_a_control_changes(cache):
    root, _ = cache
    app = whatif.WhatIf(root=root)
    names = lambda axis: [t.name for t in app.figures[axis].data if t.visible]  # noqa: E731
    assert len(names("rounds")) == 3 and len(names("hours")) == 1
    assert "3 of 3 stored runs match" in app.status.value and "2 unfinished or unreadable" in app.status.value
    app.controls["bits"].value = 8
    assert len(names("rounds")) == 1 and names("hours") == []
    assert app.figures["hours"].layout.title.text == whatif.NO_MATCH
    assert "1 of 3" in app.status.value and app.table.value.count("</tr>") == 2  # header and one run
    app.controls["algorithm"].value = "fedsgd"
    assert names("upload") == [] and "0 of 3" in app.status.value


def test_the_button_runs_a_missing_setting_into_the_cache(tmp_path, tiny, monkeypatch):
    from tests.tiny import tiny_data

    root = tmp_path / "runs"
    _run(tiny(), root, tiny_data())
    monkeypatch.setitem(PRESETS, "tiny", tiny(num_rounds=2))
    app = whatif.WhatIf(root=root, preset="tiny")
    app.controls["bits"].value = 4
    assert not any(t.visible for t in app.figures["rounds"].data)
    seen = []
    app.progress.observe(lambda change: seen.append(change["new"]), names="value")
    run = app.run_selected()
    assert run is not None and run.config.bits == 4 and (run.dir / "summary.json").exists()
    assert seen[-2:] == [1, 2] and app.progress.max == 2
    [line] = [t for t in app.figures["rounds"].data if t.visible]
    assert len(whatif.scan(root).runs) == 2 and line.x == (1, 2) and "bits=4" in line.name
    app.controls["algorithm"].value = "fedbuff"  # no link: refused in one line, nothing run
    assert app.run_selected() is None and "refused:" in app.message.value and "needs a clock" in app.message.value
    assert len(whatif.scan(root).runs) == 2


# -- the served app, in a browser -------------------------------------------------------------------------------
# Voila executes the app's notebook before the page loads: on a loaded 2-core machine (the whole suite beside
# a report) that took over 45 s, so the waits are generous; a broken app still fails, only later.
PAGE_MS = 180_000




@pytest.mark.slow
@pytest.mark.browser
def test_the_served_app_redraws_in_a_browser(cache, tmp_path):
    sync_api = playwright_or_skip()
    voila = Path(sys.executable).parent / "voila"
    if not voila.exists():
        pytest.skip(f"voila is not installed next to {sys.executable} (pip install voila)")
    import jupytext

    notebook = tmp_path / "whatif.ipynb"
    jupytext.write(jupytext.read(ROOT / "app" / "whatif.py"), notebook)
    port = free_port()
    root = shutil.copytree(cache[0], tmp_path / "runs")  # a copy: the button below adds a run to it
    env = {**os.environ, "FL_LIB_RUNS": str(root), "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "voila.log", "w")
    command = [str(voila), str(notebook), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
               "--Voila.port_retries=0", *whatif.VOILA_ARGS]
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)  # its own process group: the kernel it starts stops with it
    errors, local = [], f"http://127.0.0.1:{port}/"
    try:
        wait_for_port(port, server, 120, "voila")
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1600})
                # Voila's page asks a CDN for icon fonts: offline that fails, from another address; not ours
                page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
                        and msg.location.get("url", local).startswith(local) else None)
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(local, timeout=PAGE_MS)
                lines = page.locator(".js-plotly-plot").first.locator(".scatterlayer .trace")
                sync_api.expect(lines).to_have_count(3, timeout=PAGE_MS)
                status = page.locator(".whatif-status")
                sync_api.expect(status).to_contain_text("3 of 3 stored runs match")
                page.locator(".whatif-bits select").select_option(label="8")
                sync_api.expect(lines).to_have_count(1, timeout=PAGE_MS // 3)
                hours = page.locator(".js-plotly-plot").nth(2).locator(".scatterlayer .trace")
                sync_api.expect(hours).to_have_count(0)  # the mobile run's line is gone
                sync_api.expect(status).to_contain_text("1 of 3 stored runs match")
                page.locator(".whatif-run").click()  # smoke preset at 8 bits: not stored, runs in seconds
                sync_api.expect(status).to_contain_text("2 of 4 stored runs match", timeout=PAGE_MS)
                sync_api.expect(lines).to_have_count(2)
                sync_api.expect(page.locator(".whatif-message")).to_contain_text("stored in")
                shot = os.environ.get("WHATIF_SCREENSHOT")
                if shot:
                    page.screenshot(path=shot, full_page=True)
            finally:
                browser.close()
    finally:
        stop_group(server)
        log.close()
    assert errors == [], f"console errors: {errors}\nvoila log:\n{(tmp_path / 'voila.log').read_text()[-2000:]}"


