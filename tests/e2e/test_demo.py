"""The README's main job, end to end and for real: the chart's operator Deployment and the
job's two trainer pods run our images on the local cluster's real node (kubelet, containerd,
runc), train DenseNet-121 on digits with DDP over gloo, and report back into the status."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import demo
import pytest
from localcluster import Cluster
from localoperator import OperatorProcess
from realnode_config import REAL_NODE_LABEL
from testsupport import Kubectl

from tests.conftest import needs_real_node

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    needs_real_node,
]
JOB = "densenet121-cpu-demo"


@pytest.fixture
def demo_run(
    cluster: Cluster, kubectl: Kubectl, capsys: pytest.CaptureFixture[str]
) -> Iterator[tuple[int, str]]:
    """The demo's exit code and what it printed; afterwards its operator Deployment is scaled
    to 0, so that it never acts next to the operators the other tests run."""
    with OperatorProcess.others_stopped():
        try:
            code = demo.main(["--cluster", cluster.name, "--keep-cluster"])
            yield code, capsys.readouterr().out
        finally:
            kubectl("scale", "deployment", demo.RELEASE, "-n", demo.OPERATOR_NAMESPACE,
                    "--replicas=0", check=False)  # fmt: skip


def real_node_names(kubectl: Kubectl) -> set[str]:
    nodes = kubectl.json("get", "nodes", "-l", f"{REAL_NODE_LABEL}=true")["items"]
    return {node["metadata"]["name"] for node in nodes}


def exit_code(pod: dict[str, Any]) -> int | None:
    terminated = pod["status"]["containerStatuses"][0]["state"].get("terminated") or {}
    return terminated.get("exitCode")


def test_the_demo_trains_in_real_pods_through_the_charts_operator(
    demo_run: tuple[int, str], kubectl: Kubectl
) -> None:
    code, out = demo_run
    assert code == 0, out[-3000:]
    real_nodes = real_node_names(kubectl)
    assert real_nodes
    status = kubectl.json("get", "dnt", JOB, "-n", demo.NAMESPACE)["status"]
    assert status["phase"] == "Succeeded" and status["restarts"] == 0
    training = status["training"]
    assert training["epoch"] == training["totalEpochs"] == 7
    assert training["fps"] > 0
    assert training["acc1"] >= 90 and training["bestAcc1"] >= training["acc1"]
    # The trainers ran the operator's pod spec on the real node and exited 0 there.
    for index in (0, 1):
        pod = kubectl.json("get", "pod", f"{JOB}-worker-{index}", "-n", demo.NAMESPACE)
        assert pod["spec"]["nodeName"] in real_nodes
        assert pod["spec"]["containers"][0]["command"] == ["densenet-train", "launch"]
        assert pod["status"]["phase"] == "Succeeded" and exit_code(pod) == 0
    # The operator ran as the chart's Deployment, from our image, on the real node.
    pods = kubectl.json("get", "pods", "-n", demo.OPERATOR_NAMESPACE,
                        "-l", "app.kubernetes.io/name=densenet-operator")["items"]  # fmt: skip
    assert pods and all(p["spec"]["nodeName"] in real_nodes for p in pods)
    image = pods[0]["spec"]["containers"][0]["image"]
    assert image.startswith("localhost/densenet-operator:")
    # What the demo shows: the pods with their node (kubectl get pods -o wide) and the table.
    assert any(line.split()[:1] == [f"{JOB}-worker-1"] and real_nodes & set(line.split())
               for line in out.splitlines())  # fmt: skip


@pytest.fixture
def queue_demo_run(
    cluster: Cluster, kubectl: Kubectl, capsys: pytest.CaptureFixture[str]
) -> Iterator[tuple[int, str]]:
    """`hack/demo.sh --queue`: its exit code and what it printed (the operator as above)."""
    with OperatorProcess.others_stopped():
        try:
            code = demo.main(["--cluster", cluster.name, "--keep-cluster", "--queue"])
            yield code, capsys.readouterr().out
        finally:
            kubectl("scale", "deployment", demo.RELEASE, "-n", demo.OPERATOR_NAMESPACE,
                    "--replicas=0", check=False)  # fmt: skip
            kubectl("delete", "-n", demo.NAMESPACE, "-f", str(demo.QUEUE_EXAMPLE),
                    "--ignore-not-found", check=False)  # fmt: skip


def test_the_queue_demo_runs_one_job_while_the_other_waits(
    queue_demo_run: tuple[int, str],
) -> None:
    code, out = queue_demo_run
    assert code == 0, out[-3000:]
    # The tables it printed: kubectl's rows, read by their columns (NAME PHASE QUEUE ...).
    rows = [line.split() for line in out.splitlines() if line.startswith("densenet161-queued-")]
    first = [r[:3] for r in rows[:2]]
    assert first == [["densenet161-queued-a", "Running", "team-a"],
                     ["densenet161-queued-b", "Queued", "team-a"]]  # fmt: skip
    assert [r[:3] for r in rows[-2:]] == [["densenet161-queued-a", "Succeeded", "team-a"],
                                          ["densenet161-queued-b", "Succeeded", "team-a"]]  # fmt: skip
