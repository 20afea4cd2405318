"""The layout's rules, checked: no import cycle in a package, no long function in operator/ or
trainer/ (argparse tables excepted), and the operator's side imports no trainer and no torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    ROOT / "operator" / "densenet_contract",
    ROOT / "operator" / "densenet_operator",
    ROOT / "trainer" / "densenet_trainer",
)
MAX_FUNCTION_LINES = 60


def _module(path: Path) -> str:
    return path.parent.name if path.stem == "__init__" else f"{path.parent.name}.{path.stem}"


def _imports(path: Path) -> set[str]:
    """Modules of its own package that `path` imports, at any depth (lazy imports count)."""
    package, found = path.parent.name, set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package):
            names = [f"{package}.{a.name}" for a in node.names] if node.module == package else []
            found.update(names or [node.module])
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(package + "."))
    return found - {_module(path)}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep in graph and dep not in state and (found := visit(dep, [*stack, dep])):
                return found
        state[node] = 2
        return None

    return next((c for n in sorted(graph) if n not in state and (c := visit(n, [n]))), None)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_no_import_cycle(package: Path) -> None:
    graph = {_module(p): _imports(p) for p in package.glob("*.py")}
    assert _cycle(graph) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a.x": {"a.y"}, "a.y": {"a.x"}}) == ["a.x", "a.y", "a.x"]


def _argparse_table(path: Path, function: str) -> bool:
    """A parser, or flags.py's _add_*_flags: one add_argument after another."""
    if "parser" in function:
        return True
    return path.name == "flags.py" and function.startswith("_add_") and function.endswith("_flags")


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_no_function_is_longer_than_a_screen(package: Path) -> None:
    long = []
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not _argparse_table(
                path, node.name
            ):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_the_operator_side_never_imports_the_trainer_or_torch() -> None:
    for package in PACKAGES[:2]:
        for path in package.glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names = (
                        [a.name for a in node.names]
                        if isinstance(node, ast.Import)
                        else [node.module or ""]
                    )
                    assert not any(
                        n.split(".")[0] in {"torch", "densenet_trainer"} for n in names
                    ), path
