"""The what-if dashboard (app/whatif.py, served by `make app`): the stored runs that match five controls, drawn.

An analyst picks alpha, a bit width, E, a link profile and an algorithm; every control
left at "any" matches everything. The runs of the results cache (`results.RUNS_ROOT`,
one folder per config) that match are listed and overlaid on three plots: accuracy
against rounds, against megabytes uploaded and against simulated hours. A setting that
is not stored is one click away: `new_config` puts the controls on a preset, `start_run`
runs it into the same cache, and it joins the plots. The notebook only builds a
`WhatIf` and shows it; everything it does is a function here that the tests call.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from . import theme
from ..core.config import PRESETS, Config
from ..core.errors import ConfigError, FLError
from ..runtime import results

ANY = "any"  # a control at "any" matches every stored value and keeps the preset's value in a new run
ADAPTIVE = "adaptive"  # the bits control's name for bits_policy != "fixed" (widths chosen per client from its link)
CONTROLS = ("alpha", "bits", "local_epochs", "link", "algorithm")
# Values offered even when no stored run has them, so that a new setting can be asked for.
OFFERED = {"alpha": (0.1, 0.5, 1.0, 10.0), "bits": (32, 16, 8, 4, 2, ADAPTIVE), "local_epochs": (1, 2, 5),
           "link": ("none", "mobile", "iot"), "algorithm": ("fedavg", "fedsgd", "fedbuff")}
AXES = {  # figure name -> (metrics column, divisor, x-axis title)
    "rounds": ("round", 1, "round"),
    "upload": ("cum_upload_bytes", 1e6, "megabytes uploaded (cum_upload_bytes / 1e6)"),
    "hours": ("cum_sim_seconds", 3600, "simulated hours (cum_sim_seconds / 3600)"),
}
# JupyterLab extensions that fail to load in Voila's page (console errors: they need JupyterLab's document
# manager or main menu) and are of no use there: jupytext's, and the live slides' (jupyterlab-slideshow, its fonts)
VOILA_DENIED = ("jupyterlab-jupytext", "jupyterlab-slideshow", "@deathbeds/jupyterlab-fonts",
                *(f"@deathbeds/jupyterlab-font-{font}" for font in
                  ("anonymous-pro", "atkinson-hyperlegible", "dejavu-sans-mono", "fira-code")))
VOILA_ARGS = ("--VoilaConfiguration.extension_denylist=" + json.dumps(list(VOILA_DENIED)),)
NO_MATCH = "no matching run"
MAX_LINES = 12  # more lines than this on one plot cannot be told apart; the table still lists every match


@dataclass(frozen=True)
class Stored:
    """A finished run folder of the cache and the config that made it (its metrics are read only when drawn)."""

    dir: Path
    config: Config


@dataclass(frozen=True)
class Catalog:
    """The finished runs under a cache root, and how many folders were passed over (unfinished or unreadable)."""

    root: Path
    runs: tuple
    skipped: int


def scan(root=None) -> Catalog:
    """Every finished run folder under `root` (default the results cache), in folder-name order.

    A folder counts as finished once its summary.json exists (results.write_run writes it
    last). A folder without one, or whose config.json cannot be read back into a Config
    (an older version's field, a damaged file), is skipped quietly and only counted: the
    dashboard must open on any cache, and says how many it passed over.
    """
    root = Path(root if root is not None else results.RUNS_ROOT)
    runs, skipped = [], 0
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for folder in folders:
        cfg = _stored_config(folder)
        if cfg is None:
            skipped += 1
        else:
            runs.append(Stored(folder, cfg))
    return Catalog(root, tuple(runs), skipped)


def _stored_config(folder: Path) -> Config | None:
    if not (folder / "summary.json").is_file():
        return None
    try:
        raw = json.loads((folder / "config.json").read_text())
        raw.pop("key", None)
        return Config.from_dict(raw)
    except (OSError, ValueError, TypeError, AttributeError, FLError):
        return None


def bits_label(cfg: Config):
    """The bits control's value for `cfg`: its width, or "adaptive" when widths are chosen per client."""
    return ADAPTIVE if cfg.bits_policy != "fixed" else cfg.bits


def value_of(cfg: Config, control: str):
    return bits_label(cfg) if control == "bits" else getattr(cfg, control)


def options(catalog: Catalog) -> dict:
    """Each control's choices: "any", then the offered values and every value stored, sorted."""
    out = {}
    for control in CONTROLS:
        values = set(OFFERED[control]) | {value_of(s.config, control) for s in catalog.runs}
        out[control] = [ANY] + sorted(values, key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else 0,
                                                             str(v)))
    return out


def matches(cfg: Config, selection: dict) -> bool:
    """Whether `cfg` has every value `selection` names; a control at "any" (or absent) matches everything."""
    for control in CONTROLS:
        want = selection.get(control, ANY)
        if want == ANY:
            continue
        have = value_of(cfg, control)
        if control == "alpha":
            if not math.isclose(float(have), float(want), rel_tol=1e-9):
                return False
        elif have != want:
            return False
    return True


def select(catalog: Catalog, selection: dict) -> list:
    """The stored runs of `catalog` that match `selection`."""
    return [s for s in catalog.runs if matches(s.config, selection)]


def label(cfg: Config) -> str:
    """A run's legend entry: the five controls, then the model and data, then the first digits of its key."""
    return (f"alpha={cfg.alpha:g} bits={bits_label(cfg)} E={cfg.local_epochs} link={cfg.link} {cfg.algorithm} "
            f"({cfg.model}, {cfg.dataset}, {cfg.key()[:6]})")


def table(runs: list):
    """One row per matched run: the controls, what it ran on, and its summary's final numbers."""
    import pandas as pd

    rows = []
    for s in runs:
        c, summary = s.config, _summary(s.dir)
        rows.append({"key": c.key(), "alpha": c.alpha, "bits": bits_label(c), "local_epochs": c.local_epochs,
                     "link": c.link, "algorithm": c.algorithm, "model": c.model, "dataset": c.dataset,
                     "num_clients": c.num_clients, "rounds": summary.get("rounds"),
                     "final_test_acc": summary.get("final_test_acc"), "total_upload_mb": summary.get("total_upload_mb"),
                     "total_sim_hours": summary.get("total_sim_hours")})
    columns = ["key", *CONTROLS, "model", "dataset", "num_clients", "rounds", "final_test_acc", "total_upload_mb",
               "total_sim_hours"]
    return pd.DataFrame(rows, columns=columns)


def _summary(folder: Path) -> dict:
    try:
        return json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def traces(runs: list, axis: str) -> list:
    """The lines of one plot: {name, x, y} per run, accuracy (test_acc) against `axis` (a key of AXES).

    Rounds without a test evaluation (eval_every > 1) are left out. The hours plot has
    only runs with a link: without one a run keeps no clock. A folder whose metrics no
    longer match its summary is left out of the plots (load_run refuses it).
    """
    column, divisor, _ = AXES[axis]
    lines = []
    for s in runs[:MAX_LINES]:
        if axis == "hours" and s.config.link == "none":
            continue
        try:
            m = results.load_run(s.dir).metrics
        except (FLError, OSError, ValueError):
            continue
        m = m[m["test_acc"].notna() & m[column].notna()]
        lines.append({"name": label(s.config), "x": (m[column] / divisor).tolist(), "y": m["test_acc"].tolist()})
    return lines


def new_config(selection: dict, base="smoke") -> Config:
    """The config of a new run: preset `base` (a name of PRESETS, or a Config) with the controls set on top.

    A control at "any" keeps the preset's value. bits="adaptive" turns on
    bits_policy="adaptive" (the preset's bits is then the widest width); a number sets
    a fixed width. A combination the config or its stages refuse raises ConfigError,
    one line naming the value.
    """
    from ..simulator.build import check

    if isinstance(base, str):
        if base not in PRESETS:
            raise ConfigError(f"preset={base!r} is not allowed: must be one of {', '.join(PRESETS)}")
        base = PRESETS[base]
    changes = {}
    for control in CONTROLS:
        want = selection.get(control, ANY)
        if want == ANY:
            continue
        if control == "bits":
            changes.update(bits_policy="adaptive") if want == ADAPTIVE else changes.update(bits=int(want),
                                                                                          bits_policy="fixed")
        else:
            changes[control] = want
    if changes.get("bits_policy") == "fixed":
        changes["min_bits"] = 2  # min_bits applies to adaptive widths only
    cfg = base.replace(**changes)
    check(cfg)
    return cfg


def start_run(cfg: Config, root=None, on_round=None, data=None):
    """Run `cfg` into the cache at `root` (or read it back if stored); `on_round(t)` after each round."""
    return results.run(cfg, root=root, progress=False, log=lambda msg: None, on_round=on_round, data=data)


class WhatIf:
    """The dashboard: five controls, a preset and a run button, a table and three plots that follow the controls."""

    def __init__(self, root=None, preset: str = "smoke", data_root=None):
        import ipywidgets as w

        self.root = Path(root if root is not None else results.RUNS_ROOT)
        self.data_root = data_root  # where a new run's datasets live (None: the preset's own data_root)
        self.catalog = scan(self.root)
        self.controls = {c: w.Dropdown(options=o, value=ANY, description=c)
                         for c, o in options(self.catalog).items()}
        self.preset = w.Dropdown(options=list(PRESETS), value=preset, description="preset")
        self.button = w.Button(description="run this setting", button_style="primary",
                               tooltip="run the preset with the controls on top into the cache (stored: read back)")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="rounds")
        self.message, self.status, self.table = w.HTML(), w.HTML(), w.HTML()
        for name, widget in [*self.controls.items(), ("preset", self.preset), ("run", self.button),
                             ("progress", self.progress), ("message", self.message), ("status", self.status)]:
            widget.add_class(f"whatif-{name}")  # stable handles for the browser test
        self.figures = {axis: _figure(title) for axis, (_, _, title) in AXES.items()}
        self.plots = {axis: w.Output() for axis in AXES}  # each redraw shows its figure afresh here
        for widget in self.controls.values():
            widget.observe(lambda change: self.redraw(), names="value")
        self.button.on_click(lambda button: self.run_selected())
        self.redraw()

    def selection(self) -> dict:
        return {c: widget.value for c, widget in self.controls.items()}

    def redraw(self) -> list:
        """Match the controls against the catalog; refill the table and the three plots. Returns the matches."""
        found = select(self.catalog, self.selection())
        self.status.value = (f"{len(found)} of {len(self.catalog.runs)} stored runs match in {self.catalog.root}"
                             + (f"; {self.catalog.skipped} unfinished or unreadable folder(s) skipped"
                                if self.catalog.skipped else "")
                             + (f"; the plots show the first {MAX_LINES}" if len(found) > MAX_LINES else ""))
        frame = table(found)
        self.table.value = frame.where(frame.notna(), None).to_html(index=False, float_format=lambda v: f"{v:.4g}",
                                                                     na_rep="-").replace("<td>None</td>", "<td>-</td>")
        for axis, fig in self.figures.items():
            lines = traces(found, axis)
            for k, trace in enumerate(fig.data):  # the MAX_LINES lines made in __init__, restyled
                line = lines[k] if k < len(lines) else {"name": "", "x": [], "y": []}
                trace.update(x=line["x"], y=line["y"], name=line["name"], visible=k < len(lines))
            fig.layout.title.text = NO_MATCH if not lines else ""
            self._show(axis)
        return found

    def _show(self, axis: str) -> None:
        """Replace what the plot's Output shows by its figure as it is now.

        A plotly FigureWidget, updated in place, was the first design; in Voila 0.5 it
        fails to start inside a widget box, and of three widgets updated in one
        callback one now and then kept its old lines. A plain figure drawn afresh by
        plotly's mime renderer (the jupyterlab-plotly extension Voila loads) has neither problem.
        """
        from IPython.display import clear_output, display

        with self.plots[axis]:
            clear_output(wait=True)
            display(self.figures[axis])

    def run_selected(self):
        """The button: run the preset with the controls on top, moving the progress bar, then rescan and redraw."""
        try:
            cfg = new_config(self.selection(), self.preset.value)
            if self.data_root is not None:
                cfg = cfg.replace(data_root=str(self.data_root))  # not in the cache key
        except FLError as e:
            self.message.value = f"<b>refused:</b> {_escape(str(e))}"
            return None
        self.progress.max, self.progress.value = cfg.num_rounds, 0
        self.message.value = f"running {_escape(label(cfg))} for {cfg.num_rounds} rounds ..."
        try:
            run = start_run(cfg, self.root, on_round=lambda t: setattr(self.progress, "value", t))
        except FLError as e:
            self.message.value = f"<b>failed:</b> {_escape(str(e))}"
            return None
        self.progress.value = cfg.num_rounds
        self.message.value = f"stored in {_escape(str(run.dir))}: final test_acc {run.summary['final_test_acc']:.4f}"
        self.refresh()
        return run

    def refresh(self) -> list:
        """Rescan the cache (a run added by the button or elsewhere), keep the controls' values, redraw."""
        self.catalog = scan(self.root)
        for control, values in options(self.catalog).items():
            widget = self.controls[control]
            if list(widget.options) != values:
                keep = widget.value
                with widget.hold_trait_notifications():
                    widget.options = values
                    widget.value = keep if keep in values else ANY
        return self.redraw()

    def view(self):
        """The whole dashboard as one widget box: controls, status, table, then each plot under its title."""
        import ipywidgets as w

        controls = list(self.controls.values())
        titles = {"rounds": "accuracy against rounds", "upload": "accuracy against megabytes uploaded",
                  "hours": "accuracy against simulated hours (runs with a link only)"}
        return w.VBox([w.HBox([w.VBox(controls[:3]), w.VBox([*controls[3:], self.preset]),
                               w.VBox([self.button, self.progress, self.message])]), self.status, self.table,
                       *[part for axis, title in titles.items() for part in (w.HTML(f"<b>{title}</b>"),
                                                                             self.plots[axis])]])


def _figure(title: str):
    """An empty plot of test_acc against `title` with MAX_LINES hidden lines, each in its own theme style."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.update_layout(template=theme.template(), height=360, xaxis_title=title, yaxis_title="test_acc",
                      legend=dict(font=dict(size=10)), margin=dict(t=30))
    for i in range(MAX_LINES):  # redraw fills the first ones and hides the rest
        style = theme.line_style(i)
        fig.add_scatter(x=[], y=[], mode="lines+markers", visible=False, showlegend=True,
                        line=dict(color=style["color"], dash=style["dash"]), marker=dict(symbol=style["symbol"]))
    return fig


def _escape(text: str) -> str:
    import html

    return html.escape(text)
