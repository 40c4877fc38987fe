# Plain runner: `make study` runs the study, `make test` runs the tests.
# Both create .venv and install everything first (once; again when requirements change).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PARAMS ?= notebooks/params/default.yaml
NAME ?= study

.PHONY: setup study test report bench app reference slides

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
# JupyterLab opens the lessons (notebooks/*.py, jupytext percent format) as notebooks on double-click
	$(VENV)/bin/jupytext-config --settings-file $(VENV)/share/jupyter/lab/settings/overrides.json \
		set-default-viewer python >/dev/null
	touch $@

setup: $(VENV)/.installed

study: setup
	$(PY) -m fl_lib report --params $(PARAMS) --name $(NAME)

report: study

# Every lesson as reveal.js slides that open with no network, in figures/slides/$(NAME)/ (index.html lists them);
# reuses the executed lessons of `make study` with the same PARAMS and NAME, and runs any that are missing.
slides: setup
	$(PY) -m fl_lib slides --params $(PARAMS) --name $(NAME)

test: setup
	$(PY) -m pytest -q

# e.g. make bench BENCH_ARGS="--mnist ../shared/data/mnist_subset.npz --cifar10 ../shared/data/cifar10_subset.npz" \
#                  PARALLEL_ARGS="--cifar10 ../shared/data/cifar10_subset.npz"
BENCH_ARGS ?=
PARALLEL_ARGS ?=
bench: setup
	$(PY) benchmarks/bench.py $(BENCH_ARGS)
	$(PY) benchmarks/parallel.py $(PARALLEL_ARGS)

# Regenerate (or, with REF_ARGS="--rounds N", extend) every published reference run from its own config.json,
# through the run folders in data/reference-runs (checkpoints); hours for the full-scale Shakespeare runs.
REF_ARGS ?=
reference: setup
	$(PY) -m fl_lib reference --all $(REF_ARGS)

# The what-if dashboard (app/whatif.py) served by Voila on http://$(APP_IP):$(APP_PORT)/.
# APP_IP=0.0.0.0 opens it to the network (README: what that exposes). RUNS: the results cache it reads and adds to.
APP_IP ?= 127.0.0.1
APP_PORT ?= 8866
RUNS ?= $(or $(FL_LIB_RUNS),data/runs)
app/whatif.ipynb: app/whatif.py
	$(VENV)/bin/jupytext --quiet --to ipynb --output $@ $<
app: setup app/whatif.ipynb
	FL_LIB_RUNS=$(abspath $(RUNS)) FL_LIB_DATA_ROOT=$(abspath data) $(VENV)/bin/voila app/whatif.ipynb --no-browser \
		--port=$(APP_PORT) --Voila.ip=$(APP_IP) "$$($(PY) -c 'from fl_lib.study.whatif import VOILA_ARGS; print(*VOILA_ARGS)')"
