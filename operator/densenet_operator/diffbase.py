"""kopf's diff base, switched off: this operator reacts to events only.

For its change handlers (on.create, on.update, on.resume, on.delete) and daemons, kopf keeps
each object's last handled "essence" and diffs every event's body against it. It builds that
essence, a deep copy of the whole body, for every event of every watched resource, whether or
not such handlers exist. This operator has none: its handlers are kopf.on.event and
kopf.index, and the job tasks decide what to do from the current state. So the copy was pure
cost, a tenth of the operator's CPU in the side-by-side benchmark's wave (py-spy: 7.3% building
essences, 3.2% deep-copying them again to clear progress fields). NoDiffBase builds an empty
essence and stores nothing; `needs_diffbase` tells when a registry has handlers that would
need the real one.
"""

from __future__ import annotations

from typing import Any

import kopf


class NoDiffBase(kopf.DiffBaseStorage):
    """No essence, nothing stored, nothing fetched: every event is handled as it comes."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def needs_diffbase(registry: kopf.OperatorRegistry) -> bool:
    """Whether any handler of `registry` reads the diff base (change handlers, daemons)."""
    return bool(registry._changing.get_all_handlers() or registry._spawning.get_all_handlers())
