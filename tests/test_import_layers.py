"""Proves the code's imports flow one way and never in a circle: every import in flows/, tasks/,
schemas/ and examples/ — at module level or inside a function — goes to the same layer or a lower one
(flows → recipes, examples → generators → runtime → engines, sandbox, answers → schemas), nothing
outside flows/ imports flows/, no generator imports another generator's folder, and the module graph
has no cycle. It reads the source (AST), so a lazy import inside a function counts too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("flows", "tasks", "schemas", "examples")
# Lower number = lower layer. The longest matching prefix names a module's layer.
LAYERS = {
    "schemas": 0,
    "tasks.answers": 1, "tasks.engines": 1, "tasks.sandbox": 1,
    "tasks.runtime": 2, "tasks.clean": 2,
    "tasks.generators": 3,
    "tasks.recipes": 4, "examples": 4,
    "flows": 5,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Repo modules `name` imports (a `from pkg import sub` of a submodule counts as importing it)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a non-module attribute: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return LAYERS[best]


def _generator_folder(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if parts[:2] == ["tasks", "generators"] and len(parts) > 2 else None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_walker_sees_lazy_and_relative_imports(graph):
    # guards the test itself: a function-level import and relative imports are edges
    assert "tasks.engines.vllm_engine" in graph["tasks.engines"]  # imported inside make_engine()
    assert "tasks.generators.cot_rewrites.messages" in graph["tasks.generators.cot_rewrites.program"]
    assert "schemas.datadir" in graph["schemas.store"]


def test_imports_never_go_up_a_layer(graph):
    upward = sorted(f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
                    for a, targets in graph.items() for b in targets if _layer(b) > _layer(a))
    assert not upward, "\n".join(upward)


def test_nothing_outside_flows_imports_flows(graph):
    offenders = sorted(f"{a} imports {b}" for a, targets in graph.items() if not a.startswith("flows")
                       for b in targets if b.startswith("flows"))
    assert not offenders, "\n".join(offenders)


def test_generators_do_not_import_each_other(graph):
    crossing = sorted(f"{a} imports {b}" for a, targets in graph.items() for b in targets
                      if _generator_folder(a) and _generator_folder(b) and _generator_folder(a) != _generator_folder(b))
    assert not crossing, "\n".join(crossing)


def test_the_module_graph_has_no_cycle(graph):
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles
