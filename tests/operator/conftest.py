"""Integration fixtures: the CRD installed into the local cluster and the operator running as a
real process (`densenet-operator run`) against it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubelet import set_pod_phase
from localcluster import Cluster
from localoperator import OperatorProcess
from testsupport import REPO_ROOT, Kubectl, is_running, wait_for

from densenet_operator.naming import ASCEND_CONFIG_ANNOTATION, LABEL_JOB, LABEL_REPLICA_INDEX

ROOT = REPO_ROOT
ASCEND_ANNOTATION = ASCEND_CONFIG_ANNOTATION
# What the test modules of this folder import from here.
__all__ = ["ASCEND_ANNOTATION", "ROOT", "Jobs", "OperatorProcess", "wait_for"]


@pytest.fixture(scope="session")
def operator(
    cluster: Cluster, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    # Cluster-wide. Tests that run an operator of their own stop this one meanwhile
    # (OperatorProcess.others_stopped), so that two never act on the same jobs.
    process = OperatorProcess(
        cluster.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log"
    )
    process.start()
    yield process
    process.stop()


class Jobs:
    """Helpers on DenseNetTrainings and their pods in one namespace."""

    def __init__(self, kubectl: Kubectl, namespace: str, cluster: object = None) -> None:
        # `cluster` is not used any more (kubectl is all it takes); callers may still pass it.
        self.kubectl = kubectl
        self.namespace = namespace

    def get(self, name: str) -> dict[str, Any]:
        return self.kubectl.json("get", "dnt", name, "-n", self.namespace)

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def pods(self, name: str) -> list[dict[str, Any]]:
        selector = f"{LABEL_JOB}={name}"
        items = self.kubectl.json("get", "pods", "-n", self.namespace, "-l", selector)["items"]
        return sorted(items, key=lambda p: int(p["metadata"]["labels"][LABEL_REPLICA_INDEX]))

    def live_pods(self, name: str) -> list[dict[str, Any]]:
        return [p for p in self.pods(name) if not p["metadata"].get("deletionTimestamp")]

    def wait_phase(self, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(
            lambda: (s := self.status(name)).get("phase") == phase and s,
            timeout=timeout,
            what=f"{name} to reach phase {phase}",
        )

    def wait_running_pods(self, name: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        def ready() -> list[dict[str, Any]] | None:
            pods = self.live_pods(name)
            return pods if len(pods) == count and all(map(is_running, pods)) else None

        return wait_for(ready, timeout=timeout, what=f"{count} running pods of {name}")

    def annotate_devices(
        self, pod: dict[str, Any], devices: int, *, device_ip: str | None = None
    ) -> None:
        """What the Ascend device plugin does when it allocates NPUs to a pod."""
        index = int(pod["metadata"]["labels"][LABEL_REPLICA_INDEX])
        config = {
            "pod_name": pod["metadata"]["name"],
            "server_id": pod["status"]["hostIP"],
            "devices": [
                {
                    "device_id": str(d),
                    "device_ip": device_ip or f"192.168.{100 + d % 4}.{10 + index}",
                }
                for d in range(devices)
            ],
        }
        self.kubectl(
            "annotate", "pod", pod["metadata"]["name"], "-n", self.namespace, "--overwrite",
            f"{ASCEND_ANNOTATION}={json.dumps(config)}",
        )  # fmt: skip

    def rank_table(self, name: str) -> dict[str, Any]:
        configmap = self.kubectl.json(
            "get", "configmap", f"rings-config-{name}", "-n", self.namespace
        )
        return json.loads(configmap["data"]["hccl.json"])

    def set_pod_phase(self, pod_name: str, phase: str, exit_code: int | None = None) -> None:
        """Ends a pod as its kubelet would (phase, Ready conditions, the container's exit code)."""
        set_pod_phase(self.kubectl, self.namespace, pod_name, phase, exit_code=exit_code)


@pytest.fixture
def jobs(kubectl: Kubectl, namespace: str, operator: OperatorProcess) -> Jobs:
    return Jobs(kubectl, namespace)
