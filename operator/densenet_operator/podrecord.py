"""What the operator reads of a pod: parsed once, when the pod is seen, into one small record.

The kopf index keeps these records (a few hundred bytes each, not whole pods); the lifecycle,
the rank table and the `rank-table` CLI all read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from densenet_contract import TRAINER_CONTAINER
from densenet_operator import naming
from densenet_operator.ascend.deviceconfig import CONFIG_ANNOTATION
from densenet_operator.children import job_owner

PENDING = "Pending"
MAX_GATES = 8  # scheduling gates kept of a pod: enough to name them, bounded


def _int_label(labels: Mapping[str, str], key: str) -> int | None:
    value = labels.get(key)
    return int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else None


def _terminated(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next(
        (
            c["state"]["terminated"]
            for c in status.get("containerStatuses") or ()
            if c.get("name") == TRAINER_CONTAINER and (c.get("state") or {}).get("terminated")
        ),
        None,
    )


# Pod conditions that say the control plane, or a queue, is ending the pod: Kubernetes'
# DisruptionTarget (PreemptionByScheduler, EvictionByEvictionAPI, DeletionByTaintManager,
# DeletionByPodGC, TerminationByKubelet) and Kueue's TerminationTarget (its reason: why Kueue
# stops the group, e.g. Preempted, WorkloadEvicted).
DISRUPTION_CONDITIONS = ("DisruptionTarget", "TerminationTarget")


def _disruption(status: Mapping[str, Any]) -> str | None:
    """Why the control plane or a queue is ending the pod, when it says."""
    return next(
        (
            c.get("reason") or c.get("type")
            for c in status.get("conditions") or ()
            if c.get("type") in DISRUPTION_CONDITIONS and c.get("status") == "True"
        ),
        None,
    )


def _unschedulable(status: Mapping[str, Any]) -> str | None:
    return next(
        (
            c.get("message") or c.get("reason") or "Unschedulable"
            for c in status.get("conditions") or ()
            if c.get("type") == "PodScheduled" and c.get("status") == "False"
        ),
        None,
    )


@dataclass(frozen=True, slots=True)
class PodRecord:
    """A worker pod of a job as the operator sees it."""

    name: str
    uid: str | None
    owner_uid: str | None  # the controlling DenseNetTraining's UID; None: no job owns it
    index: int | None  # replica index label
    gang: int | None  # the restart count the pod was created under
    phase: str
    terminating: bool
    node_name: str | None
    pod_ip: str | None
    host_ip: str | None
    exit_code: int | None  # of the trainer container, once terminated
    reason: str | None
    unschedulable: str | None  # the scheduler's message while it cannot place the pod
    disruption: str | None  # the DisruptionTarget condition's reason, when the control plane set it
    gates: tuple[str, ...]  # spec.schedulingGates still to be lifted (a queue's admission)
    device_config: str | None  # the Ascend device plugin's annotation, as written

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> PodRecord:
        metadata = pod.get("metadata") or {}
        status = pod.get("status") or {}
        labels = metadata.get("labels") or {}
        terminated = _terminated(status)
        owner = job_owner(pod)
        return cls(
            name=metadata.get("name", "?"),
            uid=metadata.get("uid"),
            owner_uid=owner.get("uid") if owner else None,
            index=_int_label(labels, naming.LABEL_REPLICA_INDEX),
            gang=_int_label(labels, naming.LABEL_GANG),
            phase=status.get("phase") or PENDING,
            terminating=bool(metadata.get("deletionTimestamp")),
            node_name=(pod.get("spec") or {}).get("nodeName"),
            pod_ip=status.get("podIP"),
            host_ip=status.get("hostIP"),
            exit_code=terminated.get("exitCode") if terminated else None,
            reason=status.get("reason") or (terminated.get("reason") if terminated else None),
            unschedulable=_unschedulable(status),
            disruption=_disruption(status),
            gates=tuple(
                str(g.get("name"))
                for g in ((pod.get("spec") or {}).get("schedulingGates") or ())[:MAX_GATES]
            ),
            device_config=(metadata.get("annotations") or {}).get(CONFIG_ANNOTATION),
        )


def newest_gang(records: list[PodRecord]) -> list[PodRecord]:
    """The live pods of the newest gang (older gangs are leftovers of a restart)."""
    live = [r for r in records if not r.terminating]
    newest = max((r.gang or 0 for r in live), default=0)
    return [r for r in live if (r.gang or 0) == newest]
