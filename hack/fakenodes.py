"""Fake Ascend nodes for the local control plane: KWOK nodes that advertise NPUs.

A node here is a real Node object whose annotation `kwok.x-k8s.io/node: fake` hands it to
kwok-controller, which stands in for its kubelet: it keeps the node Ready (heartbeats and
leases), and moves each pod scheduled there to Running with an IP from the node's
`spec.podCIDR`. It runs no containers and never ends a pod (kubelet.py does that when a test
asks). The device plugin is not emulated either: capacity and allocatable simply carry
`huawei.com/Ascend910`, which is what the real scheduler counts; tests that need the plugin's
pod annotation write it themselves.

Each node gets a slot: node i has InternalIP 172.18.0.(11+i) and podCIDR 10.244.i.0/24 (both
clear of the apiserver's default service range 10.0.0.0/24), so that nodes and pods all have
distinct addresses, as the rank table needs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from controlplane import TRANSIENT, Cluster
from kubelet import set_pod_phase
from testsupport import TERMINAL_PHASES, ClusterError, condition, wait_for

DEFAULT_NODES = 4
NPU_RESOURCE = "huawei.com/Ascend910"
NODE_PREFIX = "ascend-node-"
NODE_IP_BASE = ipaddress.IPv4Address("172.18.0.11")
POD_CIDR_BASE = ipaddress.IPv4Network("10.244.0.0/16")
MAX_NODES = 200
NODE_LABELS: Mapping[str, str] = {
    "node.kubernetes.io/instance-type": "ascend-910",
    "accelerator": "huawei-Ascend910",
    "type": "kwok",
}
SLOT_ANNOTATION = "densenet.dev/fake-node-slot"
POD_GC_MESSAGE = "PodGC: node no longer exists"


# ---------------------------------------------------------------------------------------------
# Manifests and slots (pure)


def _check_slot(slot: int) -> int:
    if not 0 <= slot < MAX_NODES:
        raise ValueError(f"node slot {slot} out of range 0..{MAX_NODES - 1}")
    return slot


def node_ip(slot: int) -> str:
    return str(NODE_IP_BASE + _check_slot(slot))


def pod_cidr(slot: int) -> str:
    return str(list(POD_CIDR_BASE.subnets(new_prefix=24))[_check_slot(slot)])


def node_manifest(
    name: str,
    slot: int,
    *,
    npus: int = 8,
    cpu: str = "96",
    memory: str = "512Gi",
    pods: str = "110",
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A fake Ascend node. Nodes may carry their status on create; KWOK keeps it Ready."""
    resources = {"cpu": cpu, "memory": memory, "pods": pods, NPU_RESOURCE: str(npus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                **NODE_LABELS,
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
                **(labels or {}),
            },
            "annotations": {
                "kwok.x-k8s.io/node": "fake",
                "node.alpha.kubernetes.io/ttl": "0",
                SLOT_ANNOTATION: str(slot),
            },
        },
        "spec": {"podCIDR": pod_cidr(slot), "podCIDRs": [pod_cidr(slot)]},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "addresses": [
                {"type": "InternalIP", "address": node_ip(slot)},
                {"type": "Hostname", "address": name},
            ],
        },
    }


def default_node_names(count: int) -> list[str]:
    return [f"{NODE_PREFIX}{i}" for i in range(count)]


def free_slot(used: Sequence[int]) -> int:
    taken = set(used)
    for slot in range(MAX_NODES):
        if slot not in taken:
            return slot
    raise ClusterError(f"no free node slot (at most {MAX_NODES} fake nodes)")


def node_slot(node: Mapping[str, Any]) -> int | None:
    """The slot a node was made with: from our annotation, else from its podCIDR."""
    meta = node.get("metadata", {})
    raw = (meta.get("annotations") or {}).get(SLOT_ANNOTATION)
    if raw is not None and str(raw).isdigit():
        return int(raw)
    cidr = node.get("spec", {}).get("podCIDR")
    if cidr:
        net = ipaddress.ip_network(cidr, strict=False)
        if net.subnet_of(POD_CIDR_BASE) and net.prefixlen == 24:  # type: ignore[arg-type]
            return int(net.network_address.packed[2])
    return None


def node_ready(node: Mapping[str, Any]) -> bool:
    ready = condition(node, "Ready")
    return ready is not None and ready.get("status") == "True"


def internal_ip(node: Mapping[str, Any]) -> str | None:
    addresses = (node.get("status") or {}).get("addresses") or []
    return next((a["address"] for a in addresses if a["type"] == "InternalIP"), None)


# ---------------------------------------------------------------------------------------------
# Nodes in the cluster


def list_nodes(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.kubectl.json("get", "nodes")["items"]


def node_summary(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """Per node: Ready, InternalIP, podCIDR and allocatable NPUs (for `localcluster status`)."""
    return {
        n["metadata"]["name"]: {
            "ready": node_ready(n),
            "ip": internal_ip(n),
            "podCIDR": n["spec"].get("podCIDR"),
            NPU_RESOURCE: n["status"].get("allocatable", {}).get(NPU_RESOURCE),
        }
        for n in list_nodes(cluster)
    }


def wait_nodes_ready(cluster: Cluster, names: Sequence[str], timeout: float = 60) -> None:
    def ready() -> bool:
        by_name = {n["metadata"]["name"]: n for n in list_nodes(cluster)}
        return all(name in by_name and node_ready(by_name[name]) for name in names)

    wait_for(ready, timeout, what=f"nodes {', '.join(names)} to be Ready", retry_on=TRANSIENT)


def ensure_nodes(cluster: Cluster, names: Sequence[str], timeout: float = 60) -> tuple[str, ...]:
    """Creates whichever of the nodes `names` is missing (the i-th in slot i when free, else in
    a free one) and waits until all are Ready."""
    existing = {n["metadata"]["name"]: n for n in list_nodes(cluster)}
    used = [s for n in existing.values() if (s := node_slot(n)) is not None]
    manifests = []
    for index, name in enumerate(names):
        if name in existing:
            continue
        slot = index if index not in used else free_slot(used)
        used.append(slot)
        manifests.append(node_manifest(name, slot))
    if manifests:
        cluster.kubectl("create", "-f", "-", input=manifests)
    wait_nodes_ready(cluster, names, timeout=timeout)
    return tuple(names)


def add_node(
    cluster: Cluster,
    name: str,
    *,
    npus: int = 8,
    labels: Mapping[str, str] | None = None,
    wait: bool = True,
    timeout: float = 60,
) -> str:
    """Create a fake Ascend node (a free slot gives it a distinct IP and podCIDR).

    Returns the node's name; `node_manifest` shows what it looks like.
    """
    used = [s for n in list_nodes(cluster) if (s := node_slot(n)) is not None]
    manifest = node_manifest(name, free_slot(used), npus=npus, labels=labels)
    cluster.kubectl("create", "-f", "-", input=manifest)
    if wait:
        wait_nodes_ready(cluster, [name], timeout=timeout)
    return name


def pods_on_node(cluster: Cluster, node: str) -> list[dict[str, Any]]:
    return cluster.kubectl.json(
        "get", "pods", "--all-namespaces", "--field-selector", f"spec.nodeName={node}"
    )["items"]


def delete_node(
    cluster: Cluster,
    node: str | Mapping[str, Any],
    *,
    gc_pods: bool = False,
    wait: bool = True,
    timeout: float = 60,
) -> None:
    """Delete a node, as a cloud provider does once the machine is gone.

    The node object goes at once. Its pods stay bound to it, phase unchanged, until
    kube-controller-manager's pod garbage collector finds them orphaned (a 40 s quarantine,
    checked every 20 s: about 45 s here). `gc_pods=True` does what the collector then does, at
    once, for tests that do not want to wait: see `collect_orphaned_pods`. `node` is a name or
    a Node object.
    """
    name = node if isinstance(node, str) else node["metadata"]["name"]
    pods = pods_on_node(cluster, name) if gc_pods else []
    cluster.kubectl("delete", "node", name, "--ignore-not-found", "--wait=false")
    if wait:
        wait_for(
            lambda: cluster.kubectl.not_found("node", name),
            timeout,
            what=f"node {name} to be deleted",
            retry_on=TRANSIENT,
        )
    collect_orphaned_pods(cluster, pods)


def collect_orphaned_pods(cluster: Cluster, pods: Sequence[Mapping[str, Any]]) -> None:
    """Stands in for kube-controller-manager's pod garbage collector on pods whose node is gone.

    Faithful to what it writes (Kubernetes >= 1.26): each pod not yet terminal is marked Failed
    with condition DisruptionTarget (reason DeletionByPodGC), its containers terminated (the
    status a kubelet would write, from kubelet.py, exit code 137), then deleted with grace
    period 0. Not faithful in timing: the real collector waits out a quarantine first.
    """
    for pod in pods:
        meta = pod["metadata"]
        if pod["status"].get("phase") not in TERMINAL_PHASES:
            set_pod_phase(
                cluster.kubectl, meta["namespace"], meta["name"], "Failed", exit_code=137,
                reason="DeletionByPodGC", message=POD_GC_MESSAGE, check=False,
                condition={"type": "DisruptionTarget", "status": "True",
                           "reason": "DeletionByPodGC", "message": POD_GC_MESSAGE},
            )  # fmt: skip
        cluster.kubectl(
            "delete", "pod", meta["name"], "-n", meta["namespace"], "--grace-period=0", "--force",
            "--ignore-not-found", "--wait=false", check=False,
        )  # fmt: skip
