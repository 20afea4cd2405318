"""Volcano gang scheduling: a PodGroup with minMember = replicas, so that a job gets all of its
servers or none (no half-placed gang holding NPUs while it waits)."""

from __future__ import annotations

from typing import Any

from densenet_operator import naming
from densenet_operator.ascend.products import SUPER_POD_BLOCK_ANNOTATION
from densenet_operator.spec import Job

GROUP, VERSION, PLURAL = "scheduling.volcano.sh", "v1beta1", "podgroups"


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
