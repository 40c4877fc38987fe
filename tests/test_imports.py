"""The package's import graph: no cycles, and every layer imports only the layers below it.

Layers, lowest first (fl_lib/__init__.py): core, privacy, simulator, runtime, study,
then the command line. A module may import its own layer and lower ones, never a
higher one, so the simulator core runs without the runtime or the lessons' code.
"""
import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fl_lib"
LAYERS = ["core", "privacy", "simulator", "runtime", "study", "cli"]  # lowest first; cli: the top-level modules


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, names: set[str]) -> set[str]:
    """The fl_lib modules an ImportFrom in `module` names (a package's submodules count as modules)."""
    if node.level:
        package = module.split(".")
        base = package[: len(package) - node.level + (1 if module in _packages() else 0)]
        base = ".".join(base + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    found = set()
    if base in names:
        found.add(base)
    for alias in node.names:
        if f"{base}.{alias.name}" in names:
            found.add(f"{base}.{alias.name}")
    return found


def _packages() -> set[str]:
    return {_name(p) for p in PACKAGE.rglob("__init__.py")}


def graph() -> dict[str, set[str]]:
    """{module: the fl_lib modules it imports}, function-level imports included."""
    paths = {_name(p): p for p in PACKAGE.rglob("*.py")}
    names = set(paths)
    g = {}
    for name, path in paths.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                found |= _resolve(name, node, names)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in names}
        g[name] = found - {name, "fl_lib"}
    return g


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS[:-1] else len(LAYERS) - 1


def test_the_walk_sees_real_edges():
    g = graph()
    assert "fl_lib.simulator.batched" in g["fl_lib.simulator.backends"]
    assert "fl_lib.core.client" in g["fl_lib.simulator.batched"]
    assert "fl_lib.core.errors" in g["fl_lib.core.config"]  # from .errors import ...
    assert "fl_lib.core.codec" in g["fl_lib.privacy.leakage"]  # from ..core import codec


def test_no_module_imports_one_that_imports_it_back():
    g = graph()

    def cycle_from(start):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(g[node]):
                if nxt == start:
                    return path + [start]
                if nxt not in path:
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for c in map(cycle_from, sorted(g)) if c]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_layer_imports_a_higher_one():
    upward = [f"{m} ({LAYERS[layer(m)]}) imports {d} ({LAYERS[layer(d)]})"
              for m, deps in sorted(graph().items()) for d in sorted(deps) if layer(d) > layer(m)]
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_the_layer_check_can_fail():
    assert layer("fl_lib.core.config") < layer("fl_lib.study.plots") < layer("fl_lib.cli")


@pytest.mark.parametrize("old,new", [("fedavg", "simulator.federation"), ("metrics", "study.measures"),
                                     ("aggregation", "core.aggregators.mean"), ("dp", "privacy.dp")])
def test_0_4_module_names_still_import(old, new):
    assert importlib.import_module(f"fl_lib.{old}") is importlib.import_module(f"fl_lib.{new}")


def test_a_flower_clientapp_does_not_import_torchvision():
    """Flower 1.42 starts a fresh ClientApp process for every message: torchvision (~1.5 s to import) is
    imported only where a SqueezeNet is built or a dataset downloaded, never by the ClientApp's module."""
    import subprocess
    import sys
    probe = "import sys, fl_lib.runtime.flower; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
