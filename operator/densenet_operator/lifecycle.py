"""The job's lifecycle as a pure function: what is observed in, what to do out.

`plan()` reads the job, its last status and its pods, and returns the pods to create and
delete, the rank table to publish, the status to write and the events to record. It holds no
state of its own: everything it needs is in the API server, so an operator killed at any
point continues where it was (no duplicate pods, no re-run of a finished job, the restart
count kept), and unit tests can drive every transition.

Gangs: pods carry the restart count they were created under (label `gang`). A restart first
raises status.restarts, then deletes every pod; pods of an older gang are never counted and
their names are reused only once they are gone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from densenet_operator import naming, ranktable
from densenet_operator.spec import Job, RunPolicy
from densenet_operator.status import (
    FAILED,
    FINISHED,
    PENDING,
    RANK_TABLE_READY,
    RESTARTING,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    PodState,
    format_time,
    parse_time,
    pod_counts,
    set_condition,
    set_phase_conditions,
)

# Pod-level reasons that say the infrastructure, not the training code, failed.
INFRASTRUCTURE_REASONS = frozenset(
    {
        "Evicted",
        "NodeLost",
        "Shutdown",
        "Terminated",
        "UnexpectedAdmissionError",
        "NodeShutdown",
        "OOMKilled",
        "DeadlineExceeded",
        "Preempted",
        "PodLost",
    }
)
MAX_WAITING_SHOWN = 8


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Failure:
    pod: str
    exit_code: int | None
    reason: str
    retryable: bool

    def describe(self) -> str:
        code = f"exit code {self.exit_code}" if self.exit_code is not None else "no exit code"
        return f"pod {self.pod} failed ({code}, {self.reason})"


@dataclass
class Plan:
    status: dict[str, Any]
    create: list[int] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    rank_table: str | None = None
    events: list[Event] = field(default_factory=list)
    delete_job: bool = False
    requeue_after: float | None = None


def classify_failure(pod: PodState, policy: RunPolicy) -> Failure:
    """Retryable (restart the gang) or permanent (fail the job), after Kubeflow's ExitCode policy:
    signals and kills (128+, e.g. 137 for an OOM kill) and infrastructure reasons are
    retryable; 1-127 come from the user's code and are permanent unless listed as retryable."""
    code = pod.exit_code
    reason = pod.reason or ("Error" if code else "PodFailed")
    if policy.restart_policy == "Never":
        retryable = False
    elif (
        policy.restart_policy == "OnFailure"
        or pod.reason in INFRASTRUCTURE_REASONS
        or code is None
        or code == 0
    ):
        retryable = True
    else:
        retryable = code >= 128 or code in policy.retryable_exit_codes
    return Failure(pod.name, code, reason, retryable)


def _vanished(pod_name: str) -> Failure:
    return Failure(pod_name, None, "pod disappeared (deleted, or its node was lost)", True)


def _pods_to_clean(pods: Sequence[PodState], policy: str) -> list[str]:
    if policy == "All":
        return [p.name for p in pods]
    if policy == "Running":
        return [p.name for p in pods if p.phase not in (SUCCEEDED, FAILED)]
    return []


def _rank_table_waiting_message(error: ranktable.RankTableIncomplete) -> tuple[list[str], str]:
    waiting = error.waiting_for
    shown = waiting[:MAX_WAITING_SHOWN]
    if len(waiting) > len(shown):
        shown.append(f"... and {len(waiting) - len(shown)} more")
    return shown, f"waiting for {len(waiting)} pod(s): {waiting[0]}"


def plan(
    job: Job,
    status: Mapping[str, Any],
    pods: Sequence[PodState],
    now: dt.datetime,
    rank_table: str | None = None,
) -> Plan:
    """What to do next for `job`, given its last `status`, its `pods` and the published table."""
    spec, policy = job.spec, job.spec.run_policy
    new: dict[str, Any] = {key: value for key, value in status.items() if key not in ("training",)}
    new["worldSize"] = spec.world_size
    new["observedGeneration"] = job.generation
    conditions: list[dict[str, Any]] = list(status.get("conditions") or ())
    phase = status.get("phase") or PENDING
    restarts = int(status.get("restarts") or 0)
    new["restarts"] = restarts
    result = Plan(status=new)
    live = [p for p in pods if not p.terminating]
    current = [p for p in live if p.gang == restarts]
    stale = [p for p in live if p.gang != restarts]
    initializing = ranktable.dumps(ranktable.initializing_table())

    def transition(
        to: str, reason: str, message: str, event_type: str = "Normal", record: bool = True
    ) -> None:
        nonlocal conditions
        if record and (to != phase or new.get("reason") != reason):
            result.events.append(Event(event_type, reason, message))
        new["phase"], new["reason"], new["message"] = to, reason, message
        conditions = set_phase_conditions(conditions, to, reason, message, now)

    def finish(to: str, reason: str, message: str) -> None:
        transition(to, reason, message, "Normal" if to == SUCCEEDED else "Warning")
        new["completionTime"] = format_time(now)

    def reset_rank_table() -> None:
        if spec.uses_rank_table:
            new["rankTable"] = {
                "status": ranktable.INITIALIZING,
                "waitingFor": [],
                "message": "the gang is being (re)created",
            }
            if ranktable.table_status(rank_table) != ranktable.INITIALIZING or rank_table is None:
                result.rank_table = initializing

    # 1. Finished jobs never run again; only clean-up and TTL remain.
    if phase in FINISHED:
        result.delete = _pods_to_clean(live, policy.clean_pod_policy)
        finished_at = parse_time(status.get("completionTime"))
        if policy.ttl_seconds_after_finished is not None and finished_at is not None:
            expires = finished_at + dt.timedelta(seconds=policy.ttl_seconds_after_finished)
            if now >= expires:
                result.delete_job = True
                result.events.append(
                    Event(
                        "Normal",
                        "TTLExpired",
                        f"deleting the job {policy.ttl_seconds_after_finished}s after it finished",
                    )
                )
            else:
                result.requeue_after = (expires - now).total_seconds()
        new["conditions"] = conditions
        return result

    # 2. Suspended: no pods, the job and its restart count are kept.
    if policy.suspend:
        result.delete = [p.name for p in live]
        if phase != SUSPENDED:
            transition(SUSPENDED, "Suspended", "runPolicy.suspend is true: the pods are deleted")
        new.pop("startTime", None)  # the deadline counts from the resume, as for a Job
        reset_rank_table()
        new["pods"] = pod_counts(current)
        new["conditions"] = conditions
        return result
    if phase == SUSPENDED:
        transition(PENDING, "Resumed", "runPolicy.suspend is false: recreating the gang")
        phase = PENDING

    # 3. The deadline.
    started = parse_time(status.get("startTime"))
    if started is not None and policy.active_deadline_seconds is not None:
        deadline = started + dt.timedelta(seconds=policy.active_deadline_seconds)
        if now >= deadline:
            finish(
                FAILED,
                "DeadlineExceeded",
                f"the job ran longer than activeDeadlineSeconds={policy.active_deadline_seconds}",
            )
            result.delete = _pods_to_clean(live, policy.clean_pod_policy)
            new["conditions"] = conditions
            return result
        result.requeue_after = (deadline - now).total_seconds()

    # 4. Failures of the current gang: restart it whole, or fail the job.
    by_index = {p.index: p for p in current if p.index is not None}
    failures = [
        classify_failure(p, policy) for p in sorted(current, key=_order) if p.phase == FAILED
    ]
    # A missing pod is a loss only once the whole gang has been seen running; before that it
    # is still to be created (e.g. by an operator that was killed mid-creation).
    if not failures and phase == RUNNING:
        failures = [
            _vanished(naming.pod_name(job.ref.name, index))
            for index in range(spec.replicas)
            if index not in by_index
        ]
    if failures:
        failure = next((f for f in failures if not f.retryable), failures[0])
        if not failure.retryable:
            finish(
                FAILED,
                "PermanentFailure",
                f"{failure.describe()}: not retryable under restartPolicy "
                f"{policy.restart_policy}; restarts: {restarts}",
            )
            result.delete = _pods_to_clean(live, policy.clean_pod_policy)
        elif restarts >= policy.backoff_limit:
            finish(
                FAILED,
                "BackoffLimitExceeded",
                f"{failure.describe()}; restarts: {restarts}, backoffLimit: {policy.backoff_limit}",
            )
            result.delete = _pods_to_clean(live, policy.clean_pod_policy)
        else:
            restarts += 1
            new["restarts"] = restarts
            new["lastRestartTime"] = format_time(now)
            transition(
                RESTARTING,
                "GangRestart",
                f"{failure.describe()}: restarting all {spec.replicas} pod(s), "
                f"restart {restarts} of {policy.backoff_limit}",
                "Warning",
            )
            # Status first (the reconciler writes it before deleting): a crash in between
            # leaves pods of an old gang, which the next pass deletes; never a lost count.
            result.delete = [p.name for p in live]
            reset_rank_table()
        new["pods"] = pod_counts(current)
        new["conditions"] = conditions
        return result

    # 5. Success.
    if len(by_index) == spec.replicas and all(p.phase == SUCCEEDED for p in by_index.values()):
        finish(SUCCEEDED, "AllPodsSucceeded", f"all {spec.replicas} pod(s) completed")
        result.delete = _pods_to_clean(live, policy.clean_pod_policy)
        new["pods"] = pod_counts(current)
        new["conditions"] = conditions
        return result

    # 6. Converge on the gang: old pods out, missing pods in.
    result.delete = [p.name for p in stale]
    taken = {p.name for p in pods}
    result.create = [
        index
        for index in range(spec.replicas)
        if index not in by_index and naming.pod_name(job.ref.name, index) not in taken
    ]
    if result.create and "startTime" not in new:
        new["startTime"] = format_time(now)
        if policy.active_deadline_seconds is not None:
            result.requeue_after = float(policy.active_deadline_seconds)
    if (
        result.create
        and phase == PENDING
        and not any(c.get("type") == "Created" for c in conditions)
    ):
        conditions = set_condition(
            conditions, "Created", True, "PodsCreated", f"creating {spec.replicas} pod(s)", now
        )
        result.events.append(
            Event(
                "Normal",
                "Creating",
                f"creating {spec.replicas} pod(s), {spec.world_size} rank(s) of {spec.model}",
            )
        )

    all_running = len(by_index) == spec.replicas and all(
        p.phase in (RUNNING, SUCCEEDED) for p in by_index.values()
    )
    if all_running:
        if phase == RESTARTING:
            transition(
                RUNNING,
                "GangRestarted",
                f"all {spec.replicas} pod(s) of restart {restarts} are running",
            )
        elif phase != RUNNING:  # steady state keeps its reason (e.g. GangRestarted)
            transition(RUNNING, "AllPodsRunning", f"all {spec.replicas} pod(s) are running")
    else:
        unschedulable = [p for p in current if p.unschedulable]
        if unschedulable:
            reason, message = (
                "Unschedulable",
                f"{unschedulable[0].name}: {unschedulable[0].unschedulable}",
            )
        else:
            waiting = spec.replicas - sum(p.phase in (RUNNING, SUCCEEDED) for p in current)
            reason, message = (
                "PodsStarting",
                f"waiting for {waiting} of {spec.replicas} pod(s) to run",
            )
        if phase == RESTARTING:
            new["phase"], new["reason"], new["message"] = RESTARTING, "GangRestart", message
        else:
            # Waiting for pods to start is no news; being unschedulable is.
            transition(PENDING, reason, message, "Warning", record=bool(unschedulable))

    # 7. The rank table, from the current gang only.
    if spec.uses_rank_table:
        try:
            table = ranktable.build_rank_table(
                [p.raw for p in current],
                replicas=spec.replicas,
                devices_per_replica=spec.devices_per_replica,
                fmt=spec.rank_table_format,
                pod_names=[naming.pod_name(job.ref.name, i) for i in range(spec.replicas)],
            )
        except ranktable.RankTableIncomplete as incomplete:
            blocking, message = _rank_table_waiting_message(incomplete)
            new["rankTable"] = {
                "status": ranktable.INITIALIZING,
                "waitingFor": blocking,
                "message": message,
            }
            if ranktable.table_status(rank_table) != ranktable.INITIALIZING or rank_table is None:
                result.rank_table = initializing
            conditions = set_condition(
                conditions, RANK_TABLE_READY, False, "WaitingForPods", message, now
            )
        else:
            text = ranktable.dumps(table)
            new["rankTable"] = {
                "status": ranktable.COMPLETED,
                "waitingFor": [],
                "ranks": spec.world_size,
                "message": f"{spec.world_size} rank(s) on {spec.replicas} server(s)",
            }
            if text != rank_table:
                result.rank_table = text
                result.events.append(
                    Event(
                        "Normal",
                        "RankTableCompleted",
                        f"published {naming.rank_table_configmap_name(job.ref.name)} with {spec.world_size} rank(s)",
                    )
                )
            conditions = set_condition(
                conditions, RANK_TABLE_READY, True, "Completed", new["rankTable"]["message"], now
            )
    new["pods"] = pod_counts(current)
    new["conditions"] = conditions
    return result


def _order(pod: PodState) -> int:
    return pod.index if pod.index is not None else 1 << 30
