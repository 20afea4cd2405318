"""Kueue (v0.17): a job labelled `kueue.x-k8s.io/queue-name: <LocalQueue>` waits in that queue
until its ClusterQueue has quota for all of its pods, and is admitted as a whole.

Kueue has no integration for a custom resource whose controller is not written in Go with its
jobframework, so the job's pods are a *plain pod group* (KEP-976): each carries the queue label,
the group's name (`kueue.x-k8s.io/pod-group-name`, also the name of the Workload Kueue makes for
the group) and its size (`kueue.x-k8s.io/pod-group-total-count`). Kueue's webhook then gates
every pod (`kueue.x-k8s.io/admission`) and adds its finalizer; admission lifts the gates.
(Listing the CRD in Kueue's `integrations.externalFrameworks` would turn that path off.)

What this means for the operator:
- the group's name stays the same across gang restarts (`<job>-<uid[:8]>`: a job made again
  under the same name is a new group), so a restarted gang keeps the quota it holds;
- Kueue keeps a deleted pod (its finalizer) until a replacement exists, so each generation's
  pods have names of their own (`pod_names_per_gang`; their host names stay the same);
- Kueue's preemption (or eviction) marks the pods `TerminationTarget` and deletes them: a
  disruption (podrecord.py); the operator makes the next generation, gated again, and the job
  shows Queued until Kueue admits it anew;
- the group's quota is given back when all its pods succeed (Kueue finishes it), and by
  deleting Kueue's Workload when the job fails, is suspended or is deleted (Kueue then deletes
  the group's pods and removes its finalizer from them).

Topology-aware scheduling (TAS): the podTemplate's annotations reach the pods, so
`kueue.x-k8s.io/podset-required-topology: <node label>` there keeps a job inside one domain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from densenet_operator import naming
from densenet_operator.gang import CustomKind, GangState, PerJobChildren
from densenet_operator.podadditions import PodAdditions
from densenet_operator.spec import Job

NAME = "kueue"
GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"
QUEUE_LABEL = f"{GROUP}/queue-name"
POD_GROUP_LABEL = f"{GROUP}/pod-group-name"
TOTAL_COUNT_ANNOTATION = f"{GROUP}/pod-group-total-count"
ADMISSION_GATE = f"{GROUP}/admission"  # what the webhook gates each pod with until admission
# The Kueue Workload's conditions; an evicted one may still say Admitted for a moment.
QUOTA_RESERVED, ADMITTED, EVICTED = "QuotaReserved", "Admitted", "Evicted"
WORKLOAD = CustomKind(
    GROUP, VERSION, "workloads", owned=False,
    missing=f"the job is labelled {QUEUE_LABEL} but this cluster does not serve Kueue "
    f"({GROUP}/{VERSION} workloads): install Kueue v0.17+, or drop the label",
)  # fmt: skip


def queue_of(job: Job) -> str | None:
    return job.labels.get(QUEUE_LABEL) or None


def pod_group_name(job: Job) -> str:
    """Stable across the job's gang restarts, new for a new job of the same name."""
    return f"{job.ref.name}-{job.ref.uid[:8]}"


def queue_state(job: Job, workload: Mapping[str, Any] | None) -> GangState:
    """The group's place in its queue, from Kueue's Workload (None: not made yet)."""
    queue = queue_of(job)
    conditions = {c.get("type"): c for c in ((workload or {}).get("status") or {}).get("conditions") or ()}  # fmt: skip
    admitted = conditions.get(ADMITTED) or {}
    evicted = conditions.get(EVICTED) or {}
    if admitted.get("status") == "True" and evicted.get("status") != "True":
        return GangState(True, "Admitted", f"admitted by LocalQueue {queue}")
    reserved = conditions.get(QUOTA_RESERVED) or {}
    why = (
        (evicted.get("status") == "True" and evicted.get("message"))
        or reserved.get("message")
        or admitted.get("message")
        or "waiting for Kueue"
    )
    return GangState(False, "Queued", f"LocalQueue {queue}: {why}", queued=True)


@dataclass(frozen=True)
class KueueQueue(PerJobChildren):
    name: str = NAME
    chooses_devices: bool = False
    pod_names_per_gang: bool = True
    kinds: Mapping[str, CustomKind] = field(default_factory=lambda: {"Workload": WORKLOAD})

    def wanted_by(self, job: Job) -> bool:
        return queue_of(job) is not None

    def auto_schedulers(self, served: frozenset[str]) -> tuple[str | None, ...]:
        return ()  # a job is Kueue's by its label, never by `gang: auto`

    def children(self, job: Job) -> list[dict[str, Any]]:
        return []  # Kueue makes the Workload from the pods

    def state_of(self, job: Job, gang: int) -> tuple[CustomKind, str] | None:
        return WORKLOAD, pod_group_name(job)

    def read_state(self, job: Job, child: Mapping[str, Any] | None) -> GangState | None:
        # Kueue's Workload is owned by the group's pods: one that is not says nothing of ours.
        owners = ((child or {}).get("metadata") or {}).get("ownerReferences") or ()
        prefix = naming.pod_hostname(job.ref.name, 0).removesuffix("0")
        if child is not None and not any(
            o.get("kind") == "Pod" and str(o.get("name", "")).startswith(prefix) for o in owners
        ):
            child = None
        return queue_state(job, child)

    def released_children(self, job: Job) -> list[tuple[CustomKind, str]]:
        return [(WORKLOAD, pod_group_name(job))]

    def pod_additions(self, job: Job, index: int, gang: int) -> PodAdditions:
        return PodAdditions(
            labels={QUEUE_LABEL: queue_of(job) or "", POD_GROUP_LABEL: pod_group_name(job)},
            annotations={TOTAL_COUNT_ANNOTATION: str(job.spec.replicas)},
            scheduler_name=job.spec.scheduling.scheduler_name,
        )


BACKEND = KueueQueue()
