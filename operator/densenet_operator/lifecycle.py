"""The job's lifecycle as a pure function: what is observed in, what to do out.

`plan()` reads the job, its last status and its pods, and returns the pods to create and
delete, the rank table to publish, the status to write and the events to record. It holds no
state of its own: everything it needs is in the API server, so an operator killed at any
point continues where it was (no duplicate pods, no re-run of a finished job, the restart
count kept), and unit tests can drive every transition.

A pass is a pipeline of named steps over one `Draft` (the status being written and the plan
being built); a step that settles the pass returns True and the later steps do not run:

    cross_check -> finished -> suspended -> deadline -> failures -> stalled -> succeeded
                -> converge_gang -> running_phase -> rank_table

Gangs: pods carry the restart count they were created under (label `gang`). A restart first
raises status.restarts, then deletes every pod; pods of an older gang are never counted and
their names are reused only once they are gone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from densenet_contract import EXIT_STOPPED_ON_REQUEST
from densenet_operator import backends, naming
from densenet_operator.ascend import ranktable
from densenet_operator.draft import (
    INITIALIZING_TABLE,
    MAX_MESSAGE_CHARS,
    MAX_WAITING_CHARS,
    MAX_WAITING_SHOWN,
    Draft,
    Event,
    Failure,
    Plan,
    by_replica_index,
    cut,
    pods_to_clean,
    restart_gang,
)
from densenet_operator.gang import GangState
from densenet_operator.podrecord import PENDING, PodRecord
from densenet_operator.spec import Job, RunPolicy
from densenet_operator.stall import stalled
from densenet_operator.status import (
    FAILED,
    FINISHED,
    GANG_SCHEDULED,
    QUEUED,
    RANK_TABLE_READY,
    RESTARTING,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    format_time,
    parse_time,
    set_condition,
)

# Pod-level reasons that say the infrastructure ended the pod: a disruption, never counted
# against backoffLimit (with the DisruptionTarget condition, a vanished pod, and the trainer's
# stopped-on-request exit).
DISRUPTION_REASONS = frozenset(
    {"Evicted", "NodeLost", "Shutdown", "Terminated", "NodeShutdown", "Preempted", "PodLost"}
)
QUEUE_RECHECK_SECONDS = 15.0
# Failures that are retryable whatever the exit code, but count against backoffLimit.
RETRYABLE_REASONS = frozenset({"UnexpectedAdmissionError", "OOMKilled", "DeadlineExceeded"})


def disruption_of(pod: PodRecord) -> str | None:
    """The kind of disruption that ended `pod`, or None when it failed on its own."""
    if pod.disruption:
        return pod.disruption
    if pod.exit_code == EXIT_STOPPED_ON_REQUEST:
        return "StoppedOnRequest"
    return pod.reason if pod.reason in DISRUPTION_REASONS else None


def classify_failure(pod: PodRecord, policy: RunPolicy) -> Failure:
    """A disruption (restart the gang, not counted), or a failure: retryable (restart the gang)
    or permanent (fail the job), after Kubeflow's ExitCode policy: signals and kills (128+, e.g.
    137 for an OOM kill) and some reasons are retryable; 1-127 come from the user's code and
    are permanent unless listed as retryable."""
    code = pod.exit_code
    reason = pod.reason or ("Error" if code else "PodFailed")
    disruption = disruption_of(pod)
    if disruption:
        return Failure(pod.name, code, disruption, True, disruption)
    if policy.restart_policy == "Never":
        retryable = False
    elif (
        policy.restart_policy == "OnFailure"
        or pod.reason in RETRYABLE_REASONS
        or code is None
        or code == 0
    ):
        retryable = True
    else:
        retryable = code >= 128 or code in policy.retryable_exit_codes
    return Failure(pod.name, code, reason, retryable)


def _vanished(pod_name: str) -> Failure:
    return Failure(pod_name, None, "pod disappeared (deleted, or its node was lost)", True,
                   "Vanished")  # fmt: skip


# ---------------------------------------------------------------- the steps


def cross_check(draft: Draft) -> bool:
    """A status the job's own pods contradict was not written by the operator: corrected.

    The gang number (restarts) must be that of the newest pods the job owns (or one more,
    mid-restart), and disruptions at most the restarts; a finished phase needs its completion
    time, and Succeeded no pod of the gang still running.
    """
    corrections = []
    gangs = [p.gang for p in draft.pods if p.owner_uid == draft.job.ref.uid and p.gang is not None]
    if gangs and not max(gangs) <= draft.restarts <= max(gangs) + 1:
        corrections.append(f"restarts {draft.restarts} -> {max(gangs)} (the pods' gang)")
        draft.restarts = max(gangs)
    if not 0 <= draft.disruptions <= draft.restarts:
        corrections.append(f"disruptions {draft.disruptions} -> at most the restarts")
        draft.disruptions = min(max(draft.disruptions, 0), draft.restarts)
    draft.status.update(restarts=draft.restarts, disruptions=draft.disruptions)
    if draft.phase in FINISHED and _finish_contradicted(draft):
        corrections.append(f"phase {draft.phase} -> {PENDING} (the pods still run)")
        draft.phase = PENDING
        draft.status.update(phase=PENDING)
        draft.status.pop("completionTime", None)
    if corrections:
        draft.plan.events.append(Event("Warning", "StatusCorrected", "status written by someone "
                                       f"else, contradicted by the pods: {'; '.join(corrections)}"))  # fmt: skip
    return False


def _finish_contradicted(draft: Draft) -> bool:
    if not draft.status.get("completionTime"):
        return True
    still_running = any(p.phase in (PENDING, RUNNING) for p in draft.current)
    return draft.phase == SUCCEEDED and still_running


def finished(draft: Draft) -> bool:
    """Finished jobs never run again; only clean-up and the TTL remain."""
    if draft.phase not in FINISHED:
        return False
    draft.count_pods = False
    policy, plan = draft.policy, draft.plan
    plan.delete = pods_to_clean(draft.live, policy.clean_pod_policy)
    finished_at = parse_time(draft.status.get("completionTime"))
    if policy.ttl_seconds_after_finished is None or finished_at is None:
        return True
    expires = finished_at + dt.timedelta(seconds=policy.ttl_seconds_after_finished)
    if draft.now >= expires:
        plan.delete_job = True
        plan.events.append(Event("Normal", "TTLExpired", "deleting the job "
                                 f"{policy.ttl_seconds_after_finished}s after it finished"))  # fmt: skip
    else:
        plan.requeue_after = (expires - draft.now).total_seconds()
    return True


def suspended(draft: Draft) -> bool:
    """Suspended: no pods; the job and its restart count are kept. Resumed: back to Pending."""
    if not draft.policy.suspend:
        if draft.phase == SUSPENDED:
            draft.transition(PENDING, "Resumed", "runPolicy.suspend is false: recreating the gang")
        return False
    draft.plan.delete = [p.name for p in draft.live]
    if draft.phase != SUSPENDED:
        draft.transition(SUSPENDED, "Suspended", "runPolicy.suspend is true: the pods are deleted")
        draft.plan.release = True
    draft.status.pop("startTime", None)  # the deadline counts from the resume, as for a Job
    draft.reset_rank_table()
    return True


def deadline(draft: Draft) -> bool:
    """activeDeadlineSeconds, counted from the start of the gang."""
    started = parse_time(draft.status.get("startTime"))
    limit = draft.policy.active_deadline_seconds
    if started is None or limit is None:
        return False
    ends = started + dt.timedelta(seconds=limit)
    if draft.now < ends:
        draft.plan.requeue_after = (ends - draft.now).total_seconds()
        return False
    draft.finish(
        FAILED, "DeadlineExceeded", f"the job ran longer than activeDeadlineSeconds={limit}"
    )
    return True


def _current_failures(draft: Draft) -> list[Failure]:
    failed = [p for p in sorted(draft.current, key=by_replica_index) if p.phase == FAILED]
    # A pod the control plane is ending (scheduler preemption, eviction: DisruptionTarget)
    # is a disruption as soon as it is marked, named by why, not a vanished pod later.
    failed += [p for p in sorted(draft.disrupted, key=by_replica_index) if p.phase != FAILED]
    failures = [classify_failure(p, draft.policy) for p in failed]
    # A missing pod is a loss only once the whole gang has been seen running; before that it
    # is still to be created (e.g. by an operator that was killed mid-creation).
    if not failures and draft.phase == RUNNING:
        by_index = draft.by_index
        failures = [
            _vanished(backends.pod_name(draft.job, index, draft.gang))
            for index in range(draft.job.spec.replicas)
            if index not in by_index
        ]
    return failures


def failures(draft: Draft) -> bool:
    """A failed, disrupted or vanished pod of the current gang: restart the whole gang, or fail
    the job. Disruptions restart it without counting against backoffLimit."""
    found = _current_failures(draft)
    if not found:
        return False
    policy, restarts = draft.policy, draft.failed_restarts
    own = [f for f in found if not f.disruption]
    failure = next((f for f in own if not f.retryable), own[0] if own else found[0])
    if not failure.retryable:
        draft.finish(FAILED, "PermanentFailure", f"{failure.describe()}: not retryable under "
                     f"restartPolicy {policy.restart_policy}; restarts: {restarts}")  # fmt: skip
    elif not failure.disruption and restarts >= policy.backoff_limit:
        draft.finish(FAILED, "BackoffLimitExceeded", f"{failure.describe()}; restarts: "
                     f"{restarts}, backoffLimit: {policy.backoff_limit}")  # fmt: skip
    else:
        restart_gang(draft, failure)
    return True


def succeeded(draft: Draft) -> bool:
    by_index, replicas = draft.by_index, draft.job.spec.replicas
    if len(by_index) != replicas or any(p.phase != SUCCEEDED for p in by_index.values()):
        return False
    draft.finish(SUCCEEDED, "AllPodsSucceeded", f"all {replicas} pod(s) completed")
    return True


def converge_gang(draft: Draft) -> bool:
    """Old gangs' pods out, the current gang's missing pods in."""
    spec, plan = draft.job.spec, draft.plan
    plan.delete = [p.name for p in draft.live if p.gang != draft.gang]
    plan.delete += [p.name for p in draft.leftovers]
    # A name held by a pod no job owns is not skipped: creating it fails, and the reconciler
    # reports whose it is (ChildConflict). Never adopted.
    ours = [p for p in draft.pods if p.owner_uid is not None]
    taken, by_index = {p.name for p in ours}, draft.by_index
    # A new gang starts once the old one has stopped running (its pods ended or gone): a queue
    # (Kueue) counts a pod that still runs, even while it is deleted, as one of the group, and
    # would turn the new pods away as one too many.
    if any(p.gang != draft.gang and p.node_name and p.phase in (PENDING, RUNNING)
           for p in draft.pods if p.owner_uid == draft.job.ref.uid):  # fmt: skip
        return False
    plan.create = [
        index
        for index in range(spec.replicas)
        if index not in by_index and backends.pod_name(draft.job, index, draft.gang) not in taken
    ]
    if not plan.create:
        return False
    if "startTime" not in draft.status:
        draft.status["startTime"] = format_time(draft.now)
        if draft.policy.active_deadline_seconds is not None:
            plan.requeue_after = float(draft.policy.active_deadline_seconds)
    if draft.phase == PENDING and not any(c.get("type") == "Created" for c in draft.conditions):
        message = f"creating {spec.replicas} pod(s)"
        draft.conditions = set_condition(
            draft.conditions, "Created", True, "PodsCreated", message, draft.now
        )
        plan.events.append(Event("Normal", "Creating", f"{message}, {spec.world_size} rank(s) "
                                 f"of {spec.model}"))  # fmt: skip
    return False


def running_phase(draft: Draft) -> bool:
    """Running once every pod of the gang runs; otherwise why it is still waiting (the gang
    scheduler's word on the whole gang, when it has one)."""
    by_index, replicas = draft.by_index, draft.job.spec.replicas
    if (gang_state := draft.gang_state) is not None:
        draft.conditions = set_condition(
            draft.conditions, GANG_SCHEDULED, gang_state.scheduled, gang_state.reason or
            ("Scheduled" if gang_state.scheduled else "Unschedulable"),
            cut(gang_state.message, MAX_MESSAGE_CHARS), draft.now,
        )  # fmt: skip
    if len(by_index) == replicas and all(
        p.phase in (RUNNING, SUCCEEDED) for p in by_index.values()
    ):
        if draft.phase == RESTARTING:
            draft.transition(RUNNING, "GangRestarted",
                             f"all {replicas} pod(s) of gang {draft.gang} are running")  # fmt: skip
        elif draft.phase != RUNNING:  # steady state keeps its reason (e.g. GangRestarted)
            draft.transition(RUNNING, "AllPodsRunning", f"all {replicas} pod(s) are running")
        return False
    if queued(draft):
        return False
    unschedulable = [p for p in draft.current if p.unschedulable]
    if unschedulable and gang_state is not None and not gang_state.scheduled:
        # The group's word says why the whole gang waits; a pod's only says "the group".
        reason = "GangUnschedulable"
        message = f"gang {draft.gang} ({len(draft.current)} pod(s)): {gang_state.message}"
    elif unschedulable:
        reason, message = (
            "Unschedulable",
            f"{unschedulable[0].name}: {unschedulable[0].unschedulable}",
        )
    else:
        waiting = replicas - sum(p.phase in (RUNNING, SUCCEEDED) for p in draft.current)
        reason, message = "PodsStarting", f"waiting for {waiting} of {replicas} pod(s) to run"
    if draft.phase == RESTARTING:
        draft.status.update(
            phase=RESTARTING, reason="GangRestart", message=cut(message, MAX_MESSAGE_CHARS)
        )
    else:
        # Waiting for pods to start is no news; being unschedulable is.
        draft.transition(PENDING, reason, message, "Warning", record=bool(unschedulable))
    return False


def queued(draft: Draft) -> bool:
    """Queued while the gang's pods wait, unbound, for their scheduling gates to be lifted (a
    queue's admission: Kueue), with the queue's word when it has one; looked at again every
    QUEUE_RECHECK_SECONDS (the queue's word changes without a pod event)."""
    gated = [p for p in draft.current if p.gates]
    if not gated or any(p.node_name for p in draft.current):
        return False
    state = draft.gang_state
    if state is not None and state.queued:
        message = state.message
    else:
        gates = sorted({gate for p in gated for gate in p.gates})
        message = f"{len(gated)} pod(s) wait for their scheduling gates: {', '.join(gates)}"
    draft.transition(QUEUED, "Queued", message)
    draft.plan.requeue_within(QUEUE_RECHECK_SECONDS)
    return True


def rank_table(draft: Draft) -> bool:
    """The rank table, from the current gang only: complete and valid, or initializing."""
    spec, job_name = draft.job.spec, draft.job.ref.name
    if not spec.uses_rank_table:
        return False
    try:
        table = ranktable.build_rank_table(
            draft.current, replicas=spec.replicas, devices_per_replica=spec.devices_per_replica,
            fmt=ranktable.layout_for(spec, job_name),
            pod_names=[backends.pod_name(draft.job, i, draft.gang) for i in range(spec.replicas)],
        )  # fmt: skip
    except ranktable.RankTableIncomplete as incomplete:
        waiting = [cut(w, MAX_WAITING_CHARS) for w in incomplete.waiting_for]
        shown = waiting[:MAX_WAITING_SHOWN]
        if len(waiting) > len(shown):
            shown.append(f"... and {len(waiting) - len(shown)} more")
        message = f"waiting for {len(waiting)} pod(s): {waiting[0]}"
        draft.set_rank_table({"status": ranktable.INITIALIZING, "waitingFor": shown,
                              "message": message}, INITIALIZING_TABLE)  # fmt: skip
        draft.conditions = set_condition(
            draft.conditions, RANK_TABLE_READY, False, "WaitingForPods", message, draft.now
        )
        return False
    message = f"{spec.world_size} rank(s) on {spec.replicas} server(s)"
    text = ranktable.dumps(table)
    if text != draft.published_table:
        draft.plan.events.append(Event("Normal", "RankTableCompleted", "published "
            f"{naming.rank_table_configmap_name(job_name)} with {spec.world_size} rank(s)"))  # fmt: skip
    draft.set_rank_table({"status": ranktable.COMPLETED, "waitingFor": [],
                          "ranks": spec.world_size, "message": message}, text)  # fmt: skip
    draft.conditions = set_condition(
        draft.conditions, RANK_TABLE_READY, True, "Completed", message, draft.now
    )
    return False


Step = Callable[[Draft], bool]
STEPS: tuple[Step, ...] = (
    cross_check,
    finished,
    suspended,
    deadline,
    failures,
    stalled,
    succeeded,
    converge_gang,
    running_phase,
    rank_table,
)


def plan(
    job: Job,
    status: Mapping[str, Any],
    pods: Sequence[PodRecord],
    now: dt.datetime,
    published_table: str | None = None,
    gang_state: GangState | None = None,
) -> Plan:
    """What to do next for `job`, given its last `status`, its `pods`, the published table and
    what the gang scheduler says of the current gang (gang.py), if it says anything."""
    draft = Draft.start(job, status, pods, now, published_table)
    draft.gang_state = gang_state
    for step in STEPS:
        if step(draft):
            break
    return draft.close()
