"""The layout's rules, checked: no import cycle in a package, no long function in operator/ or
trainer/ (argparse tables excepted), the operator's side imports no trainer and no torch, and
each concern of the operator has one home (Ascend: ascend/, Volcano: volcano.py)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
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


# One home per concern: where a concern's strings and names may appear in the operator's code
# (docstrings, comments and the prose of description= and help= arguments aside).
# (concern, pattern, home: a module or a folder of densenet_operator, names checked too)
HOMES = (
    ("Ascend (huawei.com, HCCL)", re.compile(r"huawei\.com|hccl", re.I), "ascend/", True),
    ("Volcano (its API group, its scheduler name)",
     re.compile(r"scheduling\.volcano\.sh|^volcano$", re.I), "volcano.py", False),
    ("native gang scheduling (scheduling.k8s.io Workloads and PodGroups)",
     re.compile(r"^scheduling\.k8s\.io(/v1\w*)?$|^PodGroupInitiallyScheduled$"), "native.py",
     False),
    ("Kueue (its API group, labels and gates)", re.compile(r"kueue\.x-k8s\.io"), "kueue.py",
     False),
)  # fmt: skip
PROSE_ARGUMENTS = ("description", "help")


def _prose(tree: ast.AST) -> set[int]:
    """The ids of the nodes that only describe: docstrings, description=/help= values, and the
    values of a Literal type (the spec's vocabulary, e.g. `gang: auto | native | volcano`)."""
    prose: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "Literal":
            prose.update(id(n) for n in ast.walk(node.slice))
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                prose.add(id(first.value))
        elif isinstance(node, ast.keyword) and node.arg in PROSE_ARGUMENTS:
            prose.update(id(n) for n in ast.walk(node.value))
    return prose


def _words(source: str) -> Iterator[tuple[int, str, bool]]:
    """(line, text, is a name) of each string constant and name in the code."""
    tree = ast.parse(source)
    prose = _prose(tree)
    for node in ast.walk(tree):
        if id(node) in prose:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value, False
        elif isinstance(node, ast.Name):
            yield node.lineno, node.id, True
        elif isinstance(node, ast.Attribute):
            yield node.lineno, node.attr, True
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node.lineno, node.name, True
        elif isinstance(node, ast.arg):
            yield node.lineno, node.arg, True
        elif isinstance(node, ast.alias):
            yield node.lineno, node.asname or node.name, True


def _misplaced(source: str, module: str) -> list[str]:
    """What `source` (densenet_operator's `module`, e.g. "ascend/pod.py") holds of a concern
    whose home it is not."""
    found = []
    for concern, pattern, home, names in HOMES:
        if module == home or (home.endswith("/") and module.startswith(home)):
            continue
        found += [f"{module}:{line}: {text!r} is {concern}'s, at home in {home}"
                  for line, text, is_name in _words(source)
                  if (names or not is_name) and pattern.search(text)]  # fmt: skip
    return found


def test_each_concern_has_one_home() -> None:
    package = PACKAGES[1]
    found = [
        problem
        for path in _sources(package)
        for problem in _misplaced(
            path.read_text(encoding="utf-8"), path.relative_to(package).as_posix()
        )
    ]
    assert found == []


def test_the_home_rule_finds_a_stray() -> None:
    source = '''"""Docstrings may say HCCL and huawei.com."""
import densenet_operator.volcano as volcano  # a module's name is not its scheduler name
HCCL_ENV = {"x": "y"}
RESOURCE = "huawei.com/Ascend910"
field(description="prose may name HCCL")
spec = {"schedulerName": "volcano", "group": "scheduling.volcano.sh/v1beta1"}
Gang = Literal["volcano", "native"]  # a spec's vocabulary may name a backend
'''
    assert [p.split(": ", 1)[0] for p in _misplaced(source, "pods.py")] == [
        "pods.py:3", "pods.py:4", "pods.py:6", "pods.py:6"
    ]  # fmt: skip
    assert [p.split(": ", 1)[0] for p in _misplaced(source, "ascend/pod.py")] == [
        "ascend/pod.py:6", "ascend/pod.py:6"
    ]  # fmt: skip
    assert _misplaced(source, "volcano.py") == [
        "volcano.py:3: 'HCCL_ENV' is Ascend (huawei.com, HCCL)'s, at home in ascend/",
        "volcano.py:4: 'huawei.com/Ascend910' is Ascend (huawei.com, HCCL)'s, at home in ascend/",
    ]
