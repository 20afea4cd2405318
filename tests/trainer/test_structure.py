"""The trainer package's shape: no import cycles, and functions short enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "densenet_trainer"
PACKAGE_DIR = Path(__file__).resolve().parents[2] / "trainer" / PACKAGE
MAX_FUNCTION_LINES = 60


def is_argparse_table(file: str, function: str) -> bool:
    """flags.py's _add_*_flags: long by nature, one add_argument after another."""
    return file == "flags.py" and function.startswith("_add_") and function.endswith("_flags")


def modules() -> dict[str, ast.Module]:
    return {
        f"{PACKAGE}.{path.stem}": ast.parse(path.read_text(), str(path))
        for path in sorted(PACKAGE_DIR.glob("*.py"))
        if path.stem != "__init__"
    }


def package_imports(tree: ast.Module) -> set[str]:
    """The package's modules a module imports, at the top or inside functions alike."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            # `from densenet_trainer import launch` imports a module too
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith(f"{PACKAGE}.")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as a path that returns to its start, or None."""
    state: dict[str, str] = {}  # "open" while on the DFS stack, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for succ in sorted(graph.get(node, ())):
            if state.get(succ) == "open":
                return [*path[path.index(succ) :], succ]
            if succ not in state and (cycle := visit(succ, [*path, succ])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_package_has_no_import_cycle() -> None:
    parsed = modules()
    graph = {name: package_imports(tree) & set(parsed) for name, tree in parsed.items()}
    assert graph[f"{PACKAGE}.cli"] >= {f"{PACKAGE}.launch", f"{PACKAGE}.train"}  # seen
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def function_lengths() -> dict[tuple[str, str], int]:
    lengths = {}
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                lengths[(path.name, node.name)] = node.end_lineno - node.lineno + 1
    return lengths


def test_functions_are_short_except_the_argparse_tables() -> None:
    lengths = function_lengths()
    assert any(is_argparse_table(*key) for key in lengths)
    long = {
        key: n
        for key, n in lengths.items()
        if n > MAX_FUNCTION_LINES and not is_argparse_table(*key)
    }
    assert long == {}
