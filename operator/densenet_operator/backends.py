"""The gang backends the operator knows (gang.py's interface, one module each), and which one
a job gets: Kueue's when it is labelled for a queue, else the one its (resolved)
`spec.scheduling.gang` names, else none."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from densenet_operator import kueue, naming, native, volcano
from densenet_operator.gang import NONE, CustomKind, GangBackend
from densenet_operator.spec import Job

# Kueue first: a job in a queue is Kueue's, whatever its gang says.
BACKENDS: tuple[GangBackend, ...] = (kueue.BACKEND, native.BACKEND, volcano.BACKEND)
# Every backend's custom kinds, by (apiVersion, kind): the reconciler creates, reads and
# deletes them (two backends may both have a "PodGroup").
CUSTOM_KINDS: Mapping[tuple[str, str], CustomKind] = {
    (f"{api.group}/{api.version}", kind): api
    for backend in BACKENDS
    for kind, api in backend.kinds.items()
}


def backend_for(job: Job) -> GangBackend:
    return next((backend for backend in BACKENDS if backend.wanted_by(job)), NONE)


def pod_name(job: Job, index: int, gang: int) -> str:
    """Replica `index`'s pod in gang generation `gang`, as the job's backend names it."""
    per_gang = backend_for(job).pod_names_per_gang
    return naming.pod_name(job.ref.name, index, gang if per_gang else None)


Discovery = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]


async def discover(get: Discovery) -> frozenset[str]:
    """The backends' custom resources that the cluster serves (CustomKind.resource), from the
    discovery documents (APIResourceList) that `get(group, version)` returns (None: not
    served)."""
    served: set[str] = set()
    for group, version in sorted({(k.group, k.version) for k in CUSTOM_KINDS.values()}):
        document = await get(group, version)
        names = {r.get("name") for r in (document or {}).get("resources") or ()}
        served |= {f"{group}/{version}/{name}" for name in names}
    return frozenset(k.resource for k in CUSTOM_KINDS.values() if k.resource in served)


def auto_gangs(served: frozenset[str]) -> dict[str | None, str]:
    """What `gang: auto` means, by schedulerName (None: unset): the first backend that takes
    that scheduler where the cluster serves what it needs; a scheduler not listed: none."""
    table: dict[str | None, str] = {}
    for backend in BACKENDS:
        for scheduler in backend.auto_schedulers(served):
            table.setdefault(scheduler, backend.name)
    return table
