"""What a device or a gang backend adds to a worker pod, as one value that `pods.py` merges.

`pods.py` builds what every pod has (identity, topology, the trainer, its volumes) and knows no
device and no scheduler: the job's device (ascend/pod.py; cpu and cuda add only their resource,
which podresources.py requests) and its gang backend (gang.py) each return a PodAdditions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PodAdditions:
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    env: tuple[dict[str, Any], ...] = ()  # after the job's own variables, before spec.env
    volumes: tuple[dict[str, Any], ...] = ()  # after the operator's, before data and checkpoints
    mounts: tuple[dict[str, Any], ...] = ()  # ... and their mounts in the trainer container
    node_selector: Mapping[str, str] = field(default_factory=dict)  # the user's keys win
    scheduler_name: str | None = None
    scheduling_group: str | None = None  # the pod's spec.schedulingGroup.podGroupName
    # None: the operator's restricted defaults (podsecurity.py).
    pod_security_context: Mapping[str, Any] | None = None
    container_security_context: Mapping[str, Any] | None = None


def field_env(name: str, field_path: str) -> dict[str, Any]:
    """A variable read from the pod's own fields (the downward API)."""
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}
