"""What every lesson in notebooks/ shares: the project's folders, the notebook setup, the papers it cites.

A lesson's folder parameters (data_root, results_dir, figures_dir) default to "", which means
the project's own folder below, found from where fl_lib lives: a lesson run by papermill from
any directory reads and writes inside the project. A path the user gives is taken relative to
the kernel's working directory, which is the directory papermill (or `python -m fl_lib report`)
was started in, or JupyterLab's folder of the lesson.
"""
from __future__ import annotations

from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]  # fl_lib/study/lesson.py -> the project folder
NOTEBOOKS_DIR = PROJECT / "notebooks"
FOLDERS = {  # a folder parameter left at "" means this folder
    "data_root": PROJECT / "data",
    "results_dir": PROJECT / "data" / "runs",
    "figures_dir": PROJECT / "figures",
}

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


def setup(*cite: str):
    """Set up a lesson's kernel: autoreload of fl_lib, plotly's offline output; show the references `cite`."""
    from IPython import get_ipython
    from IPython.display import Markdown, display

    from . import plots

    ip = get_ipython()
    if ip is not None and "autoreload" not in ip.extension_manager.loaded:
        ip.run_line_magic("load_ext", "autoreload")  # edits to fl_lib reach a running lesson
        ip.run_line_magic("autoreload", "2")
    plots.setup_notebook()
    if cite:
        display(Markdown("**References**\n\n" + references(*cite)))
