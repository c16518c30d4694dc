"""No import cycles between the modules of swarmless, not even type-only ones.

The graph is read from the source with ``ast``: every ``import`` and ``from ... import``
of a swarmless module anywhere in a file counts, at the top, inside a function, or under
``if TYPE_CHECKING:`` (a type-only cycle still says two modules are one). An edge goes to
the module named, or to the submodule when ``from package import name`` names one.
Importing a submodule also runs its package's ``__init__``; those implicit edges are not
counted (every package would be in a cycle with the modules it re-exports).
"""

from __future__ import annotations

import ast
import pathlib

import swarmless

ROOT = pathlib.Path(swarmless.__file__).parent


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if "templates" in parts:
            continue  # files copied into scaffolded functions, not modules of swarmless
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: line of the first import}."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.append(sub if sub in modules else source)
            for target in targets:
                # ``import swarmless.a.b`` names swarmless.a.b; keep the longest known prefix.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _describe(graph: dict[str, dict[str, int]], component: frozenset[str]) -> str:
    return "; ".join(
        f"{a} -> {b} (line {graph[a][b]})"
        for a in sorted(component)
        for b in sorted(graph[a])
        if b in component
    )


def test_the_graph_sees_type_only_and_local_imports() -> None:
    graph = import_graph()
    assert "swarmless.exceptions" in graph["swarmless.sdk.gateway_base"]
    # A TYPE_CHECKING-only import is an edge too.
    assert "swarmless.gateway.ui.context" in graph["swarmless.gateway.ui.site"]


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles: " + " | ".join(_describe(graph, c) for c in found)


def test_sdk_and_errors_import_nothing_of_the_gateway() -> None:
    """The client side stays light: no server module behind ``import swarmless``."""
    graph = import_graph()
    reached: set[str] = set()
    pending = ["swarmless"]
    while pending:
        module = pending.pop()
        if module not in reached:
            reached.add(module)
            pending.extend(graph[module])
    layers = {"gateway", "dispatch", "store", "proxy", "backends"}
    server = {m for m in reached if set(m.split(".")[1:2]) & layers}
    assert server == set()
