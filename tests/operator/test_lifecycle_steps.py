"""Each step of the lifecycle pipeline on its own (test_lifecycle.py drives whole passes)."""

from __future__ import annotations

import datetime as dt

from densenet_operator import lifecycle
from densenet_operator.podrecord import PodRecord
from tests.operator.factories import make_job, make_pod

NOW = dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.UTC)


def draft(job=None, status=None, pods=(), table=lifecycle.INITIALIZING_TABLE):
    records = [PodRecord.from_pod(p) for p in pods]
    return lifecycle.Draft.start(job or make_job(), status or {}, records, NOW, table)


def test_the_pipeline_runs_its_steps_in_order():
    assert [s.__name__ for s in lifecycle.STEPS] == [
        "cross_check", "finished", "suspended", "deadline", "failures", "succeeded", "converge_gang",
        "running_phase", "rank_table",
    ]  # fmt: skip


def test_finished_settles_the_pass_and_keeps_the_pod_counts():
    d = draft(status={"phase": "Succeeded", "pods": {"succeeded": 1}}, pods=[make_pod(0)])
    assert lifecycle.finished(d) is True
    plan = d.close()
    assert plan.delete == ["dn161-worker-0"] and plan.status["pods"] == {"succeeded": 1}
    assert lifecycle.finished(draft(status={"phase": "Running"})) is False


def test_suspended_deletes_the_pods_and_resume_goes_back_to_pending():
    job = make_job(runPolicy={"suspend": True})
    d = draft(job, {"phase": "Running", "startTime": "2026-11-22T11:00:00Z"}, [make_pod(0)])
    assert lifecycle.suspended(d) is True
    assert d.phase == "Suspended" and "startTime" not in d.status
    assert d.plan.delete == ["dn161-worker-0"]
    resumed = draft(status={"phase": "Suspended"})
    assert lifecycle.suspended(resumed) is False and resumed.phase == "Pending"


def test_deadline_requeues_before_and_fails_after():
    job = make_job(runPolicy={"activeDeadlineSeconds": 60})
    early = draft(job, {"phase": "Running", "startTime": "2026-11-22T11:59:30Z"})
    assert lifecycle.deadline(early) is False and early.plan.requeue_after == 30
    late = draft(job, {"phase": "Running", "startTime": "2026-11-22T11:58:00Z"})
    assert lifecycle.deadline(late) is True and late.status["reason"] == "DeadlineExceeded"


def test_failures_restart_the_gang_with_status_first():
    d = draft(status={"phase": "Running"}, pods=[make_pod(0, phase="Failed", exit_code=137)])
    assert lifecycle.failures(d) is True
    assert d.status["restarts"] == 1 and d.phase == "Restarting"
    assert d.plan.delete == ["dn161-worker-0"]
    assert d.close().status["pods"]["failed"] == 1  # counted in the gang that failed


def test_succeeded_needs_every_pod_of_the_gang():
    job = make_job(replicas=2)
    assert lifecycle.succeeded(draft(job, pods=[make_pod(0, phase="Succeeded")])) is False
    done = draft(job, pods=[make_pod(i, phase="Succeeded") for i in range(2)])
    assert lifecycle.succeeded(done) is True and done.phase == "Succeeded"


def test_converge_gang_creates_the_missing_and_deletes_old_gangs():
    job = make_job(replicas=2)
    d = draft(job, {"restarts": 1}, [make_pod(0, gang=1), make_pod(1, gang=0)])
    assert lifecycle.converge_gang(d) is False
    assert d.plan.delete == ["dn161-worker-1"]
    assert d.plan.create == []  # worker-1's name is still taken by the old gang's pod


def test_running_phase_and_rank_table_complete_together():
    d = draft(pods=[make_pod(0)])
    lifecycle.running_phase(d)
    lifecycle.rank_table(d)
    assert d.phase == "Running"
    assert d.status["rankTable"]["status"] == "completed" and d.plan.rank_table is not None


def test_rank_table_names_what_it_waits_for():
    d = draft(pods=[make_pod(0, annotation=None)])
    lifecycle.rank_table(d)
    assert d.status["rankTable"]["waitingFor"] == [
        "dn161-worker-0: has no ascend-910-configuration annotation from the device plugin yet"
    ]
    assert d.plan.rank_table is None  # the ConfigMap already says initializing


def test_cross_check_believes_the_pods_not_a_forged_restart_count():
    for forged in (0, 1000):
        d = draft(status={"phase": "Running", "restarts": forged}, pods=[make_pod(0, gang=3)])
        lifecycle.cross_check(d)
        assert d.restarts == 3 and d.status["restarts"] == 3
        assert [e.reason for e in d.plan.events] == ["StatusCorrected"]
    mid_restart = draft(status={"restarts": 4}, pods=[make_pod(0, gang=3, terminating=True)])
    lifecycle.cross_check(mid_restart)
    assert mid_restart.restarts == 4 and not mid_restart.plan.events


def test_cross_check_undoes_a_finish_the_pods_contradict():
    forged = draft(status={"phase": "Succeeded"}, pods=[make_pod(0)])  # no completionTime
    lifecycle.cross_check(forged)
    assert forged.phase == "Pending"
    running = draft(status={"phase": "Succeeded", "completionTime": "2026-11-22T11:00:00Z"},
                    pods=[make_pod(0)])  # fmt: skip
    lifecycle.cross_check(running)
    assert running.phase == "Pending"
    done = draft(status={"phase": "Succeeded", "completionTime": "2026-11-22T11:00:00Z"},
                 pods=[make_pod(0, phase="Succeeded")])  # fmt: skip
    lifecycle.cross_check(done)
    assert done.phase == "Succeeded" and not done.plan.events


def test_a_forged_success_does_not_delete_running_pods():
    plan = lifecycle.plan(
        make_job(), {"phase": "Succeeded"}, [PodRecord.from_pod(make_pod(0))], NOW
    )
    assert plan.delete == [] and plan.status["phase"] == "Running"
