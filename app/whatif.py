# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # What if?
#
# Pick a Dirichlet concentration (alpha), an upload bit width ("adaptive": each client's width is
# chosen from its link), the local epochs E, a link profile and an algorithm. Every stored run that
# matches is listed and drawn three ways: test accuracy against rounds, against megabytes uploaded,
# and against simulated hours (runs with a link only). A control left at "any" matches every run.
#
# A setting that is not stored yet: choose a preset ("smoke" finishes in seconds) and press
# **run this setting**. The preset runs with the controls on top, into the same results cache,
# and joins the plots.

# %%
import os

from fl_lib.study.whatif import WhatIf

# make app sets both as absolute paths (the kernel runs in this notebook's folder)
app = WhatIf(root=os.environ.get("FL_LIB_RUNS", "data/runs"), data_root=os.environ.get("FL_LIB_DATA_ROOT"))
app.view()
