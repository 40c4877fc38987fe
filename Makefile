# Plain runner: `make study` runs the study, `make test` runs the tests.
# Both create .venv and install everything first (once; again when requirements change).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PARAMS ?= notebooks/params/default.yaml
NAME ?= study

.PHONY: setup study test report bench

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

test: setup
	$(PY) -m pytest -q

# e.g. make bench BENCH_ARGS="--mnist ../shared/data/mnist_subset.npz --cifar10 ../shared/data/cifar10_subset.npz" \
#                  PARALLEL_ARGS="--cifar10 ../shared/data/cifar10_subset.npz"
BENCH_ARGS ?=
PARALLEL_ARGS ?=
bench: setup
	$(PY) benchmarks/bench.py $(BENCH_ARGS)
	$(PY) benchmarks/parallel.py $(PARALLEL_ARGS)
