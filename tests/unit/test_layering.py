"""Folders import downward only: the import graph of faithclip's subpackages and top-level modules has no
cycle (STYLE.md). Every import counts, also one inside a function: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import faithclip

ROOT = Path(faithclip.__file__).parent


def unit_of(module: str) -> str | None:
    """``faithclip.methods.context`` -> ``methods``; ``faithclip.api`` -> ``api``; the package root -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "faithclip" else None


def import_graph() -> dict[str, dict[str, list[str]]]:
    """unit -> imported unit -> where (file:line), for every ``faithclip`` import in the package."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in ("__init__.py", "__main__.py"):
            continue  # the package root re-exports the public API: it sits above everything
        source = relative.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "faithclip" else [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                target = unit_of(name)
                if target and target != source:
                    graph[source][target].append(f"{relative}:{node.lineno}")
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle as a list of units (first == last), or None, by depth-first search with colours."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(unit: str) -> list[str] | None:
        state[unit] = "open"
        path.append(unit)
        for nxt in graph.get(unit, {}):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[unit] = "done"
        path.pop()
        return None

    for unit in list(graph):
        if unit not in state and (found := visit(unit)):
            return found
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b": ["a.py:1"]}, "b": {"c": ["b.py:1"]}, "c": {"a": ["c.py:1"]}, "d": {"a": ["d.py:1"]}}
    assert find_cycle(graph) in (["a", "b", "c", "a"], ["b", "c", "a", "b"], ["c", "a", "b", "c"])
    assert find_cycle({"a": {"b": []}, "b": {}}) is None


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    assert "methods" in graph["api"]  # a module-level import
    assert "report" in graph["explanation"]  # only inside Explanation.figure(): still counted


def test_no_folder_imports_a_folder_that_imports_it_back():
    graph = import_graph()
    cycle = find_cycle(graph)
    if cycle:
        steps = [f"{a} -> {b} ({', '.join(graph[a][b][:3])})" for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("import cycle:\n  " + "\n  ".join(steps))
