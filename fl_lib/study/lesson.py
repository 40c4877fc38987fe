"""What every lesson in notebooks/ shares: its common parameters, the project's folders, the setup, the papers.

The parameters every lesson may have (folders, device, seeds, workers) are declared once, in
COMMON: name, annotation, default and comment. Each lesson still writes the ones it uses in its
own parameters cell, plainly, since papermill injects values only there; the report refuses a
lesson whose line differs from COMMON's (`check_parameters`), and tests/test_notebooks.py
checks every lesson's cell line by line (`parameter_line`), so they stay one declaration.

A lesson's folder parameters (data_root, results_dir, figures_dir) default to "", which means
the project's own folder below, found from where fl_lib lives: a lesson run by papermill from
any directory reads and writes inside the project. A path the user gives is taken relative to
the kernel's working directory, which is the directory papermill (or `python -m fl_lib report`)
was started in, or JupyterLab's folder of the lesson.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]  # fl_lib/study/lesson.py -> the project folder
NOTEBOOKS_DIR = PROJECT / "notebooks"
FOLDERS = {  # a folder parameter left at "" means this folder
    "data_root": PROJECT / "data",
    "results_dir": PROJECT / "data" / "runs",
    "figures_dir": PROJECT / "figures",
}


@dataclass(frozen=True)
class Parameter:
    """A parameter declared alike by every lesson that has it; default None: each lesson picks its own."""

    kind: str  # the annotation: int, float, str or bool
    default: object
    help: str  # the trailing comment: what `papermill --help-notebook` prints


COMMON = {
    "data_root": Parameter("str", "", "where datasets are downloaded and built; empty: the project's data/"),
    "results_dir": Parameter("str", "", "cached runs and attacks, shared by all lessons; empty: the project's "
                                        "data/runs/"),
    "figures_dir": Parameter("str", "", "where static PNGs are written; empty: the project's figures/"),
    "device": Parameter("str", "auto", "auto (cuda, then mps, then cpu), cpu, cuda or mps"),
    # how many seeds a lesson needs by default differs (a spread needs two or more), so each sets its own
    "seeds": Parameter("str", None, "comma-separated seeds; runs repeat for each (the lesson says which use the "
                                    "first only)"),
    "workers": Parameter("int", 0, "processes that compute this lesson's runs side by side; 0: one per core"),
    "theme": Parameter("str", "screen", "figures for a laptop screen, or a projector (larger fonts, thicker "
                                        "lines): screen or projector"),
}
assert set(FOLDERS) <= set(COMMON)


def parameter_line(name: str, default=None) -> str:
    """COMMON[name] as its line in a parameters cell; `default` for a parameter each lesson sets itself."""
    p = COMMON[name]
    value = p.default if p.default is not None else default
    text = f'"{value}"' if isinstance(value, str) else repr(value)
    return f"{name}: {p.kind} = {text}  # {p.help}"


def check_parameters(stem: str, declared: dict) -> None:
    """Raise ConfigError if a lesson declares a COMMON parameter otherwise than COMMON does.

    `declared` is papermill's reading of the lesson's parameters cell
    ({name: {inferred_type_name, default, help}}, as `report.lesson_parameters` gives it).
    """
    from ..core.errors import ConfigError

    for name in [n for n in COMMON if n in declared]:
        p, d = COMMON[name], declared[name]
        default = ast.literal_eval(d["default"])
        own_default = p.default is None  # seeds: each lesson's own
        if (d["inferred_type_name"], d["help"]) != (p.kind, p.help) or not (own_default or default == p.default):
            raise ConfigError(f"{stem}: parameter {name} is declared otherwise than in fl_lib.study.lesson.COMMON; "
                              f"write it as: {parameter_line(name, default)}")


REFERENCES = {
    "mcmahan": "McMahan, Moore, Ramage, Hampson and Agüera y Arcas (2017), *Communication-Efficient Learning "
               "of Deep Networks from Decentralized Data*, AISTATS.",
    "lee": "Lee and Lee, *Communication Efficiency and Accuracy Analysis of Federated Learning on Non-IID Data "
           "with Channel-Wise Symmetric Quantization*, Hansung University.",
    "hsu": "Hsu, Qi and Brown (2019), *Measuring the Effects of Non-Identical Data Distribution for Federated "
           "Visual Classification*, arXiv:1909.06335.",
    "yurochkin": "Yurochkin, Agarwal, Ghosh, Greenewald, Hoang and Khazaeni (2019), *Bayesian Nonparametric "
                 "Federated Learning of Neural Networks*, ICML.",
    "wang": "Wang, Yurochkin, Sun, Papailiopoulos and Khazaeni (2020), *Federated Learning with Matched "
            "Averaging*, ICLR.",
    "li": "Li, Diao, Chen and He (2022), *Federated Learning on Non-IID Data Silos: An Experimental Study* "
          "(NIID-Bench), ICDE.",
    "krishnamoorthi": "Krishnamoorthi (2018), *Quantizing deep convolutional networks for efficient inference: "
                      "A whitepaper*, arXiv:1806.08342.",
    "fedprox": "Li, Sahu, Zaheer, Sanjabi, Talwalkar and Smith (2020), *Federated Optimization in Heterogeneous "
               "Networks*, MLSys.",
    "reddi": "Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar and McMahan (2021), *Adaptive Federated "
             "Optimization*, ICLR.",
    "yin": "Yin, Chen, Ramchandran and Bartlett (2018), *Byzantine-Robust Distributed Learning: Towards Optimal "
           "Statistical Rates*, ICML.",
    "scaffold": "Karimireddy, Kale, Mohri, Reddi, Stich and Suresh (2020), *SCAFFOLD: Stochastic Controlled "
                "Averaging for Federated Learning*, ICML.",
    "huber": "Huber (1964), *Robust Estimation of a Location Parameter*, Annals of Mathematical Statistics 35(1), "
             "73-101.",
    "fedadp": "Wu and Wang (2021), *Fast-Convergent Federated Learning with Adaptive Weighting*, IEEE ICC "
              "(arXiv:2012.00661).",
    "sattler": "Sattler, Müller and Samek (2020), *Clustered Federated Learning: Model-Agnostic Distributed "
               "Multitask Optimization Under Privacy Constraints*, IEEE TNNLS 32(8), 2021, online 2020 (arXiv:1910.01991).",
}


def folder(name: str, value: str) -> str:
    """The folder parameter `name` as an absolute path: "" is the project's own, else relative to the cwd."""
    if name not in FOLDERS:
        raise KeyError(f"{name!r} is not a folder parameter; those are {', '.join(FOLDERS)}")
    path = Path(value).expanduser() if str(value).strip() else FOLDERS[name]
    return str(path.resolve())


def references(*keys: str) -> str:
    """The full references of `keys` (see REFERENCES) as a Markdown list."""
    return "\n".join(f"- {REFERENCES[k]}" for k in keys)


def setup(*cite: str, theme: str = "screen"):
    """Set up a lesson's kernel: autoreload of fl_lib, plotly's offline output, the figure theme (theme.py);
    show the references `cite`."""
    from IPython import get_ipython
    from IPython.display import Markdown, display

    from . import plots
    from . import theme as figure_theme

    ip = get_ipython()
    if ip is not None and "autoreload" not in ip.extension_manager.loaded:
        ip.run_line_magic("load_ext", "autoreload")  # edits to fl_lib reach a running lesson
        ip.run_line_magic("autoreload", "2")
    plots.setup_notebook()
    figure_theme.use(theme)  # refuses an unknown theme in one line, before anything runs
    if cite:
        display(Markdown("**References**\n\n" + references(*cite)))
