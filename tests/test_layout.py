"""The tree reads as the pipeline: every import in bench/ points down it, and nothing imports in a circle.

Floors, lowest first: the shared contracts at bench/'s root, then data, pretrain, evaluate, sweep,
results, then the encoder plugins (encoders/, baselines/), which the stages reach only by name
through the registry, and on top the command line. An import from a lower floor to a higher one,
or a cycle (counting imports inside functions too), fails here with the modules named.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("bench.data", "bench.pretrain", "bench.evaluate", "bench.sweep", "bench.results")
TOP = ("bench.cli", "bench.__main__")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in ("bench", "encoders", "baselines"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Every project module each module imports, at top level or inside a function."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def floor(module: str) -> int:
    if module in TOP:
        return len(STAGES) + 2
    if module.startswith(("encoders", "baselines")):
        return len(STAGES) + 1
    for i, stage in enumerate(STAGES, 1):
        if module == stage or module.startswith(stage + "."):
            return i
    return 0  # bench's root: the shared contracts


def test_every_import_points_down_the_pipeline():
    graph = _imports(_modules())
    upward = sorted(f"{a} imports {b}" for a, targets in graph.items() for b in targets if floor(b) > floor(a))
    assert not upward, "imports that point up the pipeline:\n" + "\n".join(upward)


def test_no_module_imports_itself_in_a_circle():
    graph = _imports(_modules())
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":  # on the current path: trail + [node] leads back to it
                cycles.append(" -> ".join((trail + [node])[(trail + [node]).index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [node])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
