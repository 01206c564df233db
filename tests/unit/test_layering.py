"""Folders import downward only: the import graph of faithclip's subpackages and top-level modules has no
cycle (STYLE.md), and neither has the graph of its files. Every import counts, also one inside a function
or under ``TYPE_CHECKING``: a lazy import is still a dependency. Nothing imports the package root (which
re-exports the public API) from below: the version has its own leaf, ``faithclip._version``."""

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
                return path[path.index(nxt) :] + [nxt]
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


# ---- files ------------------------------------------------------------------------------------------------
def module_name(path: Path) -> str:
    """``.../faithclip/methods/context.py`` -> ``faithclip.methods.context``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def file_graph() -> dict[str, dict[str, list[str]]]:
    """module -> imported module -> where (file:line), for every import statement naming a faithclip file.
    ``from package import name`` is an import of the file ``package/name.py`` when there is one, else of the
    package's ``__init__``. The import of a parent package that Python performs implicitly is not an edge:
    it is how packages work, not a dependency the file states."""
    files = {module_name(path): path for path in ROOT.rglob("*.py")}
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                if target in files and target != module:
                    graph[module][target].append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    return graph


def test_the_file_graph_sees_lazy_typing_and_submodule_imports():
    graph = file_graph()
    assert "faithclip.models.families" in graph["faithclip.models.clip"]  # module level
    assert "faithclip.models.text" in graph["faithclip.models.families"]  # under TYPE_CHECKING only
    assert "faithclip.methods.official.formula" in graph["faithclip.methods.official.vit"]
    assert "faithclip.api" in graph["faithclip.cli.explain"]  # inside a function


def test_no_file_imports_a_file_that_imports_it_back():
    graph = file_graph()
    cycle = find_cycle(graph)
    if cycle:
        steps = [f"{a} -> {b} ({', '.join(graph[a][b][:3])})" for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("import cycle between files:\n  " + "\n  ".join(steps))


def test_nothing_below_imports_the_package_root():
    graph = file_graph()
    upward = {
        module: where["faithclip"]
        for module, where in graph.items()
        if "faithclip" in where and module != "faithclip.__main__"
    }
    assert not upward, f"the package root is imported from below: {upward} (read the version from faithclip._version)"
