"""The layering of ``napari_inkdetect.models``: no import circle, and none hidden in a function.

Run as a script (``python tests/models/test_import_graph.py``) to print the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

import napari_inkdetect.models

PACKAGE = "napari_inkdetect.models"
MODELS_DIR = Path(napari_inkdetect.models.__file__).parent


def _targets(node: ast.Import | ast.ImportFrom, modules: set[str]) -> set[str]:
    """The modules of the package that one import statement pulls in."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif node.level:  # relative: ``from . import x`` / ``from .x import y``
        names = [f"{PACKAGE}.{node.module}" if node.module else PACKAGE]
        names += [f"{PACKAGE}.{alias.name}" for alias in node.names if not node.module]
    else:
        names = [node.module or ""]
        names += [f"{node.module}.{alias.name}" for alias in node.names]
    found = set()
    for name in names:
        if name == PACKAGE:
            found.add("__init__")
        elif name.startswith(PACKAGE + ".") and name[len(PACKAGE) + 1 :] in modules:
            found.add(name[len(PACKAGE) + 1 :])
    if isinstance(node, ast.ImportFrom) and found - {"__init__"}:
        found.discard("__init__")  # ``from napari_inkdetect.models import checkpoints``
    return found


def import_graph() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """``module -> modules of the package it imports``, and the (module, target) pairs whose
    import is not a top-level statement (inside a function, ``if TYPE_CHECKING``, ...).
    """
    files = {p.stem: p for p in sorted(MODELS_DIR.glob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    nested: set[tuple[str, str]] = set()
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                targets = _targets(node, set(files)) - {name}
                graph[name] |= targets
                if id(node) not in top:
                    nested |= {(name, target) for target in targets}
    return graph, nested


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_models_have_no_import_circle():
    graph, _ = import_graph()
    assert find_cycle(graph) is None


def test_no_import_inside_the_package_is_deferred():
    _, nested = import_graph()
    assert nested == set()


def test_checkpoint_metadata_is_a_leaf():
    graph, _ = import_graph()
    assert graph["checkpoint_info"] == set()


def test_registry_is_on_top():
    graph, _ = import_graph()
    assert {"detector", "resnet3d"} <= graph["registry"]
    assert [name for name, deps in graph.items() if "registry" in deps] == ["__init__"]


def test_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


if __name__ == "__main__":
    graph, nested = import_graph()
    for module in sorted(graph, key=lambda m: (len(graph[m]), m)):
        print(f"{module:<19} -> {', '.join(sorted(graph[module])) or '(nothing in models/)'}")
    print("deferred:", sorted(nested) or "none", "| circle:", find_cycle(graph) or "none")
