"""The trainer container's resources: the device request, and default CPU, memory and
ephemeral-storage requests scaled by the device count, so that a training pod is never
BestEffort (evicted first under memory pressure) and is placed where its data loaders have cores.

Defaults per device (a device is an NPU or GPU; on cpu, a rank):

| device type | cpu | memory | limits |
| --- | --- | --- | --- |
| ascend, cuda | 4 | 16Gi | memory = its request |
| cpu | 1 | 2Gi | memory = its request |

plus ephemeral-storage 10Gi requested and 50Gi limit per pod (logs, /tmp, compile caches, a
checkpoint emptyDir). No CPU limit: a throttled data loader starves the devices.

`spec.scheduling.resources` wins, per resource: a request given alone also becomes the limit of
memory and ephemeral-storage; a limit given alone leaves the request to Kubernetes' defaulting
(the limit), so the two never contradict. The device resource is the operator's: requests and
limits equal to devicesPerReplica (extended resources cannot be overcommitted).
"""

from __future__ import annotations

from typing import Any

from densenet_operator.spec import TrainingSpec

# (cpu cores, memory GiB) per device.
PER_DEVICE = {"ascend": (4, 16), "cuda": (4, 16), "cpu": (1, 2)}
EPHEMERAL_REQUEST = "10Gi"
EPHEMERAL_LIMIT = "50Gi"


def default_requests(spec: TrainingSpec) -> dict[str, str]:
    cores, gib = PER_DEVICE[spec.device_type]
    devices = spec.devices_per_replica
    return {
        "cpu": str(cores * devices),
        "memory": f"{gib * devices}Gi",
        "ephemeral-storage": EPHEMERAL_REQUEST,
    }


def container_resources(spec: TrainingSpec) -> dict[str, Any]:
    """The trainer container's `resources`."""
    user_requests = dict(spec.scheduling.resources.get("requests") or {})
    user_limits = dict(spec.scheduling.resources.get("limits") or {})
    requests = {**default_requests(spec), **user_requests}
    limits = {
        "memory": requests["memory"],
        "ephemeral-storage": user_requests.get("ephemeral-storage", EPHEMERAL_LIMIT),
        **user_limits,
    }
    for name in user_limits.keys() - user_requests.keys():
        # A limit alone: Kubernetes defaults the request to it (a default could exceed it).
        requests.pop(name, None)
    if spec.resource_name:
        requests[spec.resource_name] = str(spec.devices_per_replica)
        limits[spec.resource_name] = str(spec.devices_per_replica)
    return {"requests": requests, "limits": limits}
