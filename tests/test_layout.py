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


def _sources(package: Path) -> list[Path]:
    """The package's modules, its subpackages' included (densenet_operator/ascend/)."""
    return sorted(package.rglob("*.py"))


def _module(path: Path, package: Path) -> str:
    """The dotted name of `path` in `package`: densenet_operator.ascend.ranktable."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(name: str, modules: set[str]) -> set[str]:
    """What importing `name` runs of the package: the module and every package above it."""
    parts = name.split(".")
    return {".".join(parts[:n]) for n in range(1, len(parts) + 1)} & modules


def _imports(path: Path, package: Path, modules: set[str]) -> set[str]:
    """Modules of its own package that `path` imports, at any depth (lazy imports count);
    `from a.b import c` counts a.b.c when c is a module, else a.b."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= _imported(node.module, modules)
            found |= {f"{node.module}.{a.name}" for a in node.names} & modules
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found |= _imported(alias.name, modules)
    return found - {_module(path, package)}


def _graph(package: Path) -> dict[str, set[str]]:
    modules = {_module(p, package) for p in _sources(package)}
    return {_module(p, package): _imports(p, package, modules) for p in _sources(package)}


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
    assert _cycle(_graph(package)) is None


def test_the_import_graph_sees_subpackages() -> None:
    graph = _graph(PACKAGES[1])
    assert "densenet_operator.ascend.ranktable" in graph["densenet_operator.lifecycle"]
    assert "densenet_operator.ascend.hccl" in graph["densenet_operator.ascend.ranktable"]


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
    for path in _sources(package):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not _argparse_table(
                path, node.name
            ):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(
                        f"{path.relative_to(package)}:{node.lineno} {node.name} ({lines} lines)"
                    )
    assert long == []


def test_the_operator_side_never_imports_the_trainer_or_torch() -> None:
    for package in PACKAGES[:2]:
        for path in _sources(package):
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
