"""What the operator knows of a pod, and the job's status vocabulary (phases, conditions)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from densenet_operator import naming

PENDING, RUNNING, RESTARTING = "Pending", "Running", "Restarting"
SUCCEEDED, FAILED, SUSPENDED = "Succeeded", "Failed", "Suspended"
FINISHED = (SUCCEEDED, FAILED)
# Each phase has a condition of the same name; the current phase's is True, the others False.
PHASE_CONDITIONS = (PENDING, RUNNING, RESTARTING, SUSPENDED, SUCCEEDED, FAILED)
RANK_TABLE_READY = "RankTableReady"


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def format_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def trim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a pod the operator keeps in memory (a few hundred bytes, not the whole pod)."""
    metadata = body.get("metadata") or {}
    status = body.get("status") or {}
    annotations = metadata.get("annotations") or {}
    trimmed_status: dict[str, Any] = {
        key: status[key]
        for key in ("phase", "podIP", "hostIP", "reason", "message")
        if key in status
    }
    trimmed_status["conditions"] = [
        {key: c.get(key) for key in ("type", "status", "reason", "message")}
        for c in status.get("conditions") or ()
        if c.get("type") == "PodScheduled"
    ]
    trimmed_status["containerStatuses"] = [
        {"name": c.get("name"), "state": {"terminated": c["state"]["terminated"]}}
        for c in status.get("containerStatuses") or ()
        if (c.get("state") or {}).get("terminated")
    ]
    trimmed_metadata: dict[str, Any] = {
        "name": metadata.get("name"),
        "namespace": metadata.get("namespace"),
        "uid": metadata.get("uid"),
        "labels": dict(metadata.get("labels") or {}),
    }
    if naming.ASCEND_CONFIG_ANNOTATION in annotations:
        trimmed_metadata["annotations"] = {
            naming.ASCEND_CONFIG_ANNOTATION: annotations[naming.ASCEND_CONFIG_ANNOTATION]
        }
    if metadata.get("deletionTimestamp"):
        trimmed_metadata["deletionTimestamp"] = metadata["deletionTimestamp"]
    return {
        "metadata": trimmed_metadata,
        "spec": {"nodeName": (body.get("spec") or {}).get("nodeName")},
        "status": trimmed_status,
    }


def _int_label(labels: Mapping[str, str], key: str) -> int | None:
    value = labels.get(key)
    return int(value) if value is not None and value.isdigit() else None


@dataclass(frozen=True)
class PodState:
    """A pod of a job as the lifecycle sees it."""

    name: str
    index: int | None
    gang: int | None
    phase: str
    terminating: bool
    node_name: str | None
    exit_code: int | None
    reason: str | None
    unschedulable: str | None
    raw: Mapping[str, Any]

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> PodState:
        metadata = pod.get("metadata") or {}
        status = pod.get("status") or {}
        labels = metadata.get("labels") or {}
        terminated = next(
            (
                c["state"]["terminated"]
                for c in status.get("containerStatuses") or ()
                if c.get("name") == naming.TRAINER_CONTAINER
                and (c.get("state") or {}).get("terminated")
            ),
            None,
        )
        unschedulable = next(
            (
                c.get("message") or c.get("reason") or "Unschedulable"
                for c in status.get("conditions") or ()
                if c.get("type") == "PodScheduled" and c.get("status") == "False"
            ),
            None,
        )
        return cls(
            name=metadata.get("name", "?"),
            index=_int_label(labels, naming.LABEL_REPLICA_INDEX),
            gang=_int_label(labels, naming.LABEL_GANG),
            phase=status.get("phase") or PENDING,
            terminating=bool(metadata.get("deletionTimestamp")),
            node_name=(pod.get("spec") or {}).get("nodeName"),
            exit_code=terminated.get("exitCode") if terminated else None,
            reason=status.get("reason") or (terminated.get("reason") if terminated else None),
            unschedulable=unschedulable,
            raw=pod,
        )


def pod_counts(pods: Sequence[PodState]) -> dict[str, int]:
    counts = {"pending": 0, "running": 0, "succeeded": 0, "failed": 0}
    for pod in pods:
        key = pod.phase.lower()
        counts[key if key in counts else "pending"] += 1
    return counts


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """Conditions with `type_` set; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    previous = next((c for c in conditions if c.get("type") == type_), None)
    kept = (
        previous.get("lastTransitionTime") if previous and previous.get("status") == value else None
    )
    updated = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": kept or format_time(now),
    }
    if previous is None:
        return [*(dict(c) for c in conditions), updated]
    return [updated if c is previous else dict(c) for c in conditions]


def set_phase_conditions(
    conditions: Sequence[Mapping[str, Any]],
    phase: str,
    reason: str,
    message: str,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """The current phase's condition True, every other phase condition that exists False."""
    result = set_condition(conditions, phase, True, reason, message, now)
    for other in PHASE_CONDITIONS:
        if other != phase and any(c.get("type") == other for c in result):
            previous = next(c for c in result if c.get("type") == other)
            if previous.get("status") == "True":
                result = set_condition(result, other, False, reason, f"phase is {phase}", now)
    return result
