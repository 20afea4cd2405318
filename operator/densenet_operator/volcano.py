"""Volcano gang scheduling: a PodGroup with minMember = replicas, so that a job gets all of its
servers or none (no half-placed gang holding NPUs while it waits).

A job is Volcano's when `spec.scheduling.gang` is `volcano` (`auto` with `schedulerName:
volcano` resolves to it): its pods go to that scheduler and name their PodGroup, whose queue and priority class are the job's. Volcano's
Ascend plugin chooses each pod's chips itself (`chooses_devices`), and its A3 super-pod plugin
reads the logical super-pod size (`sp-block`) from the PodGroup.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from densenet_operator import naming
from densenet_operator.gang import CustomKind, PerJobChildren
from densenet_operator.podadditions import PodAdditions
from densenet_operator.spec import Job

SCHEDULER = "volcano"
GROUP, VERSION, PLURAL = "scheduling.volcano.sh", "v1beta1", "podgroups"
GROUP_ANNOTATION = "scheduling.k8s.io/group-name"  # on each pod: its PodGroup
SUPER_POD_BLOCK_ANNOTATION = "sp-block"  # on the PodGroup of an A3 super-pod job
POD_GROUP = CustomKind(
    GROUP,
    VERSION,
    PLURAL,
    missing=f"schedulerName is {SCHEDULER} but the PodGroup API ({GROUP}/{VERSION}) "
    "is not installed: install Volcano, or drop spec.scheduling.schedulerName",
)


def build_pod_group(job: Job) -> dict[str, Any]:
    spec = job.spec
    min_resources: dict[str, str] = {}
    if spec.resource_name:
        min_resources[spec.resource_name] = str(spec.world_size)
    group_spec: dict[str, Any] = {"minMember": spec.replicas}
    if min_resources:
        group_spec["minResources"] = min_resources
    if spec.scheduling.queue:
        group_spec["queue"] = spec.scheduling.queue
    if spec.scheduling.priority_class_name:
        group_spec["priorityClassName"] = spec.scheduling.priority_class_name
    metadata = naming.child_metadata(job.ref, naming.pod_group_name(job.ref.name))
    if spec.device.type == "ascend" and spec.product.super_pod:
        # Volcano's A3 super-pod plugin reads the block size from the PodGroup.
        metadata["annotations"] = {SUPER_POD_BLOCK_ANNOTATION: str(spec.super_pod_block)}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PodGroup",
        "metadata": metadata,
        "spec": group_spec,
    }


@dataclass(frozen=True)
class VolcanoGang(PerJobChildren):
    name: str = SCHEDULER
    chooses_devices: bool = True  # Volcano's Ascend plugin picks the chips
    pod_names_per_gang: bool = False
    kinds: Mapping[str, CustomKind] = field(default_factory=lambda: {"PodGroup": POD_GROUP})

    def wanted_by(self, job: Job) -> bool:
        return job.spec.scheduling.gang == SCHEDULER

    def auto_schedulers(self, served: frozenset[str]) -> tuple[str | None, ...]:
        # Whether or not Volcano is installed: without it, the job says what to install.
        return (SCHEDULER,)

    def children(self, job: Job) -> list[dict[str, Any]]:
        return [build_pod_group(job)]

    def pod_additions(self, job: Job, index: int, gang: int) -> PodAdditions:
        return PodAdditions(
            annotations={GROUP_ANNOTATION: naming.pod_group_name(job.ref.name)},
            scheduler_name=SCHEDULER,
        )


BACKEND = VolcanoGang()
