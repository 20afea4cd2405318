"""The README's main job, end to end: chart RBAC, the operator as the chart's ServiceAccount,
the trainer in each pod (run as a local process from the pod spec) and its status reports.
Nothing is faked but the container runtime."""

from __future__ import annotations

import demo
import pytest
from localcluster import Cluster
from localoperator import OperatorProcess
from testsupport import Kubectl

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_demo_trains_through_the_operator_and_reports_back(
    cluster: Cluster, kubectl: Kubectl, capsys: pytest.CaptureFixture[str]
) -> None:
    with OperatorProcess.others_stopped():  # the demo runs its own operator
        assert demo.main(["--cluster", cluster.name, "--keep-cluster", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    job = kubectl.json("get", "dnt", "densenet121-cpu-demo", "-n", demo.NAMESPACE)
    status = job["status"]
    assert status["phase"] == "Succeeded"
    assert status["restarts"] == 0
    training = status["training"]
    assert training["epoch"] == 2 and training["totalEpochs"] == 2
    assert training["fps"] > 0
    assert 0 < training["acc1"] <= 100 and training["bestAcc1"] >= training["acc1"]
    # What ran is the pod the operator wrote: its command, args and rank-table mount.
    pod = kubectl.json("get", "pod", "densenet121-cpu-demo-worker-1", "-n", demo.NAMESPACE)
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["densenet-train", "launch"]
    assert (
        "[densenet121-cpu-demo-worker-1] started: densenet-train launch --arch densenet121" in out
    )
    assert pod["status"]["phase"] == "Succeeded"
