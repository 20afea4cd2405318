"""Hung gangs: a Running job whose trainer stops reporting progress while training is Stalled
(a collective stuck in HCCL/NCCL is the usual cause); runPolicy.onStall may restart the gang."""

from __future__ import annotations

from densenet_operator.draft import Draft, Event, Failure, restart_gang
from densenet_operator.status import FAILED, RUNNING, parse_time, set_condition

STALLED = "Stalled"
STALL_FLOOR_SECONDS = 600  # the default limit's floor: reports come every 10 s at least
STALL_REPORTS = 10  # the default limit: this many report intervals of the measured step time


def progress_limit(draft: Draft) -> float | None:
    """Seconds without a progress report after which a training job is stalled: the spec's, or
    STALL_REPORTS report intervals of the measured step time (never under the floor)."""
    spec = draft.job.spec
    if spec.run_policy.progress_deadline_seconds is not None:
        return float(spec.run_policy.progress_deadline_seconds)
    fps = draft.training.get("fps")
    if not isinstance(fps, int | float) or fps <= 0:
        return float(STALL_FLOOR_SECONDS)
    step_seconds = spec.recipe.batch_size * spec.world_size / fps
    interval = max(10.0, spec.recipe.print_freq * step_seconds)
    return max(float(STALL_FLOOR_SECONDS), STALL_REPORTS * interval)


def _stale_seconds(draft: Draft) -> float | None:
    """How long the current gang's trainer has been silent while training, or None when it is
    not judged (starting, evaluating, checkpointing, or a report of an earlier gang)."""
    training = draft.training
    updated = parse_time(training.get("updated"))
    since = parse_time(draft.status.get("lastRestartTime")) or parse_time(
        draft.status.get("startTime")
    )
    if draft.phase != RUNNING or training.get("activity") != "training" or updated is None:
        return None
    if since is not None and updated < since:
        return None
    return (draft.now - updated).total_seconds()


def stalled(draft: Draft) -> bool:
    """A gang that stopped making progress (a collective hung in HCCL/NCCL): a condition and an
    event, and the gang restarted if runPolicy.onStall asks for it."""
    stale, limit = _stale_seconds(draft), progress_limit(draft)
    if stale is None or limit is None or stale < limit:
        if stale is not None and limit is not None:
            due = limit - stale + 1
            draft.plan.requeue_within(due)
        if any(c.get("type") == STALLED and c.get("status") == "True" for c in draft.conditions):
            draft.conditions = set_condition(draft.conditions, STALLED, False, "Progressing",
                                             "the trainer reports progress", draft.now)  # fmt: skip
        return False
    step = draft.training.get("step")
    message = (
        f"no training progress reported for {stale:.0f} s (limit {limit:.0f} s; last step {step})"
    )
    if not any(c.get("type") == STALLED and c.get("status") == "True" for c in draft.conditions):
        draft.plan.events.append(Event("Warning", STALLED, message))
    draft.conditions = set_condition(
        draft.conditions, STALLED, True, "NoProgress", message, draft.now
    )
    action = draft.policy.on_stall
    if action == "Report":
        return False
    disruption = STALLED if action == "RestartAsDisruption" else None
    failure = Failure("of the gang", None, message, True, disruption)
    if disruption is None and draft.failed_restarts >= draft.policy.backoff_limit:
        draft.finish(FAILED, "BackoffLimitExceeded", f"{message}; restarts: "
                     f"{draft.failed_restarts}, backoffLimit: {draft.policy.backoff_limit}")  # fmt: skip
    else:
        restart_gang(draft, failure)
    return True
