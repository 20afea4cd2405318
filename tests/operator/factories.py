"""Pods and jobs as the API server would serve them, for the operator's unit tests."""

from __future__ import annotations

import json
from typing import Any

from densenet_contract import TRAINER_CONTAINER
from densenet_operator import backends, naming
from densenet_operator.ascend.deviceconfig import CONFIG_ANNOTATION
from densenet_operator.settings import TrainerDefaults
from densenet_operator.spec import Job, JobRef, parse_spec

JOB = JobRef(name="dn161", namespace="team-a", uid="uid-1")
# Every job's image, whatever its device; a cluster that serves no gang API (gang: auto is
# volcano for schedulerName volcano, else none). NATIVE_CLUSTER: one that serves native gangs.
DEFAULTS = TrainerDefaults(image="trainer:test", auto_gangs=backends.auto_gangs(frozenset()))
NATIVE_SERVED = frozenset(kind.resource for kind in backends.native.BACKEND.kinds.values())
NATIVE_CLUSTER = TrainerDefaults(
    image="trainer:test", auto_gangs=backends.auto_gangs(NATIVE_SERVED)
)


def make_job(defaults: TrainerDefaults = DEFAULTS, **spec: Any) -> Job:
    body: dict[str, Any] = {"model": "densenet161", "data": {"path": "/data/imagenet"}, **spec}
    return Job(ref=JOB, spec=parse_spec(body, defaults=defaults), generation=1)


def device_annotation(
    index: int,
    devices: int,
    *,
    server_id: str | None = None,
    first_id: int = 0,
    super_pod: int | None = None,
    host_ip: str | None = None,
) -> str:
    """The device plugin's annotation (v7.3 shape); `super_pod`: on an A3 super pod, whose
    chips carry super_device_id = server index x 16 + chip."""
    return json.dumps(
        {
            "pod_name": naming.pod_name(JOB.name, index),
            "server_id": server_id if server_id is not None else f"10.0.0.{11 + index}",
            **({"host_ip": host_ip} if host_ip else {}),
            "super_pod_id": -2 if super_pod is None else super_pod,
            "devices": [
                {
                    "device_id": str(first_id + d),
                    # Unique per chip, as on real servers (hccn_tool's layout).
                    "device_ip": f"192.168.{100 + d % 4}.{101 + 4 * index + d // 4}",
                    "super_device_id": "0" if super_pod is None else str(16 * index + first_id + d),
                }
                for d in range(devices)
            ],
        }
    )


def make_pod(
    index: int,
    *,
    devices: int = 8,
    phase: str = "Running",
    gang: int = 0,
    pod_ip: str | None = "auto",
    host_ip: str | None = "auto",
    annotation: str | None = "auto",
    exit_code: int | None = None,
    reason: str | None = None,
    terminating: bool = False,
    owner_uid: str | None = JOB.uid,
) -> dict[str, Any]:
    annotations = {}
    if annotation == "auto":
        annotation = device_annotation(index, devices)
    if annotation is not None:
        annotations[CONFIG_ANNOTATION] = annotation
    status: dict[str, Any] = {"phase": phase}
    if pod_ip is not None:
        status["podIP"] = f"10.244.{index}.7" if pod_ip == "auto" else pod_ip
    if host_ip is not None:
        status["hostIP"] = f"10.0.0.{11 + index}" if host_ip == "auto" else host_ip
    if reason:
        status["reason"] = reason
    if exit_code is not None:
        status["containerStatuses"] = [
            {
                "name": TRAINER_CONTAINER,
                "state": {"terminated": {"exitCode": exit_code, "reason": "Error"}},
            }
        ]
    metadata: dict[str, Any] = {
        "name": naming.pod_name(JOB.name, index),
        "namespace": JOB.namespace,
        "labels": {
            naming.LABEL_JOB: JOB.name,
            naming.LABEL_REPLICA_INDEX: str(index),
            naming.LABEL_GANG: str(gang),
        },
        "annotations": annotations,
    }
    if owner_uid is not None:
        metadata["ownerReferences"] = [{**naming.owner_reference(JOB), "uid": owner_uid}]
    if terminating:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": metadata, "spec": {"nodeName": f"node-{index}"}, "status": status}
