"""The job's status vocabulary: phases, conditions, times."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from densenet_operator.podrecord import PENDING, PodRecord

RUNNING, RESTARTING, QUEUED = "Running", "Restarting", "Queued"
SUCCEEDED, FAILED, SUSPENDED = "Succeeded", "Failed", "Suspended"
FINISHED = (SUCCEEDED, FAILED)
# Each phase has a condition of the same name; the current phase's is True, the others False.
PHASE_CONDITIONS = (PENDING, QUEUED, RUNNING, RESTARTING, SUSPENDED, SUCCEEDED, FAILED)
RANK_TABLE_READY = "RankTableReady"
GANG_SCHEDULED = "GangScheduled"  # the gang scheduler's word on the current gang (gang.py)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def format_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def pod_counts(pods: Sequence[PodRecord]) -> dict[str, int]:
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


# What only reports progress: how many pods are where, what the rank table still waits for,
# and the messages that say so. Every other change (phase, a reason, which records an Event,
# a condition's status, restarts, times, the table's status) is a transition.
PROGRESS_KEYS = ("message", "pods")
PROGRESS_CONDITION_KEYS = ("message",)
PROGRESS_RANK_TABLE_KEYS = ("waitingFor", "message")
# Seconds between two progress-only writes of one job. In a 100-job wave on 2 cores a job's
# pods and device annotations arrive over about 5 s: 1 s still cost 5-6 writes a job.
PROGRESS_WRITE_INTERVAL = 5.0


def _transitions(status: Mapping[str, Any]) -> dict[str, Any]:
    essence = {
        key: value
        for key, value in status.items()
        if key not in PROGRESS_KEYS and key != "training"  # the trainer's, never ours
    }
    if isinstance(essence.get("rankTable"), Mapping):
        table = essence["rankTable"]
        essence["rankTable"] = {k: v for k, v in table.items() if k not in PROGRESS_RANK_TABLE_KEYS}
    if isinstance(essence.get("conditions"), list):
        essence["conditions"] = [
            {k: v for k, v in c.items() if k not in PROGRESS_CONDITION_KEYS}
            if isinstance(c, Mapping)
            else c
            for c in essence["conditions"]
        ]
    return essence


def progress_only(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """True when `new` differs from `old` in progress alone (see PROGRESS_KEYS)."""
    return _transitions(old) == _transitions(new)


def status_write_delay(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    last_written: float | None,
    now: float,
    interval: float = PROGRESS_WRITE_INTERVAL,
) -> float:
    """Seconds to hold a status write back: 0 for a transition (written at once) and for
    progress when the job's status was last written `interval` ago or more; otherwise the
    rest of the interval. A pod at a time turning Running must not cost a write each (5-6
    status patches per 2-pod job against Kubeflow's 2, in bench/side_by_side.py)."""
    if last_written is None or not progress_only(old, new):
        return 0.0
    return max(0.0, last_written + interval - now)
