"""Fake Ascend nodes for the local control plane: KWOK nodes that advertise NPUs.

A node here is a real Node object whose annotation `kwok.x-k8s.io/node: fake` hands it to
kwok-controller, which stands in for its kubelet: it keeps the node Ready (heartbeats and
leases), and moves each pod scheduled there to Running with an IP from the node's
`spec.podCIDR` (a hostNetwork pod gets the node's InternalIP, as a kubelet reports it). It
runs no containers and never ends a pod (kubelet.py does that when a test asks). Capacity and
allocatable carry `huawei.com/Ascend910`, which is what the real scheduler counts, and
ephemeral storage, which every kubelet reports; the Ascend device plugin's part (choosing each
pod's chips and annotating the pod) is played by deviceplugin.py, which the cluster runs beside
its components.

Each node is of one Ascend product (`PRODUCTS`: 910, 910B x8, 910B x16, A3 x16, A3 super pod),
as Huawei's scheduler and operator tell them apart: the label `accelerator-type` and the chip
count. The node also carries what the real device plugin writes on its node: the annotations
`superPodID` and `serverIndex` (-2 without super-pod hardware) and `baseDeviceInfos`, each
chip's device IP and super-device id. That hardware is made up here, stably:

- node slot s: InternalIP 172.18.0.(11+s) and podCIDR 10.244.s.0/24 (both clear of the
  apiserver's default service range 10.0.0.0/24), so that nodes and pods all have distinct
  addresses, as the rank table needs;
- chip i of slot s: device IP 192.168.(100 + i%4 + 4*(s//60)).(10 + 4*(s%60) + i//4), unique
  in the cluster for up to 16 chips and `MAX_NODES` slots; on the first 60 slots chips i and
  i+4 share the subnet 192.168.(100+i%4).0/24, as on a real 910 server (chip i's RoCE port
  is in subnet i%4, whatever the server);
- on an A3 super pod, server `serverIndex` of super pod `superPodID`: chip i has super-device
  id serverIndex*16 + i (unique within the super pod, as HCCL requires); "0" elsewhere.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from controlplane import TRANSIENT, Cluster
from kubelet import set_pod_phase
from testsupport import TERMINAL_PHASES, ClusterError, Kubectl, condition, wait_for

DEFAULT_NODES = 4
NPU_RESOURCE = "huawei.com/Ascend910"
NODE_PREFIX = "ascend-node-"
NODE_IP_BASE = ipaddress.IPv4Address("172.18.0.11")
POD_CIDR_BASE = ipaddress.IPv4Network("10.244.0.0/16")
MAX_NODES = 200
NODE_LABELS: Mapping[str, str] = {
    "accelerator": "huawei-Ascend910",
    "type": "kwok",
}
SLOT_ANNOTATION = "densenet.dev/fake-node-slot"
POD_GC_MESSAGE = "PodGC: node no longer exists"
# What the real device plugin writes on its node (ascend-device-plugin, manager.go
# getNewNodeAnnotation), and the value it writes without super-pod hardware.
ACCELERATOR_TYPE_LABEL = "accelerator-type"
SUPER_POD_ID_ANNOTATION = "superPodID"
SUPER_POD_LABEL = "huawei.com/topotree.superpodid"  # on super-pod nodes: the same id
SERVER_INDEX_ANNOTATION = "serverIndex"
BASE_DEVICE_INFOS_ANNOTATION = "baseDeviceInfos"
NO_SUPER_POD = -2
_NO_PLACE = (NO_SUPER_POD, NO_SUPER_POD)  # (superPodID, serverIndex) without super-pod hardware
SUPER_POD_SIZE = 48  # servers per super pod: Volcano's default `super-pod-size`
CHIPS_PER_SUBNET_BLOCK = 60  # node slots whose chips share the device subnets 192.168.100-103
Target = Cluster | Kubectl  # what the functions here act on: a cluster or kubectl bound to one


@dataclasses.dataclass(frozen=True)
class Product:
    """An Ascend server as Volcano's Ascend plugin tells it apart (ascend-for-volcano
    `common/util/constants.go`): its `accelerator-type` label and its chips."""

    name: str
    accelerator_type: str
    chips: int
    instance_type: str  # node.kubernetes.io/instance-type
    super_pod: bool = False


PRODUCTS: Mapping[str, Product] = {
    p.name: p
    for p in (
        Product("910", "module", 8, "ascend-910"),  # Atlas 800: two HCCS rings of 4
        Product("910b", "module-910b-8", 8, "ascend-910b"),  # Atlas 800T A2
        Product("910b-16", "module-910b-16", 16, "ascend-910b"),
        Product("a3", "module-a3-16", 16, "ascend-a3"),  # Atlas 900 A3, no super pod
        Product("a3-superpod", "module-a3-16-super-pod", 16, "ascend-a3", super_pod=True),
    )
}
DEFAULT_PRODUCT = "910"


def find_product(name: str) -> Product:
    try:
        return PRODUCTS[name]
    except KeyError:
        raise ValueError(f"unknown product {name!r}: one of {', '.join(PRODUCTS)}") from None


def kubectl_of(target: Target) -> Kubectl:
    """kubectl bound to the cluster (a Kubectl passes through)."""
    return target if isinstance(target, Kubectl) else target.kubectl


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


def device_ip(slot: int, chip: int) -> str:
    """Chip `chip`'s device (RoCE) IP on the node in slot `slot`: see the module docstring."""
    if not 0 <= chip < 16:
        raise ValueError(f"chip {chip} out of range 0..15")
    block, index = divmod(_check_slot(slot), CHIPS_PER_SUBNET_BLOCK)
    return f"192.168.{100 + chip % 4 + 4 * block}.{10 + 4 * index + chip // 4}"


def super_device_id(server_index: int, chip: int) -> int:
    """A chip's id within its A3 super pod; 0 without super-pod hardware (the plugin's value)."""
    return server_index * 16 + chip if server_index >= 0 else 0


def base_device_infos(slot: int, chips: int, server_index: int = NO_SUPER_POD) -> str:
    """The node annotation `baseDeviceInfos` as the plugin writes it (Go's json.Marshal of a
    map: keys sorted as strings, no spaces)."""
    infos = {
        f"Ascend910-{chip}": {
            "IP": device_ip(slot, chip),
            "SuperDeviceID": super_device_id(server_index, chip),
        }
        for chip in range(chips)
    }
    return json.dumps(infos, sort_keys=True, separators=(",", ":"))


def node_manifest(
    name: str,
    slot: int,
    *,
    product: str = DEFAULT_PRODUCT,
    npus: int | None = None,
    super_pod_id: int = NO_SUPER_POD,
    server_index: int = NO_SUPER_POD,
    cpu: str = "96",
    memory: str = "512Gi",
    ephemeral_storage: str = "1Ti",
    pods: str = "110",
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A fake Ascend node of `product` (`npus` chips instead of the product's, if given).
    Nodes may carry their status on create; KWOK keeps it Ready."""
    kind = find_product(product)
    chips = kind.chips if npus is None else npus
    # Every kubelet reports its node's ephemeral storage; without it, a pod that requests some
    # (every trainer pod does) would never fit.
    resources = {"cpu": cpu, "memory": memory, "ephemeral-storage": ephemeral_storage,
                 "pods": pods, NPU_RESOURCE: str(chips)}  # fmt: skip
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                **NODE_LABELS,
                "node.kubernetes.io/instance-type": kind.instance_type,
                ACCELERATOR_TYPE_LABEL: kind.accelerator_type,
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
                # The device plugin's super-pod label (a Kueue TAS topology level).
                **({SUPER_POD_LABEL: str(super_pod_id)} if super_pod_id != NO_SUPER_POD else {}),
                **(labels or {}),
            },
            "annotations": {
                "kwok.x-k8s.io/node": "fake",
                "node.alpha.kubernetes.io/ttl": "0",
                SLOT_ANNOTATION: str(slot),
                SUPER_POD_ID_ANNOTATION: str(super_pod_id),
                SERVER_INDEX_ANNOTATION: str(server_index),
                BASE_DEVICE_INFOS_ANNOTATION: base_device_infos(slot, chips, server_index),
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


def product_node_names(product_name: str, count: int) -> list[str]:
    """`ascend-<product>-<i>`: the names `ensure_product_nodes` gives."""
    find_product(product_name)
    return [f"ascend-{product_name}-{i}" for i in range(count)]


def super_pod_place(index: int, size: int = SUPER_POD_SIZE) -> tuple[int, int]:
    """(superPodID, serverIndex) of the index-th server of a row of super pods of `size`."""
    return divmod(index, size)


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


def list_nodes(target: Target) -> list[dict[str, Any]]:
    return kubectl_of(target).json("get", "nodes")["items"]


def node_summary(target: Target) -> dict[str, dict[str, Any]]:
    """Per node: Ready, InternalIP, podCIDR, product label and allocatable NPUs (for
    `localcluster status`)."""
    return {
        n["metadata"]["name"]: {
            "ready": node_ready(n),
            "ip": internal_ip(n),
            "podCIDR": n["spec"].get("podCIDR"),
            ACCELERATOR_TYPE_LABEL: n["metadata"].get("labels", {}).get(ACCELERATOR_TYPE_LABEL),
            NPU_RESOURCE: n["status"].get("allocatable", {}).get(NPU_RESOURCE),
        }
        for n in list_nodes(target)
    }


def wait_nodes_ready(target: Target, names: Sequence[str], timeout: float = 60) -> None:
    def ready() -> bool:
        by_name = {n["metadata"]["name"]: n for n in list_nodes(target)}
        return all(name in by_name and node_ready(by_name[name]) for name in names)

    wait_for(ready, timeout, what=f"nodes {', '.join(names)} to be Ready", retry_on=TRANSIENT)


def _create_missing(
    target: Target,
    names: Sequence[str],
    make: Callable[[int, str, int], dict[str, Any]],
    timeout: float,
) -> tuple[str, ...]:
    """Creates whichever of `names` is missing, `make(index, name, slot)` giving the manifest
    (the i-th in slot i when free, else in a free one), and waits until all are Ready."""
    existing = {n["metadata"]["name"]: n for n in list_nodes(target)}
    used = [s for n in existing.values() if (s := node_slot(n)) is not None]
    manifests = []
    for index, name in enumerate(names):
        if name in existing:
            continue
        slot = index if index not in used else free_slot(used)
        used.append(slot)
        manifests.append(make(index, name, slot))
    if manifests:
        kubectl_of(target)("create", "-f", "-", input=manifests)
    wait_nodes_ready(target, names, timeout=timeout)
    return tuple(names)


def ensure_nodes(target: Target, names: Sequence[str], timeout: float = 60) -> tuple[str, ...]:
    """Creates whichever of the 910 nodes `names` is missing and waits until all are Ready."""
    return _create_missing(target, names, lambda _, name, slot: node_manifest(name, slot), timeout)


def ensure_product_nodes(
    target: Target,
    product_name: str,
    count: int,
    *,
    super_pod_size: int = SUPER_POD_SIZE,
    timeout: float = 60,
) -> tuple[str, ...]:
    """`count` Ready nodes of `product_name`, named `ascend-<product>-<i>` (those missing are
    created). On A3 super pods, server i is server i % super_pod_size of super pod
    i // super_pod_size. Remove them with `delete_nodes`."""
    kind = find_product(product_name)

    def make(index: int, name: str, slot: int) -> dict[str, Any]:
        pod_id, server = super_pod_place(index, super_pod_size) if kind.super_pod else _NO_PLACE
        return node_manifest(
            name, slot, product=product_name, super_pod_id=pod_id, server_index=server
        )

    return _create_missing(target, product_node_names(product_name, count), make, timeout)


def add_node(
    target: Target,
    name: str,
    *,
    product: str = DEFAULT_PRODUCT,
    npus: int | None = None,
    labels: Mapping[str, str] | None = None,
    wait: bool = True,
    timeout: float = 60,
) -> str:
    """Create a fake Ascend node of `product` (a free slot gives it a distinct IP and podCIDR;
    a super-pod node is server 0 of super pod 0). Returns the node's name; `node_manifest`
    shows what it looks like."""
    used = [s for n in list_nodes(target) if (s := node_slot(n)) is not None]
    place = (0, 0) if find_product(product).super_pod else _NO_PLACE
    manifest = node_manifest(
        name, free_slot(used), product=product, npus=npus, labels=labels,
        super_pod_id=place[0], server_index=place[1],
    )  # fmt: skip
    kubectl_of(target)("create", "-f", "-", input=manifest)
    if wait:
        wait_nodes_ready(target, [name], timeout=timeout)
    return name


def pods_on_node(target: Target, node: str) -> list[dict[str, Any]]:
    return kubectl_of(target).json(
        "get", "pods", "--all-namespaces", "--field-selector", f"spec.nodeName={node}"
    )["items"]


def delete_node(
    target: Target,
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
    kubectl = kubectl_of(target)
    name = node if isinstance(node, str) else node["metadata"]["name"]
    pods = pods_on_node(kubectl, name) if gc_pods else []
    kubectl("delete", "node", name, "--ignore-not-found", "--wait=false")
    if wait:
        wait_for(
            lambda: kubectl.not_found("node", name),
            timeout,
            what=f"node {name} to be deleted",
            retry_on=TRANSIENT,
        )
    collect_orphaned_pods(kubectl, pods)


def delete_nodes(target: Target, names: Sequence[str], timeout: float = 60) -> None:
    """Delete the nodes and, at once, their pods (`delete_node` with gc_pods)."""
    for name in names:
        delete_node(target, name, gc_pods=True, timeout=timeout)


def collect_orphaned_pods(target: Target, pods: Sequence[Mapping[str, Any]]) -> None:
    """Stands in for kube-controller-manager's pod garbage collector on pods whose node is gone.

    Faithful to what it writes (Kubernetes >= 1.26): each pod not yet terminal is marked Failed
    with condition DisruptionTarget (reason DeletionByPodGC), its containers terminated (the
    status a kubelet would write, from kubelet.py, exit code 137), then deleted with grace
    period 0. Not faithful in timing: the real collector waits out a quarantine first.
    """
    kubectl = kubectl_of(target)
    for pod in pods:
        meta = pod["metadata"]
        if pod["status"].get("phase") not in TERMINAL_PHASES:
            set_pod_phase(
                kubectl, meta["namespace"], meta["name"], "Failed", exit_code=137,
                reason="DeletionByPodGC", message=POD_GC_MESSAGE, check=False,
                condition={"type": "DisruptionTarget", "status": "True",
                           "reason": "DeletionByPodGC", "message": POD_GC_MESSAGE},
            )  # fmt: skip
        kubectl(
            "delete", "pod", meta["name"], "-n", meta["namespace"], "--grace-period=0", "--force",
            "--ignore-not-found", "--wait=false", check=False,
        )  # fmt: skip
