"""diffbase.py: kopf's diff base switched off, and only while no handler needs it."""

from __future__ import annotations

from typing import Any

import kopf

import densenet_operator.handlers  # noqa: F401  (registers the operator's handlers)
from densenet_operator.diffbase import NoDiffBase, needs_diffbase


def test_no_essence_is_built_stored_or_fetched() -> None:
    storage = NoDiffBase()
    body = kopf.Body({"metadata": {"name": "p", "annotations": {"a": "b"}}, "spec": {"x": 1}})
    patch = kopf.Patch()
    assert storage.build(body=body) == {}
    storage.store(body=body, patch=patch, essence=kopf.BodyEssence(spec={"x": 1}))
    assert dict(patch) == {}
    assert storage.fetch(body=body) is None


def test_the_operator_has_no_handler_that_reads_the_diff_base() -> None:
    assert not needs_diffbase(kopf.get_default_registry())


def test_a_change_handler_or_a_daemon_would_need_it() -> None:
    async def handler(**_: Any) -> None:
        return None

    for decorator in (kopf.on.update, kopf.on.create, kopf.daemon):
        registry = kopf.OperatorRegistry()
        decorator("example.com", "v1", "things", registry=registry)(handler)
        assert needs_diffbase(registry)
    assert not needs_diffbase(kopf.OperatorRegistry())
