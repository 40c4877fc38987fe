"""The package's import graph: no module imports another that imports it back."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fl_lib"


def _imports(path: Path) -> set[str]:
    """fl_lib modules that `path` imports, anywhere in the file (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x, y
                found.update(a.name for a in node.names)
            elif node.module and node.module.startswith("fl_lib."):
                found.add(node.module.split(".")[1])
            elif node.module == "fl_lib":
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("fl_lib."))
    return found


def graph() -> dict[str, set[str]]:
    modules = {p.stem: p for p in PACKAGE.glob("*.py")}
    return {name: _imports(path) & set(modules) - {name} for name, path in modules.items()}


def test_no_module_imports_one_that_imports_it_back():
    g = graph()
    assert "batched" in g["fedavg"] and "client" in g["batched"]  # the walk sees real edges

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
