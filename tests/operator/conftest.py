"""Integration fixtures: the CRD installed into the local cluster and the operator running as a
real process (`densenet-operator run`) against it. The cluster's simulated Ascend device plugin
(hack/deviceplugin.py) annotates the pods with their chips; `Jobs` can take it down and make
chips' IPs unreadable, and `product_nodes` adds nodes of other Ascend products."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import deviceplugin
import fakenodes
import pytest
from kubelet import set_pod_phase
from localcluster import Cluster
from localoperator import OperatorProcess
from testsupport import REPO_ROOT, Kubectl, is_running, wait_for

from densenet_operator.ascend.deviceconfig import CONFIG_ANNOTATION
from densenet_operator.naming import LABEL_JOB, LABEL_REPLICA_INDEX

ROOT = REPO_ROOT
ASCEND_ANNOTATION = CONFIG_ANNOTATION
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
        self.faults = False  # whether the test injected device-plugin faults

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

    def device_plugin_down(self) -> None:
        """The device plugin stops annotating pods, on every node, until `device_plugin_up`
        (or the end of the test): a job's table then stays initializing."""
        deviceplugin.set_plugin_down(self.kubectl, True)
        self.faults = True

    def device_plugin_up(self) -> None:
        """The device plugin runs again and annotates the pods it skipped (after its delay)."""
        deviceplugin.set_plugin_down(self.kubectl, False)

    def chip_ips_down(self, chips: Iterable[int]) -> None:
        """The device plugin cannot read these chips' IPs, on every node, and writes "-1" for
        them (no chips: all readable again)."""
        deviceplugin.set_chip_ips_down(self.kubectl, chips)
        self.faults = True

    def end_faults(self) -> None:
        """The plugin up on every node and every chip's IP readable."""
        if self.faults:
            deviceplugin.set_plugin_down(self.kubectl, False)
            deviceplugin.set_chip_ips_down(self.kubectl, ())
            self.faults = False

    def wait_rank_table(self, name: str, timeout: float = 60) -> dict[str, Any]:
        """The job's rank table once `completed` (the plugin annotated every pod)."""
        return wait_for(
            lambda: (t := self.rank_table(name)).get("status") == "completed" and t,
            timeout=timeout,
            what=f"the rank table of {name} to be completed",
        )

    def rank_table(self, name: str) -> dict[str, Any]:
        configmap = self.kubectl.json(
            "get", "configmap", f"rings-config-{name}", "-n", self.namespace
        )
        return json.loads(configmap["data"]["hccl.json"])

    def set_pod_phase(self, pod_name: str, phase: str, exit_code: int | None = None) -> None:
        """Ends a pod as its kubelet would (phase, Ready conditions, the container's exit code)."""
        set_pod_phase(self.kubectl, self.namespace, pod_name, phase, exit_code=exit_code)


@pytest.fixture
def jobs(kubectl: Kubectl, namespace: str, operator: OperatorProcess) -> Iterator[Jobs]:
    helper = Jobs(kubectl, namespace)
    yield helper
    helper.end_faults()  # faults a test injected end with it


@pytest.fixture(scope="module")
def product_nodes(cluster: Cluster) -> Iterator[Callable[..., tuple[str, ...]]]:
    """`product_nodes("910b", 2)`: two Ready nodes of that Ascend product (fakenodes.PRODUCTS:
    910, 910b, 910b-16, a3, a3-superpod; keyword `super_pod_size` for A3 super pods), named
    `ascend-<product>-<i>`. The nodes this module added are deleted, with their pods, when the
    module ends, so that jobs of other modules never land on them."""
    before = {n["metadata"]["name"] for n in fakenodes.list_nodes(cluster)}
    added: list[str] = []

    def add(product: str, count: int = 1, **options: Any) -> tuple[str, ...]:
        names = fakenodes.ensure_product_nodes(cluster, product, count, **options)
        added.extend(n for n in names if n not in before and n not in added)
        return names

    yield add
    fakenodes.delete_nodes(cluster, added)


@pytest.fixture
def priority_classes(kubectl: Kubectl) -> Iterator[tuple[str, str]]:
    """A low and a high PriorityClass (values 100 and 1000) of this test only."""
    suffix = uuid.uuid4().hex[:6]
    low, high = f"test-low-{suffix}", f"test-high-{suffix}"
    for name, value in ((low, 100), (high, 1000)):
        kubectl.apply({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                       "metadata": {"name": name}, "value": value})  # fmt: skip
    yield low, high
    kubectl("delete", "priorityclass", low, high, "--ignore-not-found")
