import datetime as dt

import pytest

from densenet_operator import lifecycle
from densenet_operator.ascend import ranktable
from densenet_operator.podrecord import PodRecord
from tests.operator.factories import make_job, make_pod

NOW = dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.UTC)
COMPLETED_TABLE = '{"status":"completed"}'
INITIALIZING = ranktable.dumps(ranktable.initializing_table())


def plan(job, status=None, pods=(), now=NOW, table=INITIALIZING):
    return lifecycle.plan(job, status or {}, [PodRecord.from_pod(p) for p in pods], now, table)


def running(job, replicas, gang=0, **kw):
    return [
        make_pod(i, gang=gang, devices=job.spec.devices_per_replica, **kw) for i in range(replicas)
    ]


def test_new_job_creates_every_pod_and_waits_for_them():
    job = make_job(replicas=2)
    result = plan(job)
    assert result.create == [0, 1]
    assert result.status["phase"] == "Pending"
    assert result.status["startTime"] == "2026-11-22T12:00:00Z"
    assert result.status["worldSize"] == 16
    assert result.status["rankTable"]["status"] == "initializing"
    assert result.status["rankTable"]["waitingFor"] == [
        "dn161-worker-0: does not exist yet",
        "dn161-worker-1: does not exist yet",
    ]
    assert result.rank_table is None  # the ConfigMap already says initializing
    assert [e.reason for e in result.events] == ["Creating"]


def test_running_gang_with_annotations_publishes_the_table_once():
    job = make_job(replicas=2)
    status = plan(job).status
    result = plan(job, status, running(job, 2))
    assert result.status["phase"] == "Running"
    assert result.create == [] and result.delete == []
    table = ranktable.build_rank_table(
        [PodRecord.from_pod(p) for p in running(job, 2)], replicas=2, devices_per_replica=8
    )
    assert result.rank_table == ranktable.dumps(table)
    assert result.status["rankTable"] == {
        "status": "completed",
        "waitingFor": [],
        "ranks": 16,
        "message": "16 rank(s) on 2 server(s)",
    }
    assert {"RankTableCompleted", "AllPodsRunning"} <= {e.reason for e in result.events}
    again = plan(job, result.status, running(job, 2), table=result.rank_table)
    assert again.rank_table is None and again.events == []


def test_table_waits_for_the_device_plugin_and_says_which_pod():
    job = make_job(replicas=2)
    pods = [make_pod(0), make_pod(1, annotation=None)]
    result = plan(job, {"phase": "Running", "startTime": "2026-11-22T11:00:00Z"}, pods)
    assert result.rank_table is None
    assert result.status["rankTable"]["status"] == "initializing"
    assert (
        "dn161-worker-1: has no ascend-910-configuration annotation"
        in result.status["rankTable"]["message"]
    )


def test_retryable_failure_restarts_the_whole_gang_and_resets_the_table():
    job = make_job(replicas=2)
    pods = [make_pod(0), make_pod(1, phase="Failed", exit_code=137)]
    result = plan(job, {"phase": "Running", "restarts": 0}, pods, table=COMPLETED_TABLE)
    assert result.status["restarts"] == 1
    assert result.status["phase"] == "Restarting"
    assert sorted(result.delete) == ["dn161-worker-0", "dn161-worker-1"]
    assert result.create == []
    assert result.rank_table == INITIALIZING
    assert "pod dn161-worker-1 failed (exit code 137" in result.status["message"]
    assert result.events[0].type == "Warning"


def test_restart_waits_for_old_pods_then_creates_the_new_gang():
    job = make_job(replicas=2)
    status = {"phase": "Restarting", "restarts": 1, "reason": "GangRestart"}
    terminating = [make_pod(i, gang=0, terminating=True) for i in range(2)]
    assert plan(job, status, terminating).create == []
    result = plan(job, status, [])
    assert result.create == [0, 1]
    assert result.status["phase"] == "Restarting"
    new_gang = plan(job, status, running(job, 2, gang=1))
    assert new_gang.status["phase"] == "Running"
    assert new_gang.status["reason"] == "GangRestarted"
    steady = plan(job, new_gang.status, running(job, 2, gang=1), table=new_gang.rank_table)
    assert steady.status["reason"] == "GangRestarted" and steady.events == []


def test_pods_of_an_old_gang_are_deleted_not_counted():
    job = make_job(replicas=1)
    result = plan(job, {"phase": "Restarting", "restarts": 2}, [make_pod(0, gang=1)])
    assert result.delete == ["dn161-worker-0"]
    assert result.create == []  # its name is still taken


def test_permanent_exit_code_fails_at_once():
    job = make_job(replicas=2)
    pods = [make_pod(0), make_pod(1, phase="Failed", exit_code=1)]
    result = plan(job, {"phase": "Running"}, pods)
    assert result.status["phase"] == "Failed"
    assert result.status["reason"] == "PermanentFailure"
    assert result.status["restarts"] == 0
    assert "pod dn161-worker-1 failed (exit code 1" in result.status["message"]
    assert result.delete == ["dn161-worker-0"]  # cleanPodPolicy Running: the still-running pod


def test_listed_exit_code_is_retryable():
    job = make_job(runPolicy={"retryableExitCodes": [3]})
    result = plan(job, {"phase": "Running"}, [make_pod(0, phase="Failed", exit_code=3)])
    assert result.status["phase"] == "Restarting"


def test_backoff_limit_fails_with_a_reason_naming_pod_code_and_count():
    job = make_job(runPolicy={"backoffLimit": 2})
    result = plan(
        job,
        {"phase": "Running", "restarts": 2},
        [make_pod(0, phase="Failed", exit_code=139, gang=2)],
    )
    assert result.status["phase"] == "Failed"
    assert result.status["reason"] == "BackoffLimitExceeded"
    assert result.status["message"] == (
        "pod dn161-worker-0 failed (exit code 139, Error); restarts: 2, backoffLimit: 2"
    )


@pytest.mark.parametrize(
    ("policy", "code", "reason", "retryable"),
    [
        ("ExitCode", 1, None, False),
        ("ExitCode", 127, None, False),
        ("ExitCode", 137, None, True),
        ("ExitCode", 143, None, True),
        ("ExitCode", 1, "Evicted", True),
        ("ExitCode", None, None, True),
        ("OnFailure", 1, None, True),
        ("Never", 137, None, False),
    ],
)
def test_exit_code_policy(policy, code, reason, retryable):
    job = make_job(runPolicy={"restartPolicy": policy})
    pod = PodRecord.from_pod(make_pod(0, phase="Failed", exit_code=code, reason=reason))
    assert lifecycle.classify_failure(pod, job.spec.run_policy).retryable is retryable


def test_a_pod_that_vanishes_from_a_running_gang_restarts_it():
    job = make_job(replicas=2)
    result = plan(job, {"phase": "Running"}, [make_pod(0)])
    assert result.status["phase"] == "Restarting"
    assert (
        "pod dn161-worker-1 was disrupted (no exit code, pod disappeared"
        in result.status["message"]
    )
    # A disruption: the gang restarts, the backoff budget is untouched.
    assert (result.status["restarts"], result.status["disruptions"]) == (1, 1)


def test_operator_restart_mid_creation_completes_the_gang_without_a_restart():
    job = make_job(replicas=4)
    status = plan(job).status
    result = plan(job, status, running(job, 2))
    assert result.create == [2, 3]
    assert result.status["restarts"] == 0
    assert result.status["phase"] == "Pending"


def test_success_and_no_rerun_after_finishing():
    job = make_job(replicas=2)
    done = plan(job, {"phase": "Running"}, running(job, 2, phase="Succeeded"))
    assert done.status["phase"] == "Succeeded"
    assert done.status["completionTime"] == "2026-11-22T12:00:00Z"
    assert done.delete == []
    assert plan(job, done.status, []).create == []


@pytest.mark.parametrize(
    ("policy", "deleted"),
    [("All", ["dn161-worker-0", "dn161-worker-1"]), ("Running", ["dn161-worker-1"]), ("None", [])],
)
def test_clean_pod_policy_after_finishing(policy, deleted):
    job = make_job(replicas=2, runPolicy={"cleanPodPolicy": policy})
    pods = [make_pod(0, phase="Failed", exit_code=1), make_pod(1, phase="Running")]
    result = plan(job, {"phase": "Failed", "completionTime": "2026-11-22T11:00:00Z"}, pods)
    assert sorted(result.delete) == deleted


def test_ttl_deletes_on_time_and_requeues_until_then():
    job = make_job(runPolicy={"ttlSecondsAfterFinished": 60})
    status = {"phase": "Succeeded", "completionTime": "2026-11-22T11:59:30Z"}
    early = plan(job, status)
    assert early.delete_job is False and early.requeue_after == 30.0
    late = plan(job, status, now=NOW + dt.timedelta(seconds=31))
    assert late.delete_job is True


def test_active_deadline_fails_a_job_that_runs_too_long():
    job = make_job(runPolicy={"activeDeadlineSeconds": 600})
    status = {"phase": "Running", "startTime": "2026-11-22T11:50:01Z"}
    assert plan(job, status, running(job, 1)).requeue_after == 1.0
    status["startTime"] = "2026-11-22T11:50:00Z"
    result = plan(job, status, running(job, 1))
    assert result.status["phase"] == "Failed"
    assert result.status["reason"] == "DeadlineExceeded"
    assert result.delete == ["dn161-worker-0"]


def test_suspend_and_resume_keep_the_job_and_its_restarts():
    job = make_job(replicas=2, runPolicy={"suspend": True})
    status = {"phase": "Running", "restarts": 1, "startTime": "2026-11-22T11:00:00Z"}
    suspended = plan(job, status, running(job, 2, gang=1), table=COMPLETED_TABLE)
    assert suspended.status["phase"] == "Suspended"
    assert sorted(suspended.delete) == ["dn161-worker-0", "dn161-worker-1"]
    assert "startTime" not in suspended.status
    assert suspended.rank_table == INITIALIZING
    resumed_job = make_job(replicas=2, runPolicy={"suspend": False})
    resumed = plan(resumed_job, suspended.status, [])
    assert resumed.status["phase"] == "Pending"
    assert resumed.create == [0, 1]
    assert resumed.status["restarts"] == 1
    assert "Resumed" in [e.reason for e in resumed.events]


def test_unschedulable_pods_give_the_reason():
    job = make_job()
    pod = make_pod(0, phase="Pending", pod_ip=None)
    pod["status"]["conditions"] = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/4 nodes are available: 4 Insufficient huawei.com/Ascend910.",
        }
    ]
    result = plan(job, {"phase": "Pending"}, [pod])
    assert result.status["reason"] == "Unschedulable"
    assert "Insufficient huawei.com/Ascend910" in result.status["message"]


def test_cpu_jobs_have_no_rank_table():
    job = make_job(device={"type": "cpu"}, devicesPerReplica=2, replicas=2)
    result = plan(job, {}, running(job, 2, annotation=None))
    assert "rankTable" not in result.status
    assert result.rank_table is None


def test_conditions_keep_transition_time_until_the_status_flips():
    job = make_job()
    first = plan(job)
    later = plan(
        job,
        first.status,
        [make_pod(0, phase="Pending", pod_ip=None)],
        now=NOW + dt.timedelta(minutes=5),
    )
    pending = next(c for c in later.status["conditions"] if c["type"] == "Pending")
    assert pending["lastTransitionTime"] == "2026-11-22T12:00:00Z"
