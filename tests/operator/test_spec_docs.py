"""The README's spec table names every spec field (spec.py and the recipe model)."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

from densenet_contract.schema import _key
from densenet_operator.podtemplate import PodTemplate
from densenet_operator.spec import TrainingSpec

README = Path(__file__).resolve().parents[2] / "README.md"
# Documented as a whole in the table (their parts: README "Pod overrides" and the CRD).
WHOLE = (PodTemplate,)


def field_paths(model: type, prefix: str = "") -> list[str]:
    """Dotted JSON paths of the model's leaf fields: device.ascend.product, rankTable.hostIp."""
    paths = []
    hints = typing.get_type_hints(model)
    for field in dataclasses.fields(model):
        path = f"{prefix}{_key(field)}"
        inner = hints[field.name]
        args = [a for a in typing.get_args(inner) if a is not type(None)]
        inner = args[0] if len(args) == 1 else inner
        if dataclasses.is_dataclass(inner) and inner not in WHOLE:
            paths += field_paths(inner, f"{path}.")  # type: ignore[arg-type]
        else:
            paths.append(path)
    return paths


def table_names() -> list[list[str]]:
    """The backticked names of each row's first cell in the README's spec table."""
    text = README.read_text(encoding="utf-8")
    table = text.split("## The DenseNetTraining spec", 1)[1].split("\n\n", 2)[1]
    rows = [line.split("|")[1] for line in table.splitlines()[2:]]
    return [re.findall(r"`([^`]+)`", cell) for cell in rows]


def documented(path: str, rows: list[list[str]]) -> bool:
    """`path` is in a row: whole or by an enclosing object (`recipe.lrSchedule`), or as a name
    after the first, which gives the parent (`recipe.epochs`, `batchSize`)."""
    parent, _, leaf = path.rpartition(".")
    parts = path.split(".")
    enclosing = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    for names in rows:
        if enclosing & set(names):
            return True
        first_parent = names[0].rpartition(".")[0] if names else ""
        if leaf in names[1:] and first_parent == parent:
            return True
    return False


def test_the_readme_spec_table_names_every_spec_field() -> None:
    rows = table_names()
    missing = [path for path in field_paths(TrainingSpec) if not documented(path, rows)]
    assert missing == [], f"README.md's spec table lacks {missing}"
    assert "rankTable.hostIp" in field_paths(TrainingSpec)
