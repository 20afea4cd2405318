"""Typed spec models that are their own OpenAPI schema.

A spec model is a frozen dataclass whose fields carry their API facts in `spec_field(...)`:
the JSON key (camelCase of the field name by default), the description, bounds, pattern,
immutability and, for recipe fields, the trainer flag they become. From one model come
- `parse(Model, body, path)`: the typed value, with the defaults applied and every bound,
  enum and cross-field rule checked (SpecError names the field, as the API server does);
- `openapi(Model)`: the CRD's structural OpenAPI v3 schema with its CEL rules
  (densenet_operator.crd writes crds/ and the chart's copy from it);
- `trainer_flags(value)`: the `densenet-train` flags of a recipe.

Cross-field rules are written twice by nature, as CEL for the API server and as a Python
predicate for bodies that never met it (unit tests, `rank-table` dry runs), but their message
exists once; tests/operator/test_crd_validation.py checks the CEL side on the real API server.

Standard library only: the trainer imports the recipe model for its flag defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from typing import Any, Literal


class SpecError(ValueError):
    """A spec the operator cannot act on (the CRD schema refuses most of these earlier)."""


@dataclass(frozen=True)
class Rule:
    """A rule over several fields of one object: CEL for the API server, `holds` for Python."""

    cel: str
    message: str
    holds: Callable[[Any], bool]
    field_path: str | None = None  # e.g. ".devicesPerReplica": where kubectl points


@dataclass(frozen=True)
class FieldMeta:
    description: str = ""
    key: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    immutable: str | None = None  # the message when an update changes it
    flag: str | None = None  # the densenet-train flag of a recipe field
    schema: Mapping[str, Any] | None = None  # the whole schema of a free-form field
    rules: tuple[Rule, ...] = ()  # rules over this field's value (`self` in CEL)


def spec_field(default: Any = MISSING, **meta: Any) -> Any:
    """A dataclass field with its API facts (see FieldMeta). A mutable default (dict) is
    copied for each instance; a nested model defaults to its own defaults."""
    kwargs: dict[str, Any] = {"metadata": {"spec": FieldMeta(**meta)}}
    if isinstance(default, dict):
        kwargs["default_factory"] = lambda: dict(default)
    elif isinstance(default, type) and dataclasses.is_dataclass(default):
        kwargs["default_factory"] = default
    elif default is not MISSING:
        kwargs["default"] = default
    return dataclasses.field(**kwargs)


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _meta(field: dataclasses.Field[Any]) -> FieldMeta:
    return field.metadata.get("spec") or FieldMeta()


@functools.cache  # a field's key never changes; parse() asks for it on every pass
def _key(field: dataclasses.Field[Any]) -> str:
    return _meta(field).key or camel(field.name)


def _rules(model: type) -> tuple[Rule, ...]:
    return tuple(getattr(model, "RULES", ()))


@functools.cache
def _fields(model: type) -> tuple[tuple[dataclasses.Field[Any], Any], ...]:
    # Once per model: get_type_hints evaluates every (string) annotation again on each call,
    # which was an eighth of the operator's CPU when every pass parsed the spec with it.
    hints = typing.get_type_hints(model)
    return tuple((f, hints[f.name]) for f in dataclasses.fields(model) if f.init)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _has_default(field: dataclasses.Field[Any]) -> bool:
    return field.default is not MISSING or field.default_factory is not MISSING


# ---------------------------------------------------------------- parsing


def parse(model: type, body: Mapping[str, Any] | None, path: str) -> Any:
    """`body` (a dict as served, or not yet defaulted) as an instance of `model`."""
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        raise SpecError(f"{path} must be an object")
    values: dict[str, Any] = {}
    for field, tp in _fields(model):
        key = _key(field)
        raw = body.get(key)
        inner, _ = _unwrap_optional(tp)
        if raw is None and dataclasses.is_dataclass(inner) and field.default is not None:
            raw = {} if _has_default(field) else None
        if raw is None:
            if not _has_default(field):
                raise SpecError(f"{path}.{key} is required")
            continue
        values[field.name] = _convert(tp, raw, f"{path}.{key}", _meta(field))
        _check(_meta(field).rules, values[field.name], f"{path}.{key}")
    value = model(**values)
    _check(_rules(model), value, path)
    return value


def _check(rules: tuple[Rule, ...], value: Any, path: str) -> None:
    for rule in rules:
        if not rule.holds(value):
            raise SpecError(f"{path}{rule.field_path or ''}: {rule.message}")


def _convert(tp: Any, raw: Any, path: str, meta: FieldMeta) -> Any:
    tp, _ = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return parse(tp, raw, path)  # type: ignore[arg-type]
    if origin is Literal:
        choices = typing.get_args(tp)
        if raw not in choices:
            raise SpecError(f"{path} {raw!r} is not one of {', '.join(map(str, choices))}")
        return raw
    if origin is tuple:
        if not isinstance(raw, list | tuple):
            raise SpecError(f"{path} must be a list")
        item = typing.get_args(tp)[0]
        return tuple(_convert(item, v, f"{path}[{i}]", FieldMeta()) for i, v in enumerate(raw))
    if origin is dict or tp is Any:
        if meta.schema is None and not isinstance(raw, Mapping):
            raise SpecError(f"{path} must be an object")
        return dict(raw) if isinstance(raw, Mapping) else raw
    return _scalar(tp, raw, path, meta)


def _scalar(tp: Any, raw: Any, path: str, meta: FieldMeta) -> Any:
    ok = {
        bool: isinstance(raw, bool),
        int: isinstance(raw, int) and not isinstance(raw, bool),
        float: isinstance(raw, int | float) and not isinstance(raw, bool),
        str: isinstance(raw, str),
    }[tp]
    if not ok:
        raise SpecError(f"{path} must be of type {OPENAPI_TYPES[tp]}, not {raw!r}")
    value = tp(raw)
    if meta.minimum is not None and (
        value <= meta.minimum if meta.exclusive_minimum else value < meta.minimum
    ):
        relation = "greater than" if meta.exclusive_minimum else "at least"
        raise SpecError(f"{path} must be {relation} {meta.minimum:g}, not {value!r}")
    if meta.maximum is not None and (
        value >= meta.maximum if meta.exclusive_maximum else value > meta.maximum
    ):
        relation = "less than" if meta.exclusive_maximum else "at most"
        raise SpecError(f"{path} must be {relation} {meta.maximum:g}, not {value!r}")
    if tp is str:
        if meta.min_length is not None and len(value) < meta.min_length:
            raise SpecError(f"{path} must be at least {meta.min_length} characters")
        if meta.max_length is not None and len(value) > meta.max_length:
            raise SpecError(f"{path} must be at most {meta.max_length} characters")
        if meta.pattern is not None and not re.search(meta.pattern, value):
            raise SpecError(f"{path} {value!r} does not match {meta.pattern}")
    return value


# ---------------------------------------------------------------- OpenAPI

OPENAPI_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def openapi(model: type) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of `model`, CEL rules included."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field, tp in _fields(model):
        properties[_key(field)] = _field_schema(field, tp)
        if not _has_default(field):
            required.append(_key(field))
    schema: dict[str, Any] = {"type": "object"}
    if required:
        schema["required"] = required
    rules = [_cel(rule) for rule in _rules(model)]
    if rules:
        schema["x-kubernetes-validations"] = rules
    schema["properties"] = properties
    return schema


def _cel(rule: Rule) -> dict[str, str]:
    cel = {"rule": rule.cel, "message": rule.message}
    if rule.field_path:
        cel["fieldPath"] = rule.field_path
    return cel


def _field_schema(field: dataclasses.Field[Any], tp: Any) -> dict[str, Any]:
    meta = _meta(field)
    schema = dict(meta.schema) if meta.schema is not None else _type_schema(tp)
    if meta.description:
        schema = {**schema, "description": meta.description}
        schema = {"type": schema.pop("type"), **schema} if "type" in schema else schema
    default = _default(field, tp)
    if default is not None:
        schema["default"] = default
    for key, value in (
        ("minimum", meta.minimum),
        ("maximum", meta.maximum),
        ("minLength", meta.min_length),
        ("maxLength", meta.max_length),
        ("pattern", meta.pattern),
    ):
        if value is not None:
            schema[key] = value
    if meta.exclusive_minimum:
        schema["exclusiveMinimum"] = True
    if meta.exclusive_maximum:
        schema["exclusiveMaximum"] = True
    validations = [_cel(rule) for rule in meta.rules]
    if meta.immutable:
        validations.append({"rule": "self == oldSelf", "message": meta.immutable})
    if validations:
        schema["x-kubernetes-validations"] = validations
    return schema


def _default(field: dataclasses.Field[Any], tp: Any) -> Any:
    inner, _ = _unwrap_optional(tp)
    if dataclasses.is_dataclass(inner) and _has_default(field):
        return {}  # the API server then fills in the nested defaults
    value = field.default
    if value is MISSING or value is None or isinstance(value, tuple):
        return None
    return value


def _type_schema(tp: Any) -> dict[str, Any]:
    tp, _ = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return openapi(tp)  # type: ignore[arg-type]
    if origin is Literal:
        choices = list(typing.get_args(tp))
        return {"type": OPENAPI_TYPES[type(choices[0])], "enum": choices}
    if origin is tuple:
        return {"type": "array", "items": _type_schema(typing.get_args(tp)[0])}
    if origin is dict:
        value_type = typing.get_args(tp)[1]
        if value_type is Any:
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        return {"type": "object", "additionalProperties": _type_schema(value_type)}
    if tp is Any:
        return {"x-kubernetes-preserve-unknown-fields": True}
    return {"type": OPENAPI_TYPES[tp]}


# ---------------------------------------------------------------- trainer flags


def trainer_flags(value: Any) -> list[str]:
    """The flags of every field of `value` (nested models included) that names one: `flag
    value` pairs first, then the switches of true booleans; nothing for None."""
    pairs, switches = _flags(value)
    return pairs + switches


def _flags(value: Any) -> tuple[list[str], list[str]]:
    pairs: list[str] = []
    switches: list[str] = []
    model: type = type(value)
    for field, _ in _fields(model):
        current = getattr(value, field.name)
        flag = _meta(field).flag
        if dataclasses.is_dataclass(current):
            nested = _flags(current)
            pairs, switches = pairs + nested[0], switches + nested[1]
        elif flag is None or current is None or current is False:
            continue
        elif current is True:
            switches.append(flag)
        else:
            pairs += [flag, format(current, "g") if isinstance(current, float) else str(current)]
    return pairs, switches


def flag_fields(model: type, prefix: str = "") -> dict[str, str]:
    """{flag: the field's JSON path} for every field of `model` that names a trainer flag."""
    found: dict[str, str] = {}
    for field, tp in _fields(model):
        inner, _ = _unwrap_optional(tp)
        path = f"{prefix}.{_key(field)}" if prefix else _key(field)
        if dataclasses.is_dataclass(inner):
            found.update(flag_fields(inner, path))  # type: ignore[arg-type]
        elif _meta(field).flag:
            found[_meta(field).flag] = path  # type: ignore[index]
    return found
