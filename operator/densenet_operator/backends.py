"""The gang backends the operator knows (gang.py's interface, one module each), and which one
a job gets: the first that wants it, else none."""

from __future__ import annotations

from collections.abc import Mapping

from densenet_operator import volcano
from densenet_operator.gang import NONE, CustomKind, GangBackend
from densenet_operator.spec import TrainingSpec

BACKENDS: tuple[GangBackend, ...] = (volcano.BACKEND,)
# Every backend's custom kinds: the reconciler creates, reads and deletes them.
CUSTOM_KINDS: Mapping[str, CustomKind] = {
    kind: api for backend in BACKENDS for kind, api in backend.kinds.items()
}


def backend_for(spec: TrainingSpec) -> GangBackend:
    return next((backend for backend in BACKENDS if backend.wanted_by(spec)), NONE)
