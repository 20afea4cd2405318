"""Native gang scheduling on the real control plane (Kubernetes 1.37, GenericWorkload on):
kube-scheduler's GangScheduling plugin places a job's pods all at once or not at all."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import fakenodes
import pytest
from localcluster import Cluster

from tests.operator.conftest import Jobs, wait_for
from tests.operator.test_operator_integration import small_job

pytestmark = pytest.mark.integration


@pytest.fixture
def gang_nodes(cluster: Cluster) -> Iterator[tuple[dict[str, str], Any]]:
    """Nodes of this test only (a label of its own, which its jobs select): `add(n)` adds n
    Ascend 910 servers of 8 NPUs each; they go, with their pods, when the test ends."""
    label = {"densenet-test/gang": uuid.uuid4().hex[:8]}
    added: list[str] = []

    def add(count: int) -> list[str]:
        names = [f"gang-{label['densenet-test/gang']}-{len(added) + i}" for i in range(count)]
        for name in names:
            fakenodes.add_node(cluster, name, npus=8, labels=label)
            added.append(name)
        return names

    yield label, add
    fakenodes.delete_nodes(cluster, added)


def gang_job(name: str, selector: dict[str, str], replicas: int, **spec: Any) -> dict[str, Any]:
    scheduling = {"nodeSelector": selector, **spec.pop("scheduling", {})}
    return small_job(name, replicas=replicas, devicesPerReplica=8, device={"type": "ascend"},
                     scheduling=scheduling, **spec)  # fmt: skip


def bound(jobs: Jobs, name: str) -> list[str]:
    return [p["spec"]["nodeName"] for p in jobs.live_pods(name) if p["spec"].get("nodeName")]


def test_a_gang_binds_no_pod_until_all_fit_then_all_at_once(jobs: Jobs, gang_nodes: Any) -> None:
    selector, add_nodes = gang_nodes
    add_nodes(2)  # room for two of the job's three servers
    jobs.kubectl.apply(gang_job("trio", selector, 3), "-n", jobs.namespace)

    status = jobs.wait_phase("trio", "Pending")
    status = wait_for(lambda: (s := jobs.status("trio")).get("reason") == "GangUnschedulable" and s,
                      what="the scheduler's word on the gang")  # fmt: skip
    assert len(jobs.live_pods("trio")) == 3 and bound(jobs, "trio") == []  # two would fit

    ns = ("-n", jobs.namespace)
    workload = jobs.kubectl.json("get", "workloads.scheduling.k8s.io", "trio", *ns)
    group = jobs.kubectl.json("get", "podgroups.scheduling.k8s.io", "trio-gang-0", *ns)
    # The job says what the scheduler said of the whole group.
    (said,) = [c for c in group["status"]["conditions"]
               if c["type"] == "PodGroupInitiallyScheduled"]  # fmt: skip
    assert (said["status"], said["reason"]) == ("False", "Unschedulable")
    assert status["message"] == f"gang 0 (3 pod(s)): {said['message']}"
    (condition,) = [c for c in status["conditions"] if c["type"] == "GangScheduled"]
    assert (condition["status"], condition["reason"]) == ("False", "Unschedulable")
    job_uid = jobs.get("trio")["metadata"]["uid"]
    for child in (workload, group):
        assert child["metadata"]["ownerReferences"][0]["uid"] == job_uid
    assert group["spec"]["schedulingPolicy"] == {"gang": {"minCount": 3}}
    for pod in jobs.live_pods("trio"):
        assert pod["spec"]["schedulingGroup"] == {"podGroupName": "trio-gang-0"}
    described = jobs.kubectl("describe", "dnt", "trio", *ns).stdout
    assert "GangUnschedulable" in described

    add_nodes(1)
    wait_for(lambda: len(bound(jobs, "trio")) == 3, timeout=120, what="the whole gang bound")
    assert len(set(bound(jobs, "trio"))) == 3
    jobs.wait_running_pods("trio", 3)
    status = jobs.wait_phase("trio", "Running")
    (condition,) = [c for c in status["conditions"] if c["type"] == "GangScheduled"]
    assert condition["status"] == "True"
    group = jobs.kubectl.json("get", "podgroups.scheduling.k8s.io", "trio-gang-0", *ns)
    scheduled = [c for c in group["status"]["conditions"]
                 if c["type"] == "PodGroupInitiallyScheduled"]  # fmt: skip
    assert scheduled[0]["status"] == "True"


def test_a_restarted_gang_is_a_new_pod_group_and_the_old_one_goes(
    jobs: Jobs, gang_nodes: Any
) -> None:
    selector, add_nodes = gang_nodes
    add_nodes(2)
    jobs.kubectl.apply(gang_job("again", selector, 2), "-n", jobs.namespace)
    pods = jobs.wait_running_pods("again", 2)
    jobs.set_pod_phase(pods[0]["metadata"]["name"], "Failed", exit_code=137)
    wait_for(lambda: jobs.status("again").get("restarts") == 1, what="the gang restart")
    new = wait_for(
        lambda: (p := jobs.live_pods("again")) and len(p) == 2
        and all(x["metadata"]["labels"]["training.densenet.dev/gang"] == "1" for x in p) and p,
        timeout=90, what="the second gang's pods",
    )  # fmt: skip
    assert {p["spec"]["schedulingGroup"]["podGroupName"] for p in new} == {"again-gang-1"}
    ns = ("-n", jobs.namespace)

    def groups() -> set[str]:
        items = jobs.kubectl.json("get", "podgroups.scheduling.k8s.io", *ns)["items"]
        return {g["metadata"]["name"] for g in items if g["metadata"]["name"].startswith("again-")}

    # The old group waits for its pods (the podgroup-protection finalizer), then goes.
    wait_for(lambda: groups() == {"again-gang-1"}, timeout=90, what="only the new PodGroup")
    jobs.wait_running_pods("again", 2)
    assert jobs.wait_phase("again", "Running")["restarts"] == 1


def test_scheduler_preemption_of_a_gang_is_a_disruption_and_it_comes_back(
    jobs: Jobs, gang_nodes: Any, priority_classes: tuple[str, str]
) -> None:
    selector, add_nodes = gang_nodes
    add_nodes(2)
    low, high = priority_classes
    ns = ("-n", jobs.namespace)
    jobs.kubectl.apply(gang_job("low", selector, 2, scheduling={"priorityClassName": low}), *ns)
    jobs.wait_running_pods("low", 2)
    jobs.kubectl.apply(gang_job("high", selector, 2, scheduling={"priorityClassName": high}), *ns)

    # The scheduler preempts the low gang as a unit; the operator counts a disruption.
    status = wait_for(lambda: (s := jobs.status("low")).get("disruptions") == 1 and s,
                      timeout=90, what="the low job's disruption")  # fmt: skip
    assert status["restarts"] == 1
    restarts = [e["message"] for e in jobs.kubectl.json("get", "events", *ns)["items"]
                if e["reason"] == "GangRestart"
                and e["involvedObject"]["name"] == "low"]  # fmt: skip
    # A disruption, named by the pods' DisruptionTarget reason (PreemptionByScheduler) when a
    # pass sees them terminating, or as vanished when they are gone before one does.
    assert restarts and all("was disrupted" in r and "not counted" in r for r in restarts)
    high_pods = jobs.wait_running_pods("high", 2)
    assert bound(jobs, "low") == []  # the new low gang waits, whole

    for pod in high_pods:
        jobs.set_pod_phase(pod["metadata"]["name"], "Succeeded", exit_code=0)
    jobs.wait_phase("high", "Succeeded")
    jobs.wait_running_pods("low", 2, timeout=120)
    status = jobs.wait_phase("low", "Running")
    assert (status["restarts"], status["disruptions"]) == (1, 1)  # not a failure
