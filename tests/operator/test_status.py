"""Which status writes may wait (status.status_write_delay), on statuses the lifecycle really
plans: a 2-pod job whose pods start one at a time."""

from __future__ import annotations

import datetime as dt
from typing import Any

from densenet_operator import lifecycle, reconcile
from densenet_operator.podrecord import PodRecord
from densenet_operator.status import PROGRESS_WRITE_INTERVAL, progress_only, status_write_delay
from tests.operator.factories import make_job, make_pod

NOW = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)
JOB = make_job(replicas=2)


def planned(old: dict[str, Any], *pods: dict[str, Any]) -> dict[str, Any]:
    records = [PodRecord.from_pod(pod) for pod in pods]
    return lifecycle.plan(JOB, old, records, NOW, None).status


def starting() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    first = planned({})
    both_pending = planned(
        first, make_pod(0, phase="Pending", pod_ip=None), make_pod(1, phase="Pending", pod_ip=None)
    )
    one_running = planned(both_pending, make_pod(0), make_pod(1, phase="Pending", pod_ip=None))
    all_running = planned(one_running, make_pod(0), make_pod(1))
    return first, both_pending, one_running, all_running


def test_pods_starting_one_by_one_is_progress_and_all_running_a_transition() -> None:
    first, both_pending, one_running, all_running = starting()
    assert not progress_only({}, first)  # the first status
    assert both_pending != first and progress_only(first, both_pending)
    assert one_running != both_pending and progress_only(both_pending, one_running)
    assert all_running["phase"] == "Running" and not progress_only(one_running, all_running)


def test_progress_waits_out_the_interval_and_a_transition_never_waits() -> None:
    _, both_pending, one_running, all_running = starting()
    written_at = 100.0
    halfway = written_at + PROGRESS_WRITE_INTERVAL / 2
    assert status_write_delay(both_pending, one_running, written_at, halfway) == (
        PROGRESS_WRITE_INTERVAL / 2
    )
    after = written_at + PROGRESS_WRITE_INTERVAL
    assert status_write_delay(both_pending, one_running, written_at, after) == 0.0
    assert status_write_delay(both_pending, one_running, None, halfway) == 0.0  # none written yet
    assert status_write_delay(one_running, all_running, written_at, halfway) == 0.0


def test_a_reason_a_condition_that_flips_or_a_restart_is_a_transition() -> None:
    _, _, one_running, _ = starting()
    flipped = {
        **one_running,
        "conditions": [
            {**c, "status": "False"} if c["type"] == "Pending" else c
            for c in one_running["conditions"]
        ],
    }
    assert not progress_only(one_running, flipped)
    # a new reason records an Event: a pass that did not write it would record it again
    assert not progress_only(one_running, {**one_running, "reason": "Unschedulable"})
    assert not progress_only(one_running, {**one_running, "restarts": 1})
    table = {**one_running["rankTable"], "status": "completed", "waitingFor": []}
    assert not progress_only(one_running, {**one_running, "rankTable": table})
    # the trainer's own block is not the operator's to write at all
    assert progress_only(one_running, {**one_running, "training": {"epoch": 3}})


def test_a_status_patch_nulls_what_a_nested_block_no_longer_has():
    old = {"phase": "Running", "rankTable": {"status": "completed", "ranks": 16, "message": "m"},
           "training": {"epoch": 3}, "reason": "AllPodsRunning"}  # fmt: skip
    new = {"phase": "Restarting", "rankTable": {"status": "initializing", "message": "m"}}
    # Merged by the API server, the patch leaves exactly `new` (and the trainer's block).
    assert reconcile.status_patch(old, new) == {
        "phase": "Restarting", "rankTable": {"status": "initializing", "ranks": None},
        "reason": None,
    }  # fmt: skip
    assert reconcile.status_patch(old, {**old, "training": {"epoch": 4}}) is None
