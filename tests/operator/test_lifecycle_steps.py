"""Each step of the lifecycle pipeline on its own (test_lifecycle.py drives whole passes)."""

from __future__ import annotations

import datetime as dt

from densenet_operator import lifecycle, stall
from densenet_operator.draft import Plan
from densenet_operator.podrecord import PodRecord
from tests.operator.factories import make_job, make_pod

NOW = dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.UTC)


def draft(job=None, status=None, pods=(), table=lifecycle.INITIALIZING_TABLE):
    records = [PodRecord.from_pod(p) for p in pods]
    return lifecycle.Draft.start(job or make_job(), status or {}, records, NOW, table)


def test_the_pipeline_runs_its_steps_in_order():
    assert [s.__name__ for s in lifecycle.STEPS] == [
        "cross_check", "finished", "suspended", "deadline", "failures", "stalled", "succeeded", "converge_gang",
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


def disrupted(index=0, **kw):
    pod = make_pod(index, phase="Failed", exit_code=137, **kw)
    pod["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True",
                                    "reason": "PreemptionByScheduler"}]  # fmt: skip
    return pod


def test_a_disruption_restarts_the_gang_without_spending_the_backoff_budget():
    job = make_job(runPolicy={"backoffLimit": 1})
    d = draft(job, {"phase": "Running", "restarts": 1, "disruptions": 0}, [disrupted(gang=1)])
    assert lifecycle.failures(d) is True
    assert (d.status["restarts"], d.status["disruptions"], d.phase) == (2, 1, "Restarting")
    assert "PreemptionByScheduler" in d.status["message"] and "not counted" in d.status["message"]


def test_a_graceful_stop_is_a_disruption_and_exit_1_still_fails_the_job():
    stopped = draft(status={"phase": "Running"}, pods=[make_pod(0, phase="Failed", exit_code=75)])
    lifecycle.failures(stopped)
    assert stopped.status["disruptions"] == 1 and stopped.phase == "Restarting"
    crashed = draft(status={"phase": "Running"}, pods=[make_pod(0, phase="Failed", exit_code=1)])
    lifecycle.failures(crashed)
    assert crashed.phase == "Failed" and crashed.status["reason"] == "PermanentFailure"


def training(seconds_ago, activity="training", fps=100.0):
    updated = (NOW - dt.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"activity": activity, "updated": updated, "fps": fps, "step": 42}


def running_status(**extra):
    return {"phase": "Running", "startTime": "2026-11-22T10:00:00Z", **extra}


def test_a_silent_training_gang_is_stalled_after_its_deadline():
    job = make_job(runPolicy={"progressDeadlineSeconds": 60})
    quiet = draft(job, running_status(training=training(30)), [make_pod(0)])
    assert stall.stalled(quiet) is False and quiet.plan.requeue_after == 31
    hung = draft(job, running_status(training=training(90)), [make_pod(0)])
    assert stall.stalled(hung) is False  # Report: a condition and an event only
    assert [e.reason for e in hung.plan.events] == ["Stalled"]
    assert (
        "no training progress reported for 90 s (limit 60 s; last step 42)"
        in hung.plan.events[0].message
    )


def test_a_stall_restarts_the_gang_as_the_user_chose():
    job = make_job(runPolicy={"progressDeadlineSeconds": 60, "onStall": "RestartAsDisruption"})
    d = draft(job, running_status(training=training(90)), [make_pod(0)])
    assert stall.stalled(d) is True
    assert (d.status["restarts"], d.status["disruptions"]) == (1, 1)


def test_a_gang_that_is_not_training_is_never_judged_stalled():
    job = make_job(runPolicy={"progressDeadlineSeconds": 60, "onStall": "RestartAsFailure"})
    for report, status in (
        (training(900, activity="evaluating"), running_status()),
        (training(900, activity="checkpointing"), running_status()),
        (training(900), running_status(lastRestartTime="2026-11-22T11:59:00Z")),  # older gang
    ):
        d = draft(job, {**status, "training": report}, [make_pod(0)])
        assert stall.stalled(d) is False and not d.plan.events


def test_the_default_deadline_follows_the_measured_step_time():
    job = make_job(recipe={"printFreq": 100})  # 8 ranks x 128 at 100 img/s: 10.24 s a step
    d = draft(job, running_status(training=training(0, fps=100.0)), [make_pod(0)])
    assert stall.progress_limit(d) == 10 * 100 * 10.24
    fast = draft(make_job(), running_status(training=training(0, fps=1e6)), [make_pod(0)])
    assert stall.progress_limit(fast) == stall.STALL_FLOOR_SECONDS


def test_requeue_within_keeps_the_earliest_pass() -> None:
    plan = Plan(status={})
    plan.requeue_within(5.0)
    plan.requeue_within(10.0)
    assert plan.requeue_after == 5.0
    plan.requeue_within(0.0)  # due now: a zero is not "none"
    plan.requeue_within(3.0)
    assert plan.requeue_after == 0.0
