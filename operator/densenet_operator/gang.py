"""Gang scheduling: one small interface between the operator and whatever makes a job's pods
start all together or not at all (a half-placed gang holds its devices and waits forever).

Each backend is a module of its own (`volcano.py`; `native` and `kueue` would be two more) and
`backends.py` picks a job's. The reconciler asks the job's backend for its `children` (made
with the job's other children, before any pod) and `pods.py` for its `pod_additions` (the
scheduler, labels, annotations). `NONE` is no gang: the pods go to the scheduler the user
named, or the default one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from densenet_operator.podadditions import PodAdditions
from densenet_operator.spec import Job, TrainingSpec


@dataclass(frozen=True)
class CustomKind:
    """A kind a backend makes that Kubernetes does not serve by itself (a CRD)."""

    group: str
    version: str
    plural: str
    missing: str  # the job's error when the API server does not serve it, and what to do


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

    def wanted_by(self, spec: TrainingSpec) -> bool: ...

    def children(self, job: Job) -> list[dict[str, Any]]:
        """Objects made with the job's other children (owned by the job), before any pod."""
        ...

    def pod_additions(self, job: Job, index: int) -> PodAdditions: ...


@dataclass(frozen=True)
class NoGang:
    name: str = "none"
    chooses_devices: bool = False
    kinds: Mapping[str, CustomKind] = field(default_factory=dict)

    def wanted_by(self, spec: TrainingSpec) -> bool:
        return True

    def children(self, job: Job) -> list[dict[str, Any]]:
        return []

    def pod_additions(self, job: Job, index: int) -> PodAdditions:
        return PodAdditions(scheduler_name=job.spec.scheduling.scheduler_name)


NONE = NoGang()
