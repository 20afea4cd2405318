"""Gang scheduling: one small interface between the operator and whatever makes a job's pods
start all together or not at all (a half-placed gang holds its devices and waits forever).

Each backend is a module of its own (`native.py`, `volcano.py`) and `backends.py` picks a
job's. The reconciler asks the job's backend for its `children` (made once, with the job's
other children, before any pod), its `gang_children` (made before each gang generation's pods;
the previous generation's `retired_children` are then deleted) and where the scheduler's word
on a generation is (`state_of`, read by `read_state`); `pods.py` asks for its `pod_additions`
(the scheduler, the pod group, labels, annotations). `NONE` is no gang: the pods go to the
scheduler the user named, or the default one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from densenet_operator.podadditions import PodAdditions
from densenet_operator.spec import Job


@dataclass(frozen=True)
class CustomKind:
    """A kind a backend makes, or reads, that Kubernetes does not serve by itself."""

    group: str
    version: str
    plural: str
    missing: str  # the job's error when the API server does not serve it, and what to do
    # Made and owned by the operator (watched like the job's other children); False: another
    # controller's (Kueue's Workload), only read and deleted.
    owned: bool = True

    @property
    def resource(self) -> str:
        """group/version/plural: how discovery names it (backends.discover)."""
        return f"{self.group}/{self.version}/{self.plural}"


@dataclass(frozen=True)
class GangState:
    """What the scheduler says of a gang generation: placed, or why not (yet)."""

    scheduled: bool
    reason: str
    message: str
    queued: bool = False  # waiting in a queue for quota (its pods are gated), not for nodes


class GangBackend(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def chooses_devices(self) -> bool:
        """Whether its scheduler picks each pod's devices and says which in an annotation."""
        ...

    @property
    def kinds(self) -> Mapping[str, CustomKind]:
        """The custom kinds of its children, by kind."""
        ...

    @property
    def pod_names_per_gang(self) -> bool:
        """Whether each gang generation's pods get names of their own (`<job>-worker-<i>-g<n>`):
        a backend whose controller keeps an old generation's pods until their replacements
        exist (Kueue's finalizer) needs them."""
        ...

    def wanted_by(self, job: Job) -> bool:
        """Whether the job is this backend's (its resolved spec.scheduling.gang, a label)."""
        ...

    def auto_schedulers(self, served: frozenset[str]) -> tuple[str | None, ...]:
        """The schedulerName values (None: unset) for which `gang: auto` means this backend,
        given the custom resources the cluster serves (CustomKind.resource)."""
        ...

    def children(self, job: Job) -> list[dict[str, Any]]:
        """Objects made with the job's other children (owned by the job), before any pod."""
        ...

    def gang_children(self, job: Job, gang: int) -> list[dict[str, Any]]:
        """Objects made before the pods of gang generation `gang`."""
        ...

    def retired_children(self, job: Job, gang: int) -> list[tuple[CustomKind, str]]:
        """(kind, name) of generation `gang`'s objects, deleted once a newer one is made."""
        ...

    def state_of(self, job: Job, gang: int) -> tuple[CustomKind, str] | None:
        """The object whose status says whether generation `gang` is placed, if any."""
        ...

    def read_state(self, job: Job, child: Mapping[str, Any] | None) -> GangState | None:
        """What `child` (state_of's object; None: not there) says of the gang, if anything."""
        ...

    def released_children(self, job: Job) -> list[tuple[CustomKind, str]]:
        """(kind, name) of what holds the job's place (a queue's quota): deleted when the job
        fails, is suspended or is deleted."""
        ...

    def pod_additions(self, job: Job, index: int, gang: int) -> PodAdditions: ...


class PerJobChildren:
    """A backend whose children are made once per job: nothing per generation to make, delete
    or read."""

    def gang_children(self, job: Job, gang: int) -> list[dict[str, Any]]:
        return []

    def retired_children(self, job: Job, gang: int) -> list[tuple[CustomKind, str]]:
        return []

    def state_of(self, job: Job, gang: int) -> tuple[CustomKind, str] | None:
        return None

    def read_state(self, job: Job, child: Mapping[str, Any] | None) -> GangState | None:
        return None

    def released_children(self, job: Job) -> list[tuple[CustomKind, str]]:
        return []


@dataclass(frozen=True)
class NoGang(PerJobChildren):
    name: str = "none"
    chooses_devices: bool = False
    pod_names_per_gang: bool = False
    kinds: Mapping[str, CustomKind] = field(default_factory=dict)

    def wanted_by(self, job: Job) -> bool:
        return True

    def auto_schedulers(self, served: frozenset[str]) -> tuple[str | None, ...]:
        return ()

    def children(self, job: Job) -> list[dict[str, Any]]:
        return []

    def pod_additions(self, job: Job, index: int, gang: int) -> PodAdditions:
        return PodAdditions(scheduler_name=job.spec.scheduling.scheduler_name)


NONE = NoGang()
