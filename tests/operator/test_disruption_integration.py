"""Disruptions restart the gang without spending the backoff budget; a hung gang is detected
(issue: no lost work, no wasted retries), on the local cluster."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from kubelet import set_pod_phase

from tests.operator.conftest import Jobs, wait_for
from tests.operator.test_operator_integration import small_job

pytestmark = pytest.mark.integration


def counts(jobs: Jobs, name: str) -> tuple[int, int]:
    status = jobs.status(name)
    return status.get("restarts", 0), status.get("disruptions", 0)


def restarted(jobs: Jobs, name: str, expected: tuple[int, int]) -> None:
    wait_for(lambda: counts(jobs, name) == expected, timeout=90, what=f"{name} at {expected}")


def test_a_pod_the_control_plane_disrupts_restarts_the_gang_uncounted(jobs: Jobs) -> None:
    jobs.kubectl.apply(small_job("preempt", replicas=1, runPolicy={"backoffLimit": 0}),
                       "-n", jobs.namespace)  # fmt: skip
    (pod,) = jobs.wait_running_pods("preempt", 1)
    jobs.wait_phase("preempt", "Running")
    # What the scheduler does to a pod it preempts: the condition, then the kill.
    condition = {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                 "message": "preempted by a higher-priority job"}  # fmt: skip
    set_pod_phase(jobs.kubectl, jobs.namespace, pod["metadata"]["name"], "Failed",
                  exit_code=137, condition=condition)  # fmt: skip
    restarted(jobs, "preempt", (1, 1))  # backoffLimit 0, and still not Failed
    assert jobs.wait_phase("preempt", "Running", timeout=60)["reason"] == "GangRestarted"


def test_a_deleted_pod_and_a_graceful_stop_are_disruptions(jobs: Jobs) -> None:
    jobs.kubectl.apply(small_job("stop", replicas=1, runPolicy={"backoffLimit": 0}),
                       "-n", jobs.namespace)  # fmt: skip
    (pod,) = jobs.wait_running_pods("stop", 1)
    jobs.wait_phase("stop", "Running")
    jobs.kubectl("delete", "pod", pod["metadata"]["name"], "-n", jobs.namespace, "--wait=false")
    restarted(jobs, "stop", (1, 1))
    (pod,) = jobs.wait_running_pods("stop", 1, timeout=60)
    jobs.wait_phase("stop", "Running")
    jobs.set_pod_phase(pod["metadata"]["name"], "Failed", exit_code=75)  # the trainer's stop
    restarted(jobs, "stop", (2, 2))


def test_a_drained_node_restarts_the_gang_uncounted(jobs: Jobs, cluster: Any) -> None:
    import localcluster

    node = localcluster.add_node(cluster, "ascend-drain")
    try:
        jobs.kubectl.apply(small_job("drain", replicas=1, runPolicy={"backoffLimit": 0},
                                     scheduling={"nodeSelector": {"kubernetes.io/hostname": node}}),
                           "-n", jobs.namespace)  # fmt: skip
        jobs.wait_running_pods("drain", 1)
        jobs.kubectl("patch", "dnt", "drain", "-n", jobs.namespace, "--type=json", "-p",
                     json.dumps([{"op": "remove", "path": "/spec/scheduling/nodeSelector"}]))  # fmt: skip
        jobs.kubectl("drain", node, "--ignore-daemonsets", "--delete-emptydir-data",
                     "--timeout=60s", timeout=90)  # fmt: skip
        restarted(jobs, "drain", (1, 1))
        (new,) = jobs.wait_running_pods("drain", 1, timeout=60)
        assert new["spec"]["nodeName"] != node
    finally:
        localcluster.delete_node(cluster, "ascend-drain", wait=False)


def test_a_crash_of_the_user_s_code_still_fails_the_job(jobs: Jobs) -> None:
    jobs.kubectl.apply(small_job("crash", replicas=1), "-n", jobs.namespace)
    (pod,) = jobs.wait_running_pods("crash", 1)
    jobs.set_pod_phase(pod["metadata"]["name"], "Failed", exit_code=1)
    status = jobs.wait_phase("crash", "Failed")
    assert status["reason"] == "PermanentFailure" and status.get("disruptions", 0) == 0


def test_a_gang_whose_progress_stops_is_flagged_and_restarted(jobs: Jobs) -> None:
    policy = {"progressDeadlineSeconds": 3, "onStall": "RestartAsDisruption"}
    jobs.kubectl.apply(small_job("hung", replicas=1, runPolicy=policy), "-n", jobs.namespace)
    jobs.wait_running_pods("hung", 1)
    jobs.wait_phase("hung", "Running")
    # The trainer's last report: training at step 42, then silence (a collective hung).
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    report = {"activity": "training", "step": 42, "fps": 100.0, "updated": now}
    jobs.kubectl("patch", "dnt", "hung", "-n", jobs.namespace, "--subresource=status",
                 "--type=merge", "-p", json.dumps({"status": {"training": report}}))  # fmt: skip
    restarted(jobs, "hung", (1, 1))
    events = jobs.kubectl.json("get", "events", "-n", jobs.namespace,
                               "--field-selector", "involvedObject.name=hung")["items"]  # fmt: skip
    stalled = [e["message"] for e in events if e["reason"] == "Stalled"]
    assert stalled and stalled[0].startswith("no training progress reported for ")
    assert "(limit 3 s; last step 42)" in stalled[0]
