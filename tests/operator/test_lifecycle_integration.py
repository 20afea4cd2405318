"""Job lifecycle and fault tolerance on the real local control plane."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.operator.conftest import Jobs, OperatorProcess, wait_for
from tests.operator.test_operator_integration import small_job

pytestmark = pytest.mark.integration
JOB_LABEL = "training.densenet.dev/job-name"


def uids(pods: list[dict[str, Any]]) -> set[str]:
    return {p["metadata"]["uid"] for p in pods}


def restart_events(jobs: Jobs, name: str) -> list[str]:
    events = jobs.kubectl.json(
        "get", "events", "-n", jobs.namespace, "--field-selector", f"involvedObject.name={name}"
    )
    return [e["message"] for e in events["items"] if e["reason"] == "GangRestart"]


def wait_new_gang(
    jobs: Jobs, name: str, old: set[str], count: int, timeout: float = 90
) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        pods = [p for p in jobs.live_pods(name) if p["metadata"]["uid"] not in old]
        running = [
            p for p in pods if p["status"].get("phase") == "Running" and p["status"].get("podIP")
        ]
        return running if len(running) == count and len(jobs.live_pods(name)) == count else None

    return wait_for(ready, timeout=timeout, what=f"a new gang of {count} pods for {name}")


def test_a_killed_pod_restarts_the_whole_gang_which_then_succeeds(jobs: Jobs) -> None:
    jobs.kubectl.apply(small_job("gang", model="densenet161", data={"path": "/data"}, device={"type": "ascend"}),
                       "-n", jobs.namespace)  # fmt: skip
    pods = jobs.wait_running_pods("gang", 2)
    first = wait_for(lambda: (t := jobs.rank_table("gang")).get("status") == "completed" and t)

    jobs.device_plugin_down()  # the new gang stays unannotated until it comes up below
    jobs.set_pod_phase(pods[1]["metadata"]["name"], "Failed", exit_code=137)  # OOM-killed
    # KWOK recreates a gang in milliseconds: the Restarting phase may be gone before a poll.
    wait_for(lambda: jobs.status("gang").get("restarts") == 1, what="the gang restart")
    assert "gang-worker-1 failed (exit code 137" in restart_events(jobs, "gang")[0]
    new_pods = wait_new_gang(jobs, "gang", uids(pods), 2)
    assert jobs.rank_table("gang")["status"] == "initializing"
    jobs.device_plugin_up()
    second = wait_for(lambda: (t := jobs.rank_table("gang")).get("status") == "completed" and t)
    ordered = sorted(new_pods, key=lambda p: p["metadata"]["name"])
    assert [s["container_ip"] for s in second["server_list"]] == [
        p["status"]["podIP"] for p in ordered
    ]
    assert first != second or uids(new_pods) != uids(pods)
    assert jobs.wait_phase("gang", "Running")["reason"] == "GangRestarted"

    for pod in new_pods:
        jobs.set_pod_phase(pod["metadata"]["name"], "Succeeded", exit_code=0)
    done = jobs.wait_phase("gang", "Succeeded")
    assert done["restarts"] == 1
    described = jobs.kubectl("describe", "dnt", "gang", "-n", jobs.namespace).stdout
    for reason in ("Creating", "GangRestart", "GangRestarted", "AllPodsSucceeded"):
        assert reason in described


def test_pods_that_keep_failing_stop_at_the_backoff_limit(jobs: Jobs) -> None:
    jobs.kubectl.apply(
        small_job("flaky", replicas=1, runPolicy={"backoffLimit": 2}), "-n", jobs.namespace
    )
    seen: set[str] = set()
    for attempt in range(3):
        pods = wait_new_gang(jobs, "flaky", seen, 1)
        seen |= uids(pods)
        jobs.set_pod_phase(pods[0]["metadata"]["name"], "Failed", exit_code=143)
        if attempt < 2:
            wait_for(
                lambda a=attempt: jobs.status("flaky").get("restarts") == a + 1,
                what=f"restart {attempt + 1}",
            )
    status = jobs.wait_phase("flaky", "Failed")
    assert status["reason"] == "BackoffLimitExceeded"
    assert (
        status["message"]
        == "pod flaky-worker-0 failed (exit code 143, Error); restarts: 2, backoffLimit: 2"
    )


def test_losing_a_node_restarts_the_job_onto_the_remaining_capacity(
    jobs: Jobs, cluster: Any
) -> None:
    import localcluster

    node = localcluster.add_node(cluster, "ascend-spare")
    try:
        jobs.kubectl.apply(
            small_job("nodeloss", replicas=1, scheduling={"nodeSelector": {"kubernetes.io/hostname": "ascend-spare"}}),
            "-n", jobs.namespace,
        )  # fmt: skip
        (pod,) = jobs.wait_running_pods("nodeloss", 1)
        assert pod["spec"]["nodeName"] == "ascend-spare"
        # Move the job's constraint away first so that the replacement can land elsewhere.
        jobs.kubectl("patch", "dnt", "nodeloss", "-n", jobs.namespace, "--type=json", "-p",
                     json.dumps([{"op": "remove", "path": "/spec/scheduling/nodeSelector"}]))  # fmt: skip
        localcluster.delete_node(cluster, node)
        status = wait_for(lambda: (s := jobs.status("nodeloss")).get("restarts", 0) >= 1 and s, timeout=120,
                          what="the restart after the node loss")  # fmt: skip
        assert status["restarts"] == 1
        restart = restart_events(jobs, "nodeloss")
        # A lost node is a disruption: the gang restarts, the backoff budget is untouched.
        assert restart and "pod nodeloss-worker-0 was disrupted" in restart[0]
        assert status["disruptions"] == 1
        (new_pod,) = wait_new_gang(jobs, "nodeloss", {pod["metadata"]["uid"]}, 1, timeout=120)
        assert new_pod["spec"]["nodeName"] != "ascend-spare"
    finally:
        localcluster.delete_node(cluster, "ascend-spare", wait=False)


def test_an_operator_killed_mid_creation_finishes_without_duplicates(
    jobs: Jobs, operator: OperatorProcess
) -> None:
    # A quota of two pods stops the operator half-way through a four-pod gang.
    jobs.kubectl.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "two-pods"},
                        "spec": {"hard": {"pods": "2"}}}, "-n", jobs.namespace)  # fmt: skip
    # One NPU per pod: the gang must not depend on the whole test cluster being free.
    jobs.kubectl.apply(small_job("half", replicas=4, devicesPerReplica=1), "-n", jobs.namespace)
    wait_for(lambda: len(jobs.pods("half")) == 2, what="two of four pods")
    operator.kill()
    try:
        jobs.kubectl("delete", "resourcequota", "two-pods", "-n", jobs.namespace)
        time.sleep(1)
        assert len(jobs.pods("half")) == 2  # nobody else creates them
    finally:
        operator.start()
    jobs.wait_running_pods("half", 4)
    ns = jobs.namespace
    selector = f"{JOB_LABEL}=half"
    assert len(jobs.pods("half")) == 4
    for kind in ("configmap", "serviceaccount", "role", "rolebinding", "service"):
        assert len(jobs.kubectl.json("get", kind, "-n", ns, "-l", selector)["items"]) == 1, kind
    status = jobs.wait_phase("half", "Running")
    assert status.get("restarts", 0) == 0


def test_an_operator_killed_mid_restart_counts_one_restart(
    jobs: Jobs, operator: OperatorProcess
) -> None:
    jobs.kubectl.apply(small_job("midrestart", replicas=2), "-n", jobs.namespace)
    pods = jobs.wait_running_pods("midrestart", 2)
    jobs.wait_phase("midrestart", "Running")
    jobs.set_pod_phase(pods[0]["metadata"]["name"], "Failed", exit_code=137)
    wait_for(
        lambda: jobs.status("midrestart").get("restarts") == 1, interval=0.02, what="the restart"
    )
    operator.kill()
    operator.start()
    new_pods = wait_new_gang(jobs, "midrestart", uids(pods), 2)
    assert len(new_pods) == 2
    assert jobs.wait_phase("midrestart", "Running")["restarts"] == 1
    assert len(jobs.live_pods("midrestart")) == 2


def test_a_finished_job_is_not_rerun_after_an_operator_restart(
    jobs: Jobs, operator: OperatorProcess
) -> None:
    jobs.kubectl.apply(
        small_job("finished", replicas=1, runPolicy={"cleanPodPolicy": "All"}), "-n", jobs.namespace
    )
    (pod,) = jobs.wait_running_pods("finished", 1)
    jobs.set_pod_phase(pod["metadata"]["name"], "Succeeded", exit_code=0)
    jobs.wait_phase("finished", "Succeeded")
    wait_for(lambda: not jobs.pods("finished"), what="cleanPodPolicy All to delete the pod")
    operator.kill()
    operator.start()
    time.sleep(2)
    assert jobs.pods("finished") == []
    assert jobs.status("finished")["phase"] == "Succeeded"


def test_suspend_deletes_the_pods_and_resume_brings_the_gang_back(jobs: Jobs) -> None:
    jobs.kubectl.apply(small_job("pause", replicas=2), "-n", jobs.namespace)
    pods = jobs.wait_running_pods("pause", 2)
    jobs.kubectl("patch", "dnt", "pause", "-n", jobs.namespace, "--type=merge", "-p",
                 '{"spec": {"runPolicy": {"suspend": true}}}')  # fmt: skip
    status = jobs.wait_phase("pause", "Suspended")
    assert status["reason"] == "Suspended"
    wait_for(lambda: not jobs.live_pods("pause"), what="the pods to go")
    jobs.kubectl("patch", "dnt", "pause", "-n", jobs.namespace, "--type=merge", "-p",
                 '{"spec": {"runPolicy": {"suspend": false}}}')  # fmt: skip
    wait_new_gang(jobs, "pause", uids(pods), 2)
    assert jobs.wait_phase("pause", "Running").get("restarts", 0) == 0


def test_active_deadline_fails_the_job(jobs: Jobs) -> None:
    jobs.kubectl.apply(
        small_job("slow", replicas=1, runPolicy={"activeDeadlineSeconds": 3}), "-n", jobs.namespace
    )
    jobs.wait_running_pods("slow", 1)
    status = jobs.wait_phase("slow", "Failed", timeout=20)
    assert status["reason"] == "DeadlineExceeded"
    wait_for(lambda: not jobs.live_pods("slow"), what="the running pod to be cleaned up")


def test_ttl_deletes_the_finished_job_on_time(jobs: Jobs) -> None:
    jobs.kubectl.apply(
        small_job("short", replicas=1, runPolicy={"ttlSecondsAfterFinished": 2}),
        "-n",
        jobs.namespace,
    )
    (pod,) = jobs.wait_running_pods("short", 1)
    jobs.set_pod_phase(pod["metadata"]["name"], "Succeeded", exit_code=0)
    jobs.wait_phase("short", "Succeeded")
    finished = time.monotonic()
    wait_for(lambda: jobs.kubectl("get", "dnt", "short", "-n", jobs.namespace, check=False).returncode != 0,
             timeout=30, what="the TTL deletion")  # fmt: skip
    assert time.monotonic() - finished < 15  # on time, not at a resync hours later


@pytest.mark.parametrize(
    ("policy", "left"),
    [("All", []), ("Running", ["pol-worker-0"]), ("None", ["pol-worker-0", "pol-worker-1"])],
)
def test_clean_pod_policy_decides_which_pods_remain(
    jobs: Jobs, policy: str, left: list[str]
) -> None:
    jobs.kubectl.apply(
        small_job("pol", replicas=2, runPolicy={"cleanPodPolicy": policy}), "-n", jobs.namespace
    )
    pods = jobs.wait_running_pods("pol", 2)
    jobs.set_pod_phase(
        pods[0]["metadata"]["name"], "Failed", exit_code=1
    )  # permanent: the job fails
    jobs.wait_phase("pol", "Failed")
    wait_for(lambda: sorted(p["metadata"]["name"] for p in jobs.live_pods("pol")) == left,
             what=f"pods left under cleanPodPolicy {policy}")  # fmt: skip
    time.sleep(1)
    assert sorted(p["metadata"]["name"] for p in jobs.live_pods("pol")) == left


def test_deleting_the_job_removes_everything_it_owns(jobs: Jobs) -> None:
    jobs.kubectl.apply(small_job("gone", replicas=2), "-n", jobs.namespace)
    jobs.wait_running_pods("gone", 2)
    jobs.kubectl("delete", "dnt", "gone", "-n", jobs.namespace)
    selector = f"{JOB_LABEL}=gone"
    for kind in ("pods", "configmap", "serviceaccount", "role", "rolebinding", "service"):
        wait_for(lambda k=kind: not jobs.kubectl.json("get", k, "-n", jobs.namespace, "-l", selector)["items"],
                 timeout=60, what=f"garbage collection of {kind}")  # fmt: skip


def test_volcano_jobs_get_a_pod_group(jobs: Jobs, kubectl: Any) -> None:
    kubectl.apply({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "podgroups.scheduling.volcano.sh"},
        "spec": {"group": "scheduling.volcano.sh", "scope": "Namespaced",
                 "names": {"kind": "PodGroup", "plural": "podgroups", "singular": "podgroup"},
                 "versions": [{"name": "v1beta1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
    })  # fmt: skip
    kubectl("wait", "--for=condition=Established", "crd/podgroups.scheduling.volcano.sh")
    jobs.kubectl.apply(small_job("gangsched", replicas=2, scheduling={"schedulerName": "volcano", "queue": "npu"}),
                       "-n", jobs.namespace)  # fmt: skip
    group = wait_for(lambda: (r := jobs.kubectl("get", "podgroups.scheduling.volcano.sh", "gangsched", "-n", jobs.namespace, "-o", "json",
                                                check=False)).returncode == 0 and json.loads(r.stdout))  # fmt: skip
    assert group["spec"]["minMember"] == 2
    assert group["spec"]["minResources"] == {"huawei.com/Ascend910": "16"}
    pods = wait_for(lambda: len(p := jobs.pods("gangsched")) == 2 and p)
    for pod in pods:
        assert pod["spec"]["schedulerName"] == "volcano"
        assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "gangsched"
