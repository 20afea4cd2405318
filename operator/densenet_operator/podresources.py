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
LIMITED = ("memory", "ephemeral-storage")  # limit defaults to the request; cpu has none


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
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    defaults = {**default_requests(spec)}
    for name, default in defaults.items():
        if name in user_limits and name not in user_requests:
            continue  # Kubernetes defaults the request to the limit
        requests[name] = user_requests.get(name, default)
        if name in LIMITED and name not in user_limits:
            requests_given = name in user_requests
            fallback = EPHEMERAL_LIMIT if name == "ephemeral-storage" else default
            limits[name] = user_requests[name] if requests_given else fallback
    requests.update({k: v for k, v in user_requests.items() if k not in requests})
    limits.update(user_limits)
    if spec.resource_name:
        requests[spec.resource_name] = str(spec.devices_per_replica)
        limits[spec.resource_name] = str(spec.devices_per_replica)
    return {"requests": requests, "limits": limits}
