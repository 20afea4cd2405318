"""Queued jobs on the real control plane with the real Kueue v0.17 (hack/kueue.py): quota,
admission in turn, preemption as a disruption, quota given back, and topology (TAS)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import fakenodes
import kueue as local_kueue
import pytest
from localcluster import Cluster
from testsupport import Kubectl

from tests.operator.conftest import Jobs, wait_for
from tests.operator.test_operator_integration import small_job

pytestmark = pytest.mark.integration
KUEUE_API = "kueue.x-k8s.io/v1beta2"
NPU = "huawei.com/Ascend910"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
SUPER_POD_LABEL = "huawei.com/topotree.superpodid"


def _active(kubectl: Kubectl, kind: str, *where: str) -> bool:
    found = kubectl.json("get", kind, *where)
    conditions = (found.get("status") or {}).get("conditions") or ()
    return any(c["type"] == "Active" and c["status"] == "True" for c in conditions)


class Queue:
    """A LocalQueue on a ClusterQueue of its own, whose flavor keeps its pods on its own nodes."""

    def __init__(self, cluster: Cluster, kubectl: Kubectl, namespace: str) -> None:
        self.cluster, self.kubectl, self.namespace = cluster, kubectl, namespace
        self.suffix = uuid.uuid4().hex[:6]
        self.node_label = {"densenet-test/queue": self.suffix}
        self.nodes: list[str] = []
        self.cluster_scoped: list[tuple[str, str]] = []

    def add_nodes(self, count: int, product: str = "910", **options: Any) -> list[str]:
        names = [f"q{self.suffix}-{len(self.nodes) + i}" for i in range(count)]
        for index, name in enumerate(names, start=len(self.nodes)):
            place = fakenodes.super_pod_place(index, options["super_pod_size"]) if options else None
            manifest = fakenodes.node_manifest(
                name, fakenodes.free_slot([s for n in fakenodes.list_nodes(self.cluster)
                                           if (s := fakenodes.node_slot(n)) is not None]),
                product=product, labels=self.node_label,
                **({"super_pod_id": place[0], "server_index": place[1]} if place else {}),
            )  # fmt: skip
            self.kubectl("create", "-f", "-", input=manifest)
            self.nodes.append(name)
        fakenodes.wait_nodes_ready(self.cluster, names)
        return names

    def create(self, npus: int, *, topology: str | None = None, preempt: bool = False) -> str:
        """The queue (named `npu`): a ClusterQueue of `npus` NPUs on this queue's nodes, TAS by
        `topology` (a node label) when given, lower priorities preempted when `preempt`."""
        flavor, cluster_queue = f"flavor-{self.suffix}", f"cq-{self.suffix}"
        objects: list[dict[str, Any]] = []
        flavor_spec: dict[str, Any] = {"nodeLabels": self.node_label}
        if topology:
            name = f"topo-{self.suffix}"
            objects.append({"apiVersion": KUEUE_API, "kind": "Topology", "metadata": {"name": name},
                            "spec": {"levels": [{"nodeLabel": topology},
                                                {"nodeLabel": "kubernetes.io/hostname"}]}})  # fmt: skip
            flavor_spec["topologyName"] = name
            self.cluster_scoped.append(("topology", name))
        resources = [
            ("cpu", "1000"),
            ("memory", "4Ti"),
            ("ephemeral-storage", "100Ti"),
            (NPU, str(npus)),
        ]
        queue_spec: dict[str, Any] = {"namespaceSelector": {}, "resourceGroups": [{
            "coveredResources": [r for r, _ in resources],
            "flavors": [{"name": flavor, "resources": [
                {"name": r, "nominalQuota": q} for r, q in resources]}]}]}  # fmt: skip
        if preempt:
            queue_spec["preemption"] = {"withinClusterQueue": "LowerPriority"}
        objects += [
            {"apiVersion": KUEUE_API, "kind": "ResourceFlavor", "metadata": {"name": flavor},
             "spec": flavor_spec},
            {"apiVersion": KUEUE_API, "kind": "ClusterQueue", "metadata": {"name": cluster_queue},
             "spec": queue_spec},
            {"apiVersion": KUEUE_API, "kind": "LocalQueue",
             "metadata": {"name": "npu", "namespace": self.namespace},
             "spec": {"clusterQueue": cluster_queue}},
        ]  # fmt: skip
        self.cluster_scoped += [("clusterqueue", cluster_queue), ("resourceflavor", flavor)]
        self.kubectl.apply(objects)
        wait_for(lambda: _active(self.kubectl, "clusterqueue", cluster_queue), 30,
                 what="the ClusterQueue active")  # fmt: skip
        wait_for(lambda: _active(self.kubectl, "localqueue", "npu", "-n", self.namespace), 30,
                 what="the LocalQueue active")  # fmt: skip
        return "npu"

    def close(self) -> None:
        # The jobs first (the operator gives their quota back), then whatever Kueue still holds.
        self.kubectl("delete", "dnt", "--all", "-n", self.namespace, "--wait=true")
        local_kueue.release_namespace(self.kubectl, self.namespace)
        wait_for(lambda: not self.kubectl.json("get", "pods", "-n", self.namespace)["items"], 90,
                 what="the namespace's pods gone")  # fmt: skip
        for kind, name in self.cluster_scoped:
            self.kubectl("delete", kind, name, "--wait=false", check=False)
        fakenodes.delete_nodes(self.cluster, self.nodes)


@pytest.fixture
def queue(cluster: Cluster, kubectl: Kubectl, namespace: str, jobs: Jobs) -> Iterator[Queue]:
    if cluster.workdir is None and not local_kueue.webhooks_answer(kubectl):
        pytest.skip("an external cluster without Kueue")
    if cluster.workdir is not None:
        local_kueue.ensure(cluster.workdir, kubectl)
    kubectl("label", "namespace", namespace, f"{local_kueue.MANAGED_NAMESPACE_LABEL}=true")
    made = Queue(cluster, kubectl, namespace)
    yield made
    made.close()


def queued_job(
    name: str, replicas: int = 2, priority: str | None = None, **spec: Any
) -> dict[str, Any]:
    spec = {"devicesPerReplica": 8, "device": {"type": "ascend"}, **spec}
    job = small_job(name, replicas=replicas, **spec)
    job["metadata"]["labels"] = {QUEUE_LABEL: "npu"}
    if priority:
        job["spec"]["scheduling"] = {
            **job["spec"].get("scheduling", {}),
            "priorityClassName": priority,
        }
    return job


def bound(jobs: Jobs, name: str) -> list[str]:
    return [p["spec"]["nodeName"] for p in jobs.live_pods(name) if p["spec"].get("nodeName")]


def finish(jobs: Jobs, name: str) -> None:
    for pod in jobs.live_pods(name):
        jobs.set_pod_phase(pod["metadata"]["name"], "Succeeded", exit_code=0)
    jobs.wait_phase(name, "Succeeded")


def test_two_jobs_on_a_queue_with_room_for_one_run_in_turn(jobs: Jobs, queue: Queue) -> None:
    queue.add_nodes(4)  # nodes for both: only the quota holds the second back
    queue.create(npus=16)
    ns = ("-n", jobs.namespace)
    jobs.kubectl.apply(queued_job("first"), *ns)
    jobs.wait_running_pods("first", 2)
    jobs.kubectl.apply(queued_job("second"), *ns)

    status = wait_for(lambda: (s := jobs.status("second")).get("phase") == "Queued"
                      and "insufficient" in s.get("message", "") and s,
                      timeout=60, what="the second job queued, with Kueue's word")  # fmt: skip
    assert status["message"].startswith("LocalQueue npu: ")
    assert len(jobs.live_pods("second")) == 2 and bound(jobs, "second") == []
    for pod in jobs.live_pods("second"):
        assert "kueue.x-k8s.io/admission" in [g["name"] for g in pod["spec"]["schedulingGates"]]
        assert pod["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"].startswith("second-")
    table = jobs.kubectl("get", "dnt", *ns).stdout
    row = next(line.split() for line in table.splitlines() if line.startswith("second "))
    assert row[1:3] == ["Queued", "npu"]  # PHASE, QUEUE

    finish(jobs, "first")  # Kueue finishes the group: its quota goes to the next
    jobs.wait_running_pods("second", 2, timeout=90)
    assert jobs.wait_phase("second", "Running")["restarts"] == 0


def test_a_failed_or_deleted_job_gives_its_quota_back(jobs: Jobs, queue: Queue) -> None:
    queue.add_nodes(4)
    queue.create(npus=16)
    ns = ("-n", jobs.namespace)
    jobs.kubectl.apply(queued_job("fails", runPolicy={"restartPolicy": "Never"}), *ns)
    pods = jobs.wait_running_pods("fails", 2)
    jobs.kubectl.apply(queued_job("waits"), *ns)
    jobs.wait_phase("waits", "Queued")
    jobs.set_pod_phase(pods[0]["metadata"]["name"], "Failed", exit_code=1)
    jobs.wait_phase("fails", "Failed")
    jobs.wait_running_pods("waits", 2, timeout=90)  # the failed job's quota was given back

    jobs.kubectl.apply(queued_job("third"), *ns)
    jobs.wait_phase("third", "Queued")
    jobs.kubectl("delete", "dnt", "waits", *ns)  # deleted while running: its pods and quota go
    jobs.wait_running_pods("third", 2, timeout=90)
    wait_for(lambda: not jobs.pods("waits"), timeout=90, what="the deleted job's pods gone")


def test_kueue_preemption_is_a_disruption_and_the_job_queues_again(
    jobs: Jobs, queue: Queue, priority_classes: tuple[str, str]
) -> None:
    queue.add_nodes(4)
    queue.create(npus=16, preempt=True)
    low, high = priority_classes
    ns = ("-n", jobs.namespace)
    jobs.kubectl.apply(queued_job("low", priority=low), *ns)
    first = jobs.wait_running_pods("low", 2)
    jobs.kubectl.apply(queued_job("high", priority=high), *ns)

    status = wait_for(lambda: (s := jobs.status("low")).get("disruptions", 0) >= 1 and s,
                      timeout=90, what="the low job's disruption")  # fmt: skip
    jobs.wait_running_pods("high", 2, timeout=90)
    queued = jobs.wait_phase("low", "Queued", timeout=90)
    assert queued["message"].startswith("LocalQueue npu: ")
    assert queued["restarts"] == queued["disruptions"] >= 1  # disruptions only, no failure
    events = jobs.kubectl.json("get", "events", *ns)["items"]
    restarts = [e["message"] for e in events
                if e["reason"] == "GangRestart" and e["involvedObject"]["name"] == "low"]  # fmt: skip
    # A disruption, named by the pods' TerminationTarget reason (WorkloadEvictedDueToPreempted)
    # when a pass sees them terminating, or as vanished when they are gone before one does.
    assert restarts and all("was disrupted" in r and "not counted" in r for r in restarts)
    # The new generation waits, gated, under names of its own (the old pods linger).
    gang = queued["restarts"]
    again = wait_for(lambda: (p := jobs.live_pods("low")) and {x["metadata"]["name"] for x in p}
                     == {f"low-worker-0-g{gang}", f"low-worker-1-g{gang}"} and p,
                     timeout=30, what="the next generation's pods")  # fmt: skip
    assert not {p["metadata"]["uid"] for p in again} & {p["metadata"]["uid"] for p in first}
    assert bound(jobs, "low") == []

    finish(jobs, "high")
    jobs.wait_running_pods("low", 2, timeout=90)
    status = jobs.wait_phase("low", "Running")
    assert status["restarts"] == status["disruptions"] == gang  # not a failure


def test_an_a3_job_with_tas_lands_in_one_super_pod(jobs: Jobs, queue: Queue) -> None:
    # Super pod 0: two servers; super pod 1: one. Spread by the scheduler alone, the job
    # could take one server of each; Kueue's TAS keeps it inside super pod 0.
    queue.add_nodes(3, product="a3-superpod", super_pod_size=2)
    queue.create(npus=48, topology=SUPER_POD_LABEL)
    job = queued_job("a3", device={"type": "ascend", "ascend": {"product": "a3-superpod",
                                                                "superPodBlock": 32}},
                     devicesPerReplica=16, podTemplate={"metadata": {"annotations": {
                         "kueue.x-k8s.io/podset-required-topology": SUPER_POD_LABEL}}})  # fmt: skip
    jobs.kubectl.apply(job, "-n", jobs.namespace)
    pods = jobs.wait_running_pods("a3", 2, timeout=90)
    nodes = {n["metadata"]["name"]: n for n in fakenodes.list_nodes(queue.cluster)}
    super_pods = {nodes[p["spec"]["nodeName"]]["metadata"]["labels"][SUPER_POD_LABEL] for p in pods}
    assert super_pods == {"0"}
    table = jobs.wait_rank_table("a3")
    assert [p["super_pod_id"] for p in table["super_pod_list"]] == ["0"]
