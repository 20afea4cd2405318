"""The local cluster (hack/localcluster.py, controlplane.py, fakenodes.py, kubelet.py):
configuration, manifests and status patches (unit) and the running cluster (integration)."""

from __future__ import annotations

import ipaddress
import json
import time
import uuid
from pathlib import Path
from typing import Any

import controlplane
import fakenodes
import kubelet
import pytest
import realnode_config
from localcluster import Cluster
from testsupport import (
    Kubectl,
    condition,
    is_running,
    pod_phase,
    service_account_kubeconfig,
    wait_for,
)

NPU = fakenodes.NPU_RESOURCE


def npu_pod(name: str, npus: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "trainer",
                    "image": "densenet-trainer:test",
                    "resources": {"limits": {NPU: str(npus)}, "requests": {NPU: str(npus)}},
                }
            ],
            **spec,
        },
    }


# ---------------------------------------------------------------------------------------------
# Unit tests: no cluster


def test_config_points_every_component_at_local_binaries(tmp_path: Path) -> None:
    config = controlplane.render_kwokctl_config(
        tmp_path / "bin", tmp_path / "kubectl", tmp_path / "pki"
    )
    assert config["kind"] == "KwokctlConfiguration"
    options = config["options"]
    assert options["runtime"] == "binary"
    assert set(options["components"]) >= {"kube-scheduler", "kube-controller-manager"}
    for key in (
        "kubeApiserverBinary",
        "kubeControllerManagerBinary",
        "kubeSchedulerBinary",
        "etcdBinary",
        "kwokControllerBinary",
    ):
        assert Path(options[key]).parent == tmp_path / "bin", key
    # Nothing to download: no URL anywhere in the configuration.
    assert "://" not in json.dumps(config)
    assert options["bindAddress"] == "127.0.0.1"
    assert options["securePort"] and options["kubeAuthorization"] and options["kubeAdmission"]


def _extra_args(config: dict[str, Any], component: str) -> dict[str, str]:
    patches = [p for p in config["componentsPatches"] if p["name"] == component]
    return {a["key"]: a["value"] for p in patches for a in p["extraArgs"]}


def test_kwok_manages_only_the_fake_nodes(tmp_path: Path) -> None:
    config = controlplane.render_kwokctl_config(tmp_path / "bin", tmp_path / "kubectl", tmp_path)
    args = _extra_args(config, "kwok-controller")
    assert args["manage-all-nodes"] == "false"
    key, _, value = args["manage-nodes-with-annotation-selector"].partition("=")
    node = fakenodes.node_manifest("n0", 0)
    assert node["metadata"]["annotations"][key] == value
    assert _extra_args(config, "kube-apiserver") == {}  # no real nodes: nothing else changes


def test_real_nodes_reach_the_apiserver_on_the_host_bridge(tmp_path: Path) -> None:
    plan = realnode_config.NetworkPlan(7)
    config = controlplane.render_kwokctl_config(
        tmp_path / "bin", tmp_path / "kubectl", tmp_path / "pki", plan
    )
    args = _extra_args(config, "kube-apiserver")
    assert args["advertise-address"] == plan.host_ip == "172.29.7.1"
    assert args["kubelet-preferred-address-types"] == "InternalIP"
    assert Path(args["kubelet-client-certificate"]).parent == tmp_path / "pki"
    # The pods' in-cluster clients dial the `kubernetes` Service's IP, the nodes the bridge.
    assert set(config["options"]["kubeApiserverCertSANs"]) == {"172.29.7.1", "10.0.0.1"}
    assert config["options"]["bindAddress"] == "127.0.0.1"


def test_node_manifest_advertises_eight_npus() -> None:
    node = fakenodes.node_manifest("n0", 0)
    for field in ("capacity", "allocatable"):
        assert node["status"][field] == {
            "cpu": "96",
            "memory": "512Gi",
            "ephemeral-storage": "1Ti",
            "pods": "110",
            NPU: "8",
        }
    labels = node["metadata"]["labels"]
    assert labels["node.kubernetes.io/instance-type"] == "ascend-910"
    assert labels["accelerator"] == "huawei-Ascend910"
    assert labels["type"] == "kwok"
    assert fakenodes.node_manifest("n", 1, npus=4)["status"]["allocatable"][NPU] == "4"


def test_nodes_get_distinct_ips_and_pod_cidrs() -> None:
    nodes = [fakenodes.node_manifest(f"n{i}", i) for i in range(8)]
    ips = [n["status"]["addresses"][0]["address"] for n in nodes]
    cidrs = [ipaddress.ip_network(n["spec"]["podCIDR"]) for n in nodes]
    assert len(set(ips)) == len(ips) and len(set(cidrs)) == len(cidrs)
    assert not any(a.overlaps(b) for i, a in enumerate(cidrs) for b in cidrs[i + 1 :])
    assert all(ipaddress.ip_address(ip) not in c for ip in ips for c in cidrs)
    assert [fakenodes.node_slot(n) for n in nodes] == list(range(8))


def test_node_slot_falls_back_to_pod_cidr_and_free_slot_fills_gaps() -> None:
    node = fakenodes.node_manifest("n", 5)
    del node["metadata"]["annotations"][fakenodes.SLOT_ANNOTATION]
    assert fakenodes.node_slot(node) == 5
    assert fakenodes.node_slot({"metadata": {}, "spec": {}}) is None
    assert fakenodes.free_slot([0, 1, 3]) == 2
    assert fakenodes.free_slot([]) == 0
    with pytest.raises(ValueError):
        fakenodes.node_ip(fakenodes.MAX_NODES)


def test_default_node_names() -> None:
    assert fakenodes.default_node_names(2) == ["ascend-node-0", "ascend-node-1"]


# ---------------------------------------------------------------------------------------------
# Integration tests: the real control plane


@pytest.mark.integration
def test_nodes_are_ready_with_npus(kubectl: Kubectl, cluster: Cluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in kubectl.json("get", "nodes")["items"]}
    assert set(cluster.nodes) <= set(nodes)
    ips = set()
    for name in cluster.nodes:
        node = nodes[name]
        assert condition(node, "Ready")["status"] == "True"
        assert node["status"]["allocatable"][NPU] == "8"
        ips.add(fakenodes.internal_ip(node))
    assert len(ips) == len(cluster.nodes)


@pytest.mark.integration
def test_pod_with_eight_npus_runs_on_a_fake_node(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(npu_pod("eight", 8), "-n", namespace)

    def running() -> dict[str, Any] | None:
        pod = kubectl.json("get", "pod", "eight", "-n", namespace)
        return pod if is_running(pod) else None

    pod = wait_for(running, 30, what="pod eight to run")
    node = kubectl.json("get", "node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["type"] == "kwok"
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(
        node["spec"]["podCIDR"]
    )
    assert pod["status"]["hostIP"] == fakenodes.internal_ip(node)
    assert condition(pod, "Ready")["status"] == "True"


@pytest.mark.integration
def test_pod_with_nine_npus_is_unschedulable(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(npu_pod("nine", 9), "-n", namespace)

    def unschedulable() -> dict[str, Any] | None:
        pod = kubectl.json("get", "pod", "nine", "-n", namespace)
        cond = condition(pod, "PodScheduled")
        return cond if cond and cond["status"] == "False" else None

    cond = wait_for(unschedulable, 30, what="PodScheduled=False")
    assert cond["reason"] == "Unschedulable"
    assert f"Insufficient {NPU}" in cond["message"]
    pod = kubectl.json("get", "pod", "nine", "-n", namespace)
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")


@pytest.mark.integration
def test_kwok_leaves_a_failed_pod_failed(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(npu_pod("doomed", 1), "-n", namespace)
    wait_for(lambda: pod_phase(kubectl, namespace, "doomed") == "Running", 30, what="doomed runs")
    patch = {"status": {"phase": "Failed", "reason": "Error", "message": "injected by a test"}}
    kubectl(
        "patch",
        "pod",
        "doomed",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(patch),
    )
    time.sleep(3)
    pod = kubectl.json("get", "pod", "doomed", "-n", namespace)
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["message"] == "injected by a test"


@pytest.mark.integration
def test_service_account_token_and_rbac(kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    kubectl("create", "serviceaccount", "reader", "-n", namespace)
    kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace)
    kubectl(
        "create",
        "rolebinding",
        "pod-reader",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:reader",
        "-n",
        namespace,
    )
    kubectl("create", "secret", "generic", "hidden", "--from-literal=k=v", "-n", namespace)
    # A kubeconfig with a TokenRequest token only (the admin's client certificate would win
    # otherwise): what testsupport.service_account_kubeconfig writes for stand-ins of pods.
    path = service_account_kubeconfig(kubectl.kubeconfig, namespace, "reader", tmp_path / "r")
    [user] = json.loads(path.read_text())["users"]
    assert user["user"]["token"].count(".") == 2 and set(user["user"]) == {"token"}
    reader = Kubectl(kubectl.binary, path)

    who = reader.json("auth", "whoami")
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:reader"
    wait_for(lambda: reader.succeeds("get", "pods"), 10, what="pods readable")
    denied = reader("get", "secret", "hidden", check=False)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr
    assert reader("auth", "can-i", "get", "secrets", check=False).stdout.strip() == "no"


def widget_crd(group: str) -> dict[str, Any]:
    """A CRD with a CEL rule on spec and a status subresource."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"replicas": {"type": "integer"}},
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "self.replicas <= 4",
                                            "message": "at most 4 replicas",
                                        }
                                    ],
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {"phase": {"type": "string"}},
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


@pytest.mark.integration
def test_crd_with_cel_validation_and_status_subresource(kubectl: Kubectl, namespace: str) -> None:
    group = f"t{uuid.uuid4().hex[:8]}.example.com"
    kubectl.apply(widget_crd(group))
    try:
        kubectl("wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=30s")

        def widget(name: str, replicas: int) -> dict[str, Any]:
            return {
                "apiVersion": f"{group}/v1",
                "kind": "Widget",
                "metadata": {"name": name},
                "spec": {"replicas": replicas},
            }

        bad = kubectl("apply", "-n", namespace, "-f", "-", input=widget("big", 5), check=False)
        assert bad.returncode != 0 and "at most 4 replicas" in bad.stderr
        # The new resource's discovery may lag Established by a moment.
        wait_for(
            lambda: kubectl.succeeds("apply", "-n", namespace, "-f", "-", input=widget("ok", 2)),
            15,
            what="widget created",
        )
        kubectl(
            "patch",
            f"widgets.{group}",
            "ok",
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            '{"status": {"phase": "Running"}}',
        )
        got = kubectl.json("get", f"widgets.{group}", "ok", "-n", namespace)
        assert got["status"]["phase"] == "Running"
    finally:
        kubectl("delete", "crd", f"widgets.{group}", "--wait=false", check=False)


@pytest.mark.integration
def test_owner_reference_garbage_collection(kubectl: Kubectl, namespace: str) -> None:
    kubectl("create", "configmap", "owner", "-n", namespace)
    owner = kubectl.json("get", "configmap", "owner", "-n", namespace)
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": "owner",
                    "uid": owner["metadata"]["uid"],
                }
            ],
        },
    }
    kubectl.apply(child, "-n", namespace)
    kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_for(
        lambda: not kubectl.succeeds("get", "configmap", "child", "-n", namespace),
        60,
        what="child to be garbage-collected",
    )


@pytest.mark.integration
def test_set_pod_phase_fails_a_running_pod(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(npu_pod("trainer", 1), "-n", namespace)
    wait_for(lambda: pod_phase(kubectl, namespace, "trainer") == "Running", 30, what="it runs")
    kubelet.set_pod_phase(kubectl, namespace, "trainer", "Failed", exit_code=3, reason="Error")
    time.sleep(2)
    pod = kubectl.json("get", "pod", "trainer", "-n", namespace)
    assert pod["status"]["phase"] == "Failed"
    assert condition(pod, "Ready")["status"] == "False"
    [status] = pod["status"]["containerStatuses"]
    assert status["state"]["terminated"]["exitCode"] == 3


@pytest.mark.integration
def test_add_and_delete_node(cluster: Cluster, kubectl: Kubectl, namespace: str) -> None:
    name = f"extra-{uuid.uuid4().hex[:6]}"
    assert fakenodes.add_node(cluster, name, npus=2) == name
    try:
        node = kubectl.json("get", "node", name)
        assert condition(node, "Ready")["status"] == "True"
        assert node["status"]["allocatable"][NPU] == "2"
        others = [n for n in kubectl.json("get", "nodes")["items"] if n["metadata"]["name"] != name]
        assert node["spec"]["podCIDR"] not in {n["spec"].get("podCIDR") for n in others}
        pinned = npu_pod("pinned", 2, nodeSelector={"kubernetes.io/hostname": name})
        kubectl.apply(pinned, "-n", namespace)
        wait_for(lambda: pod_phase(kubectl, namespace, "pinned") == "Running", 30, what="pinned")
    finally:
        fakenodes.delete_node(cluster, name)
    assert kubectl("get", "node", name, check=False).returncode != 0
    # The pod stays bound to the missing node until the pod garbage collector removes it
    # (about 45 s later).
    pod = kubectl.json("get", "pod", "pinned", "-n", namespace)
    assert pod["spec"]["nodeName"] == name and pod["status"]["phase"] == "Running"


@pytest.mark.integration
def test_delete_node_with_gc_pods(cluster: Cluster, kubectl: Kubectl, namespace: str) -> None:
    name = f"doomed-{uuid.uuid4().hex[:6]}"
    fakenodes.add_node(cluster, name)
    pinned = npu_pod("pinned", 8, nodeSelector={"kubernetes.io/hostname": name})
    kubectl.apply(pinned, "-n", namespace)
    wait_for(lambda: pod_phase(kubectl, namespace, "pinned") == "Running", 30, what="it runs")
    fakenodes.delete_node(cluster, kubectl.json("get", "node", name), gc_pods=True)
    wait_for(lambda: pod_phase(kubectl, namespace, "pinned") is None, 10, what="pod deleted")
