"""fl_lib: a small, fast simulator of federated learning with quantized uploads.

Layers, each importing only the ones above it in this list (tests/test_imports.py):

    core/       data, models, the quantizer and codec, seeded streams, links, local
                training, the stage protocol, aggregators, the round metrics record
    privacy/    DP-FedAvg, secure aggregation, DP on a rotated grid, leakage attacks,
                and the pipeline stages they plug in as
    simulator/  the pipeline built from a Config, the simulated clock, the Federation
                that runs rounds, FedBuff, and the backends that train a round's clients
    runtime/    run folders, checkpoints, run_many, Flower
    study/      what the lessons use: sweeps, measures, plots, widgets, the report
    cli.py      the command line (python -m fl_lib)
"""
import importlib
import importlib.abc
import importlib.util
import os
import sys

# PyTorch's OpenMP threads spin while they wait for work. Two torch processes at
# once on a small machine (a report and a notebook kernel, or parallel tests) then
# steal each other's cores and both run about 10x slower. A passive wait avoids
# that at no measurable cost to a lone process. It only takes effect when fl_lib is
# imported before torch (or set in the shell); a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.6.0"

# 0.4's flat modules, moved into the layers in 0.5 (CHANGES.md): `import fl_lib.fedavg` and
# `from fl_lib import dp` keep working and give the very module at its new place.
MOVED = {
    "errors": "core.errors", "config": "core.config", "rng": "core.rng", "data": "core.data",
    "shakespeare": "core.shakespeare", "partition": "core.partition", "models": "core.models",
    "quant": "core.quant", "codec": "core.codec", "client": "core.client", "links": "core.links",
    "aggregation": "core.aggregators.mean",
    "dp": "privacy.dp", "dp_quant": "privacy.dp_quant", "secagg": "privacy.secagg", "leakage": "privacy.leakage",
    "fedavg": "simulator.federation", "fedbuff": "simulator.fedbuff", "pool": "simulator.pool",
    "batched": "simulator.batched",
    "results": "runtime.results", "checkpoint": "runtime.checkpoint", "flower": "runtime.flower",
    "lesson": "study.lesson", "plots": "study.plots", "widgets": "study.widgets", "analysis": "study.analysis",
    "metrics": "study.measures", "report": "study.report", "traffic": "study.traffic", "mixing": "study.mixing",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `fl_lib.<old name>` as the module at its new place (one module object, two names)."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, old = fullname.partition(".")
        if head == __name__ and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{MOVED[spec.name.partition('.')[2]]}")

    def exec_module(self, module):
        pass  # already executed under its new name


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())
