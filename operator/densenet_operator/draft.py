"""One pass of the lifecycle: what was observed, the status being written, the plan being built
(`Draft`), and what it records (`Event`, `Failure`, `Plan`). lifecycle.py runs the steps over it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from densenet_operator.ascend import ranktable
from densenet_operator.gang import GangState
from densenet_operator.podrecord import PENDING, PodRecord
from densenet_operator.spec import Job, RunPolicy
from densenet_operator.status import (
    FAILED,
    GANG_SCHEDULED,
    RESTARTING,
    SUCCEEDED,
    format_time,
    pod_counts,
    set_phase_conditions,
)

MAX_WAITING_SHOWN = 8
MAX_WAITING_CHARS = 256  # each entry of rankTable.waitingFor
MAX_MESSAGE_CHARS = 1024  # status messages and events: pods' and plugins' words are cut here


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


INITIALIZING_TABLE = ranktable.dumps(ranktable.initializing_table())


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
    disruption: str | None = None  # set: the infrastructure ended the pod, not the user's code

    def describe(self) -> str:
        code = f"exit code {self.exit_code}" if self.exit_code is not None else "no exit code"
        what = "was disrupted" if self.disruption else "failed"
        return f"pod {self.pod} {what} ({code}, {self.reason})"


@dataclass
class Plan:
    status: dict[str, Any]
    create: list[int] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    rank_table: str | None = None
    events: list[Event] = field(default_factory=list)
    delete_job: bool = False
    requeue_after: float | None = None
    # What this pass decided, counted in the operator's metrics once its status is written.
    finished: str | None = None  # Succeeded or Failed: this pass finishes the job
    restart_cause: str | None = None  # "failure" or "disruption": this pass restarts the gang
    first: bool = False  # the job had no phase: this pass gives it its first
    # The job gives back its place (a queue's quota: gang.py released_children), before its
    # status is written: it failed or is being suspended.
    release: bool = False

    def requeue_within(self, seconds: float) -> None:
        """The next pass no later than `seconds` from now (an earlier one stays)."""
        due = self.requeue_after
        self.requeue_after = seconds if due is None else min(due, seconds)


def by_replica_index(pod: PodRecord) -> int:
    return pod.index if pod.index is not None else 1 << 30


@dataclass
class Draft:
    """One pass: what was observed, the status being written and the plan being built."""

    job: Job
    now: dt.datetime
    phase: str  # the phase so far in this pass
    restarts: int  # gang restarts so far: the current gang's number, stamped on its pods
    disruptions: int  # those of them for disruptions, which backoffLimit does not count
    status: dict[str, Any]  # the new status (the trainer's `training` block left out)
    conditions: list[dict[str, Any]]
    pods: Sequence[PodRecord]  # every pod of the job, terminating ones included
    published_table: str | None  # the rank table's current content
    plan: Plan = field(init=False)
    count_pods: bool = True  # a finished job's status keeps the counts it finished with
    training: dict[str, Any] = field(default_factory=dict)  # the trainer's report, read only
    gang_state: GangState | None = None  # the gang scheduler's word on the current gang

    def __post_init__(self) -> None:
        self.plan = Plan(status=self.status)

    @classmethod
    def start(
        cls,
        job: Job,
        status: Mapping[str, Any],
        pods: Sequence[PodRecord],
        now: dt.datetime,
        published_table: str | None,
    ) -> Draft:
        restarts = int(status.get("restarts") or 0)
        disruptions = int(status.get("disruptions") or 0)
        new = {key: value for key, value in status.items() if key != "training"}
        new.update(worldSize=job.spec.world_size, observedGeneration=job.generation,
                   restarts=restarts, disruptions=disruptions)  # fmt: skip
        draft = cls(job, now, status.get("phase") or PENDING, restarts, disruptions, new,
                    list(status.get("conditions") or ()), pods, published_table,
                    training=dict(status.get("training") or {}))  # fmt: skip
        draft.plan.first = not status.get("phase")
        return draft

    @property
    def gang(self) -> int:
        """The current gang's number, stamped on its pods: every restart so far."""
        return self.restarts

    @property
    def failed_restarts(self) -> int:
        """Restarts for failures of the user's code: what backoffLimit counts."""
        return self.restarts - self.disruptions

    @property
    def policy(self) -> RunPolicy:
        return self.job.spec.run_policy

    @property
    def live(self) -> list[PodRecord]:
        """This job's own pods that are not being deleted (pods are matched by owner UID)."""
        return [p for p in self.pods if not p.terminating and p.owner_uid == self.job.ref.uid]

    @property
    def leftovers(self) -> list[PodRecord]:
        """Pods of a deleted job of the same name (the garbage collector lags): deleted."""
        return [
            p for p in self.pods
            if not p.terminating and p.owner_uid not in (None, self.job.ref.uid)
        ]  # fmt: skip

    @property
    def current(self) -> list[PodRecord]:
        """The live pods of the current gang."""
        return [p for p in self.live if p.gang == self.gang]

    @property
    def disrupted(self) -> list[PodRecord]:
        """Pods of the current gang being deleted with a DisruptionTarget condition (the
        scheduler preempting, an eviction): the control plane ends them, not the operator."""
        return [
            p for p in self.pods
            if p.terminating and p.disruption and p.owner_uid == self.job.ref.uid
            and p.gang == self.gang
        ]  # fmt: skip

    @property
    def by_index(self) -> dict[int, PodRecord]:
        return {p.index: p for p in self.current if p.index is not None}

    def transition(
        self, to: str, reason: str, message: str, event_type: str = "Normal", record: bool = True
    ) -> None:
        message = cut(message, MAX_MESSAGE_CHARS)
        if record and (to != self.phase or self.status.get("reason") != reason):
            self.plan.events.append(Event(event_type, reason, message))
        self.status.update(phase=to, reason=reason, message=message)
        self.conditions = set_phase_conditions(self.conditions, to, reason, message, self.now)
        self.phase = to

    def finish(self, to: str, reason: str, message: str) -> None:
        """Succeeded or Failed, with the pods cleanPodPolicy removes."""
        self.transition(to, reason, message, "Normal" if to == SUCCEEDED else "Warning")
        self.plan.finished = to
        self.plan.release = to == FAILED  # a success gives it back by itself
        self.status["completionTime"] = format_time(self.now)
        self.plan.delete = pods_to_clean(self.live, self.policy.clean_pod_policy)

    def set_rank_table(self, summary: dict[str, Any], table: str) -> None:
        """The status's rankTable block, and the ConfigMap content when it changes."""
        if not self.job.spec.uses_rank_table:
            return
        self.status["rankTable"] = summary
        if table == INITIALIZING_TABLE:
            # Written only when the ConfigMap says something else: once, not every pass.
            if ranktable.table_status(self.published_table) != ranktable.INITIALIZING or (
                self.published_table is None
            ):
                self.plan.rank_table = table
        elif table != self.published_table:
            self.plan.rank_table = table

    def reset_rank_table(self) -> None:
        self.set_rank_table(
            {"status": ranktable.INITIALIZING, "waitingFor": [],
             "message": "the gang is being (re)created"},
            INITIALIZING_TABLE,
        )  # fmt: skip

    def close(self) -> Plan:
        if self.count_pods:
            self.status["pods"] = pod_counts(self.current)
        self.status["conditions"] = self.conditions
        return self.plan


def pods_to_clean(pods: Sequence[PodRecord], policy: str) -> list[str]:
    if policy == "All":
        return [p.name for p in pods]
    if policy == "Running":
        return [p.name for p in pods if p.phase not in (SUCCEEDED, FAILED)]
    return []


def restart_gang(draft: Draft, failure: Failure) -> None:
    """The whole gang deleted and made anew: a restart, counted as a disruption or a failure."""
    # Status first (the reconciler writes it before deleting): a crash in between leaves pods
    # of an old gang, which the next pass deletes; never a lost count. The pods counted in
    # this status are still those of the gang that failed.
    counted = draft.current
    replicas, limit = draft.job.spec.replicas, draft.policy.backoff_limit
    draft.restarts += 1
    draft.plan.restart_cause = "disruption" if failure.disruption else "failure"
    if failure.disruption:
        draft.disruptions += 1
        count = f"restart {draft.restarts}, a disruption: not counted against backoffLimit {limit}"
    else:
        count = f"restart {draft.failed_restarts} of {limit}"
    draft.status.update(restarts=draft.restarts, disruptions=draft.disruptions,
                        lastRestartTime=format_time(draft.now))  # fmt: skip
    draft.transition(RESTARTING, "GangRestart", f"{failure.describe()}: restarting all "
                     f"{replicas} pod(s), {count}", "Warning")  # fmt: skip
    draft.plan.delete = [p.name for p in draft.live]
    # The next generation is a new group: what the scheduler said of this one is history.
    draft.conditions = [c for c in draft.conditions if c.get("type") != GANG_SCHEDULED]
    draft.reset_rank_table()
    draft.status["pods"] = pod_counts(counted)
    draft.count_pods = False
