"""Native gang scheduling (KEP-4671, `scheduling.k8s.io/v1beta1`, Kubernetes 1.37+): the job's
Workload, and one PodGroup per gang generation that kube-scheduler's GangScheduling plugin
places all at once or not at all.

Why a PodGroup per generation: a pod names its group in `spec.schedulingGroup.podGroupName`,
which is immutable, and a PodGroup's `PodGroupInitiallyScheduled` condition never turns False
again once True, so a restarted gang is a new group (`{job}-gang-{n}`, n = status.restarts);
the previous generation's group is deleted when the next one is made (the API server's
`podgroup-protection` finalizer keeps it until its pods are gone).

The group asks for every pod (`gang.minCount` = replicas) and is disrupted as a unit
(`disruptionMode: all`): one preempted rank stops DDP anyway. Its priority class is the pods'
(the scheduler refuses a group whose pods' priority differs from its own).

The API is beta and off by default in 1.37 (feature gate `GenericWorkload` on the API server,
scheduler and controller manager, and `--runtime-config=scheduling.k8s.io/v1beta1=true`):
the operator discovers it at start (backends.discover), and `gang: auto` is native only where
it is served.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from densenet_contract import GROUP as JOB_GROUP
from densenet_contract import KIND as JOB_KIND
from densenet_operator import naming
from densenet_operator.gang import CustomKind, GangState
from densenet_operator.podadditions import PodAdditions
from densenet_operator.spec import Job, TrainingSpec

NAME = "native"
GROUP, VERSION = "scheduling.k8s.io", "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
DEFAULT_SCHEDULER = "default-scheduler"
TEMPLATE = "workers"  # the Workload's one pod-group template: every pod of the job
INITIALLY_SCHEDULED = "PodGroupInitiallyScheduled"  # the PodGroup condition the scheduler writes
_MISSING = (
    f"spec.scheduling.gang is native but this cluster does not serve {API_VERSION} "
    "Workloads and PodGroups (Kubernetes 1.37+ with the GenericWorkload feature gate and "
    f"--runtime-config={API_VERSION}=true): enable them, or set gang to auto or none"
)
WORKLOAD = CustomKind(GROUP, VERSION, "workloads", missing=_MISSING)
POD_GROUP = CustomKind(GROUP, VERSION, "podgroups", missing=_MISSING)


def pod_group_name(job_name: str, gang: int) -> str:
    return f"{job_name}-gang-{gang}"


def _scheduling_policy(spec: TrainingSpec) -> dict[str, Any]:
    return {"gang": {"minCount": spec.replicas}}


def _priority(spec: TrainingSpec) -> dict[str, Any]:
    name = spec.scheduling.priority_class_name
    return {"priorityClassName": name} if name else {}


def build_workload(job: Job) -> dict[str, Any]:
    """The job's Workload: what its pods are (one template, a gang of all of them)."""
    template = {
        "name": TEMPLATE,
        "schedulingPolicy": _scheduling_policy(job.spec),
        "disruptionMode": {"all": {}},
        **_priority(job.spec),
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "Workload",
        "metadata": naming.child_metadata(job.ref, job.ref.name),
        "spec": {
            "controllerRef": {"apiGroup": JOB_GROUP, "kind": JOB_KIND, "name": job.ref.name},
            "podGroupTemplates": [template],
        },
    }


def build_pod_group(job: Job, gang: int) -> dict[str, Any]:
    """Generation `gang`'s PodGroup, copied from the Workload's template as the API asks."""
    labels = {naming.LABEL_GANG: str(gang)}
    return {
        "apiVersion": API_VERSION,
        "kind": "PodGroup",
        "metadata": naming.child_metadata(job.ref, pod_group_name(job.ref.name, gang), labels),
        "spec": {
            "workloadRef": {"workloadName": job.ref.name, "templateName": TEMPLATE},
            "schedulingPolicy": _scheduling_policy(job.spec),
            "disruptionMode": {"all": {}},
            **_priority(job.spec),
        },
    }


def gang_state(pod_group: Mapping[str, Any] | None) -> GangState | None:
    """What the scheduler said of a PodGroup (its InitiallyScheduled condition), if anything."""
    if not pod_group:
        return None
    conditions = (pod_group.get("status") or {}).get("conditions") or ()
    condition = next((c for c in conditions if c.get("type") == INITIALLY_SCHEDULED), None)
    if condition is None:
        return None
    return GangState(
        scheduled=condition.get("status") == "True",
        reason=str(condition.get("reason") or ""),
        message=str(condition.get("message") or ""),
    )


@dataclass(frozen=True)
class NativeGang:
    name: str = NAME
    chooses_devices: bool = False  # kube-scheduler counts the device resource; the plugin picks
    pod_names_per_gang: bool = False
    kinds: Mapping[str, CustomKind] = field(
        default_factory=lambda: {"Workload": WORKLOAD, "PodGroup": POD_GROUP}
    )

    def wanted_by(self, job: Job) -> bool:
        return job.spec.scheduling.gang == NAME

    def auto_schedulers(self, served: frozenset[str]) -> tuple[str | None, ...]:
        # kube-scheduler runs the GangScheduling plugin; another scheduler may not.
        if {WORKLOAD.resource, POD_GROUP.resource} <= served:
            return (None, DEFAULT_SCHEDULER)
        return ()

    def children(self, job: Job) -> list[dict[str, Any]]:
        return [build_workload(job)]

    def gang_children(self, job: Job, gang: int) -> list[dict[str, Any]]:
        return [build_pod_group(job, gang)]

    def retired_children(self, job: Job, gang: int) -> list[tuple[CustomKind, str]]:
        return [(POD_GROUP, pod_group_name(job.ref.name, gang))]

    def state_of(self, job: Job, gang: int) -> tuple[CustomKind, str] | None:
        return POD_GROUP, pod_group_name(job.ref.name, gang)

    def read_state(self, job: Job, child: Mapping[str, Any] | None) -> GangState | None:
        return gang_state(child)

    def released_children(self, job: Job) -> list[tuple[CustomKind, str]]:
        return []

    def pod_additions(self, job: Job, index: int, gang: int) -> PodAdditions:
        return PodAdditions(
            scheduler_name=job.spec.scheduling.scheduler_name,
            scheduling_group=pod_group_name(job.ref.name, gang),
        )


BACKEND = NativeGang()
