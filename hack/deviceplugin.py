#!/usr/bin/env python3
"""A simulated Ascend device plugin for the local cluster's fake nodes.

Stands in for Huawei's ascend-device-plugin (MindCluster `component/ascend-device-plugin`, HEAD
of 2026-08; see ../shared/REFERENCE.md, "Ascend in 2026") on every KWOK node that advertises
`huawei.com/Ascend910`, together with the part of kubelet's device manager and of Volcano's
Ascend plugin that decide which chips a pod gets. One process serves the whole cluster: it
watches nodes and bound pods, and for each live pod that requests N chips and has no
`huawei.com/AscendReal` yet, it

1. takes N chips of the pod's node that no other live pod holds (a pod holds the chips of its
   `huawei.com/AscendReal` until it is deleted or Succeeded/Failed): the chips Volcano wrote in
   the pod's annotation `huawei.com/Ascend910` ("Ascend910-4,Ascend910-5") when it has one,
   else Volcano's choice (`choose_chips`: best fit within one HCCS ring on a 910 node, the
   lowest free ids elsewhere);
2. after `delay` seconds (the real plugin writes on a 5 s loop, after kubelet's Allocate; 0.5 s
   by default here), writes in one merge patch what `AddPodAnnotation` writes:
   `huawei.com/kltDev` (kubelet's device ids), `huawei.com/AscendReal` (the real ids, sorted as
   strings) and `ascend.kubectl.kubernetes.io/ascend-910-configuration`, byte for byte the JSON
   of the plugin's `Instance` (`configuration`): pod UID as server_id, the node's InternalIP as
   host_ip and server_ip, super_pod_id/server_index from the node's `superPodID`/`serverIndex`
   annotations (-2 and "-2" without super-pod hardware), rack_id 0, devices in numeric order
   with their device IP and super_device_id from the node's `baseDeviceInfos` (fakenodes.py
   makes that hardware up: stable, unique IPs per node and chip).

Like the real plugin, it skips a pod that already has `huawei.com/AscendReal` (Volcano's or
its own), and writes nothing for pods that request no `huawei.com/Ascend910`.

Fault injection, through node annotations a test sets (`set_chip_ips_down`, `plugin_down`):
- `densenet.dev/sim-chip-ip-down: "3,5"`: the plugin cannot read those chips' IPs, and writes
  `"device_ip": "-1"` for them (`api.DeviceIPErrorCodeStr`, what `getDeviceListIP` writes when
  DCMI fails);
- `densenet.dev/sim-device-plugin: down`: the plugin is not running on that node; its pods
  wait, unannotated, until the annotation goes.

Where it departs from the real plugin, on purpose:
- Recovery: once a chip's IP reads again, it rewrites the configuration of the pods it gave
  "-1" (only if nobody changed that annotation since). The real plugin never rewrites a pod
  that has AscendReal: there a "-1" sticks until the pod is recreated.
- A pod whose configuration annotation someone else wrote (without AscendReal: a test playing
  a hostile writer) is left alone; the real plugin would overwrite it. Patches carry the pod's
  resourceVersion, so a write that races another one is retried on the next pass, not lost.
- The chips are chosen when the plugin first sees the pod bound, not in kubelet's Allocate;
  without Volcano the real kubelet picks any free chips (the plugin's GetPreferredAllocation
  is "not supported"), here they follow Volcano's ring rule whether Volcano runs or not, and
  kltDev equals AscendReal unless Volcano's annotation chose the chips.
- Under Volcano, the real plugin marks the pod taken (`predicate-time` = MaxUint64) in
  Allocate; here that is part of the one patch.

Left out: the plugin's gRPC API (ListAndWatch, Allocate: KWOK has no kubelet; capacity is
static on the node), device health and the fault ConfigMaps (`mindx-dl-deviceinfo-<node>`),
node labels it writes (`servertype`, ...), virtual NPUs (`huawei.com/Ascend910-2c`...), A5's
`huawei.com/npu` and `levelList`, 310/310P, soft sharing, and the env and mounts Allocate
returns (`ASCEND_VISIBLE_DEVICES`, /dev/davinciN).

    python hack/deviceplugin.py --kubeconfig PATH [--delay 0.5] [--ready-file PATH]

controlplane.py starts it with the cluster and stops it with the cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import fakenodes
from fakenodes import NPU_RESOURCE, Target, kubectl_of
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines
from testsupport import TERMINAL_PHASES
from urllib3.exceptions import HTTPError

KLT_DEV_ANNOTATION = "huawei.com/kltDev"
REAL_ANNOTATION = "huawei.com/AscendReal"
CONFIG_ANNOTATION = "ascend.kubectl.kubernetes.io/ascend-910-configuration"
VOLCANO_ANNOTATION = NPU_RESOURCE  # the chips Volcano chose: "Ascend910-0,Ascend910-1"
PREDICATE_TIME_ANNOTATION = "predicate-time"
TAKEN = "18446744073709551615"  # MaxUint64: what the plugin writes in predicate-time once used
CHIP_PREFIX = "Ascend910-"
IP_ERROR = "-1"  # api.DeviceIPErrorCodeStr
IP_DOWN_ANNOTATION = "densenet.dev/sim-chip-ip-down"
PLUGIN_ANNOTATION = "densenet.dev/sim-device-plugin"
PLUGIN_DOWN = "down"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
DEFAULT_DELAY = 0.5
# Volcano's 910 x8 handler (ascend910old/module910x8 getNPUAllocPriorityArray): for a request
# of 1, 2 or 4 chips, the free counts of an HCCS ring it prefers, best fit first.
RING_PRIORITY: Mapping[int, tuple[int, ...]] = {1: (1, 3, 2, 4), 2: (2, 4, 3), 4: (4,)}
RING_SIZE = 4
RING_NODE_TYPES = ("module", "")  # accelerator-type of a 910 x8 server ("" : label absent)

log = logging.getLogger("deviceplugin")


# ---------------------------------------------------------------------------------------------
# Nodes (pure)


@dataclasses.dataclass(frozen=True)
class AscendNode:
    """What the plugin on a node knows of it: its chips, their IPs, and its super pod."""

    name: str
    accelerator_type: str  # "" when the label is absent
    chips: int
    host_ip: str
    super_pod_id: int
    server_index: int
    device_ips: tuple[str, ...]  # by chip id
    super_device_ids: tuple[int, ...]
    ips_down: frozenset[int] = frozenset()
    plugin_down: bool = False

    def device_ip(self, chip: int) -> str:
        return IP_ERROR if chip in self.ips_down else self.device_ips[chip]


def parse_chips(text: str | None) -> list[int] | None:
    """ "Ascend910-4,Ascend910-5" or "4,5" -> [4, 5]; None when empty or malformed."""
    chips = []
    for part in (text or "").split(","):
        digits = part.strip().removeprefix(CHIP_PREFIX)
        if not digits.isascii() or not digits.isdigit():
            return None
        chips.append(int(digits))
    return chips


def chip_names(chips: Iterable[int]) -> str:
    """The ids as the plugin joins them: sorted as strings (Go's sort.Strings), so "-10"
    comes before "-2"."""
    return ",".join(sorted(f"{CHIP_PREFIX}{c}" for c in chips))


def _first_internal_ip(node: Mapping[str, Any]) -> str | None:
    """The first InternalIP that parses (kubeclient GetNodeIp)."""
    for address in (node.get("status") or {}).get("addresses") or []:
        if address.get("type") == "InternalIP":
            with contextlib.suppress(ValueError):
                return str(ipaddress.ip_address(address.get("address", "")))
    return None


def _int_annotation(annotations: Mapping[str, str], key: str) -> int:
    try:
        return int(annotations.get(key, fakenodes.NO_SUPER_POD))
    except ValueError:
        return fakenodes.NO_SUPER_POD


def _chip_infos(
    node: Mapping[str, Any], chips: int, server_index: int
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Each chip's IP and super-device id: from `baseDeviceInfos`, else from the node's slot."""
    annotations = node["metadata"].get("annotations") or {}
    try:
        infos = json.loads(annotations[fakenodes.BASE_DEVICE_INFOS_ANNOTATION])
    except (KeyError, ValueError):
        infos = {}
    slot = fakenodes.node_slot(node)
    ips, ids = [], []
    for chip in range(chips):
        info = infos.get(f"{CHIP_PREFIX}{chip}") if isinstance(infos, dict) else None
        if isinstance(info, dict) and "IP" in info:
            ips.append(str(info["IP"]))
            ids.append(int(info.get("SuperDeviceID", 0)))
        else:  # a node made before baseDeviceInfos: the same IPs, from its slot
            ips.append(
                fakenodes.device_ip(slot, chip) if slot is not None and chip < 16 else IP_ERROR
            )
            ids.append(fakenodes.super_device_id(server_index, chip))
    return tuple(ips), tuple(ids)


def ascend_node(node: Mapping[str, Any]) -> AscendNode | None:
    """The node as the plugin sees it; None unless it is a fake node with Ascend 910 chips."""
    meta = node.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    try:
        chips = int((node.get("status") or {}).get("allocatable", {}).get(NPU_RESOURCE, 0))
    except ValueError:
        chips = 0
    host_ip = _first_internal_ip(node)
    if annotations.get(FAKE_NODE_ANNOTATION) != "fake" or chips <= 0 or host_ip is None:
        return None
    server_index = _int_annotation(annotations, fakenodes.SERVER_INDEX_ANNOTATION)
    ips, ids = _chip_infos(node, chips, server_index)
    return AscendNode(
        name=meta["name"],
        accelerator_type=(meta.get("labels") or {}).get(fakenodes.ACCELERATOR_TYPE_LABEL, ""),
        chips=chips,
        host_ip=host_ip,
        super_pod_id=_int_annotation(annotations, fakenodes.SUPER_POD_ID_ANNOTATION),
        server_index=server_index,
        device_ips=ips,
        super_device_ids=ids,
        ips_down=frozenset(parse_chips(annotations.get(IP_DOWN_ANNOTATION)) or ()),
        plugin_down=annotations.get(PLUGIN_ANNOTATION) == PLUGIN_DOWN,
    )


# ---------------------------------------------------------------------------------------------
# Pods (pure)


def _amount(container: Mapping[str, Any]) -> int:
    resources = container.get("resources") or {}
    value = (resources.get("limits") or {}).get(NPU_RESOURCE) or (
        resources.get("requests") or {}
    ).get(NPU_RESOURCE)
    try:
        return max(int(str(value or 0)), 0)
    except ValueError:
        return 0


def requested_chips(pod: Mapping[str, Any]) -> int:
    """The chips kubelet allocates to the pod: its containers' sum, or its largest init
    container's if larger (init containers run before, and their chips are reused)."""
    spec = pod.get("spec") or {}
    regular = sum(_amount(c) for c in spec.get("containers") or ())
    init = max((_amount(c) for c in spec.get("initContainers") or ()), default=0)
    return max(regular, init)


def is_live(pod: Mapping[str, Any]) -> bool:
    """Bound and not Succeeded/Failed: the plugin's active pods (GetActivePodListCache)."""
    return (
        bool((pod.get("spec") or {}).get("nodeName"))
        and (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES
    )


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return (pod.get("metadata") or {}).get("annotations") or {}


def held_chips(pod: Mapping[str, Any]) -> tuple[set[int], set[int]]:
    """(real, kubelet) chips a pod holds, from its annotations. A configuration written by
    someone else (no AscendReal) holds the chips it lists."""
    annotations = _annotations(pod)
    real = parse_chips(annotations.get(REAL_ANNOTATION))
    if real is None:
        with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
            devices = json.loads(annotations.get(CONFIG_ANNOTATION, ""))["devices"]
            real = [int(d["device_id"]) for d in devices]
    kubelet = parse_chips(annotations.get(KLT_DEV_ANNOTATION))
    return set(real or ()), set(kubelet if kubelet is not None else real or ())


# ---------------------------------------------------------------------------------------------
# Which chips (pure)


def ring_best_fit(free: Iterable[int], request: int, chips: int = 8) -> list[int] | None:
    """Volcano's choice on a 910 x8 server (module910x8.selectNPUFromNode): all 8 for 8; for
    1, 2 or 4, the first HCCS ring (0-3 left, 4-7 right, left first) whose free count equals
    the next value of RING_PRIORITY[request], and its lowest free ids. None: no fit."""
    ordered = sorted(free)
    if request == chips:
        return ordered if len(ordered) == chips else None
    left = [c for c in ordered if c < RING_SIZE]
    right = [c for c in ordered if c >= RING_SIZE]
    for priority in RING_PRIORITY.get(request, ()):
        for ring in (left, right):
            if len(ring) == priority:
                return ring[:request]
    return None


def choose_chips(node: AscendNode, free: Iterable[int], request: int) -> list[int] | None:
    """The chips Volcano would pick: ring best fit on a 910 node, else the lowest free ids
    (also on a 910 when no ring fits: what kubelet does when Volcano is not there)."""
    ordered = sorted(free)
    if request <= 0 or len(ordered) < request:
        return None
    if node.accelerator_type in RING_NODE_TYPES:
        chosen = ring_best_fit(ordered, request, node.chips)
        if chosen is not None:
            return chosen
        log.warning("%s: no HCCS ring fits %d chips in free %s", node.name, request, ordered)
    return ordered[:request]


@dataclasses.dataclass(frozen=True)
class Allocation:
    """A pod's chips: `real` (AscendReal), `kubelet` (kltDev), since when, and when to write."""

    node: str
    real: tuple[int, ...]
    kubelet: tuple[int, ...]
    volcano: bool
    seen: float
    due: float


def allocate(
    node: AscendNode,
    pod: Mapping[str, Any],
    held_real: set[int],
    held_kubelet: set[int],
    *,
    now: float,
    delay: float,
) -> Allocation | None:
    """The pod's chips on `node`, given what other live pods hold; None when they are not free.

    kubelet takes the lowest ids free in its own accounting (kltDev). The real chips are
    Volcano's annotation when it names as many valid chips as the pod asks for, else
    `choose_chips` among the chips no pod holds, and then kltDev is the same chips when kubelet
    counts them free.
    """
    request = requested_chips(pod)
    kubelet_free = [c for c in range(node.chips) if c not in held_kubelet]
    volcano = parse_chips(_annotations(pod).get(VOLCANO_ANNOTATION))
    if volcano and len(set(volcano)) == request and all(0 <= c < node.chips for c in volcano):
        if len(kubelet_free) < request:
            return None
        real, kubelet = sorted(set(volcano)), kubelet_free[:request]
    else:
        chosen = choose_chips(node, (c for c in range(node.chips) if c not in held_real), request)
        if chosen is None:
            return None
        # kubelet picked these chips, unless it counts one of them as taken (by a pod whose
        # chips Volcano chose): then its own lowest free ids.
        taken = any(c in held_kubelet for c in chosen)
        real, kubelet, volcano = chosen, kubelet_free[:request] if taken else chosen, None
    return Allocation(node.name, tuple(real), tuple(kubelet), bool(volcano), now, now + delay)


# ---------------------------------------------------------------------------------------------
# The annotation (pure)


def configuration(pod_name: str, pod_uid: str, node: AscendNode, chips: Iterable[int]) -> str:
    """`ascend.kubectl.kubernetes.io/ascend-910-configuration` as the plugin writes it: Go's
    json.Marshal of `Instance` (pkg/common/proto.go, HEAD), fields in struct order, no spaces."""
    devices = [
        {
            "device_id": str(chip),
            "device_ip": node.device_ip(chip),
            "super_device_id": str(node.super_device_ids[chip]),
        }
        for chip in sorted(chips)
    ]
    instance = {
        "pod_name": pod_name,
        "server_id": pod_uid,
        "host_ip": node.host_ip,
        "super_pod_id": node.super_pod_id,
        "devices": devices,
        "rack_id": 0,
        "server_index": str(node.server_index),
        "server_ip": node.host_ip,
    }
    return json.dumps(instance, separators=(",", ":"))


def pod_annotations(pod: Mapping[str, Any], node: AscendNode, alloc: Allocation) -> dict[str, str]:
    """The annotations of the plugin's one patch (AddPodAnnotation), plus predicate-time for a
    pod Volcano placed."""
    meta = pod["metadata"]
    annotations = {
        KLT_DEV_ANNOTATION: chip_names(alloc.kubelet),
        REAL_ANNOTATION: chip_names(alloc.real),
        CONFIG_ANNOTATION: configuration(meta["name"], meta["uid"], node, alloc.real),
    }
    if alloc.volcano:
        annotations[PREDICATE_TIME_ANNOTATION] = TAKEN
    return annotations


# ---------------------------------------------------------------------------------------------
# The plugin's decisions (no I/O)


@dataclasses.dataclass(frozen=True)
class PodPatch:
    """A merge patch of a pod's annotations, on condition that the pod is still at
    `resource_version`."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    annotations: dict[str, str]
    chips: tuple[int, ...]
    waited: float  # seconds since the plugin first saw the pod bound
    what: str = "annotated"  # or "rewrote" (a recovered IP)

    def body(self) -> dict[str, Any]:
        return {
            "metadata": {"resourceVersion": self.resource_version, "annotations": self.annotations}
        }


class SimulatedDevicePlugin:
    """The Ascend device plugin of every fake node, as decisions: `step(nodes, pods, now)` says
    which pods to patch; `written(patch)` / `forget(uid)` report what became of a patch.

    See the module docstring for what it stands in for and how faithfully.
    """

    def __init__(self, delay: float = DEFAULT_DELAY) -> None:
        self.delay = delay
        self.pending: dict[str, Allocation] = {}  # uid -> chips taken, not yet written
        self.ours: dict[str, tuple[str, tuple[int, ...]]] = {}  # uid -> (configuration, chips)
        self._nodes: dict[tuple[str, str], AscendNode | None] = {}
        self._short: set[str] = set()  # pods whose chips were not free (warned once)

    def step(
        self, nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]], now: float
    ) -> list[PodPatch]:
        """The patches due now. Chips are taken (and kept in `pending`) the first time a pod is
        seen; the patch comes once `delay` has passed."""
        ascend = self._ascend_nodes(nodes)
        by_node: dict[str, list[Mapping[str, Any]]] = {}
        for pod in pods:
            if is_live(pod) and pod["spec"]["nodeName"] in ascend:
                by_node.setdefault(pod["spec"]["nodeName"], []).append(pod)
        live = {p["metadata"]["uid"] for group in by_node.values() for p in group}
        for uid in set(self.pending) | set(self.ours) | self._short:
            if uid not in live:
                self.forget(uid)
        patches = []
        for name, group in sorted(by_node.items()):
            if not ascend[name].plugin_down:
                patches += self._node_step(ascend[name], group, now)
        return patches

    def _ascend_nodes(self, nodes: Iterable[Mapping[str, Any]]) -> dict[str, AscendNode]:
        """The nodes with chips, parsed once per resourceVersion."""
        found, cache = {}, {}
        for node in nodes:
            meta = node["metadata"]
            key = (meta["name"], meta.get("resourceVersion", ""))
            parsed = self._nodes[key] if key in self._nodes else ascend_node(node)
            cache[key] = parsed
            if parsed is not None:
                found[parsed.name] = parsed
        self._nodes = cache
        return found

    def _node_step(
        self, node: AscendNode, pods: Sequence[Mapping[str, Any]], now: float
    ) -> list[PodPatch]:
        held_real: set[int] = set()
        held_kubelet: set[int] = set()
        for pod in pods:
            alloc = self.pending.get(pod["metadata"]["uid"])
            real, kubelet = (set(alloc.real), set(alloc.kubelet)) if alloc else held_chips(pod)
            held_real |= real
            held_kubelet |= kubelet
        patches = []
        for pod in sorted(pods, key=lambda p: (p["metadata"].get("creationTimestamp", ""),
                                               p["metadata"]["name"])):  # fmt: skip
            patch = self._pod_step(node, pod, held_real, held_kubelet, now)
            if patch is not None:
                patches.append(patch)
        return patches

    def _pod_step(
        self,
        node: AscendNode,
        pod: Mapping[str, Any],
        held_real: set[int],
        held_kubelet: set[int],
        now: float,
    ) -> PodPatch | None:
        annotations, uid = _annotations(pod), pod["metadata"]["uid"]
        if requested_chips(pod) == 0:
            return None
        if REAL_ANNOTATION in annotations:
            return self._recovery(node, pod)
        if CONFIG_ANNOTATION in annotations:
            return None  # someone else's configuration: left alone (see the module docstring)
        alloc = self.pending.get(uid)
        if alloc is None:
            alloc = allocate(node, pod, held_real, held_kubelet, now=now, delay=self.delay)
            if alloc is None:  # tried again on each pass, until chips free up
                if uid not in self._short:
                    log.warning("%s/%s: %d chips not free on %s", pod["metadata"]["namespace"],
                                pod["metadata"]["name"], requested_chips(pod), node.name)  # fmt: skip
                self._short.add(uid)
                return None
            self.pending[uid] = alloc
            held_real.update(alloc.real)
            held_kubelet.update(alloc.kubelet)
        if now < alloc.due:
            return None
        return self._patch(pod, pod_annotations(pod, node, alloc), alloc.real, now - alloc.seen)

    def _recovery(self, node: AscendNode, pod: Mapping[str, Any]) -> PodPatch | None:
        """A rewrite of a configuration this plugin wrote with "-1" IPs, once they read again
        and nobody changed the annotation since."""
        uid = pod["metadata"]["uid"]
        if uid not in self.ours:
            return None
        written, chips = self.ours[uid]
        if _annotations(pod).get(CONFIG_ANNOTATION) != written:
            return None
        fresh = configuration(pod["metadata"]["name"], uid, node, chips)
        if fresh == written or f'"device_ip":"{IP_ERROR}"' not in written:
            return None
        return dataclasses.replace(
            self._patch(pod, {CONFIG_ANNOTATION: fresh}, chips, 0.0), what="rewrote"
        )

    @staticmethod
    def _patch(
        pod: Mapping[str, Any], annotations: dict[str, str], chips: Sequence[int], waited: float
    ) -> PodPatch:
        meta = pod["metadata"]
        return PodPatch(meta["namespace"], meta["name"], meta["uid"],
                        meta.get("resourceVersion", ""), annotations, tuple(chips), waited)  # fmt: skip

    def written(self, patch: PodPatch) -> None:
        """The patch was applied."""
        self.pending.pop(patch.uid, None)
        if CONFIG_ANNOTATION in patch.annotations:
            self.ours[patch.uid] = (patch.annotations[CONFIG_ANNOTATION], patch.chips)

    def forget(self, uid: str) -> None:
        """The pod is gone or terminal: its chips are free again."""
        self.pending.pop(uid, None)
        self.ours.pop(uid, None)
        self._short.discard(uid)


# ---------------------------------------------------------------------------------------------
# Against the API server: list-then-watch caches and the loop


class Informer:
    """A list-then-watch cache of one kind of object, as plain dicts (as client-go's informers
    keep one): relists when a watch ends or fails. `wake` is set on every change."""

    def __init__(self, list_fn: Callable[..., Any], wake: threading.Event, **params: Any) -> None:
        self.list_fn = list_fn
        self.params = params
        self.wake = wake
        self.synced = threading.Event()
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, Any]] = {}

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    def put(self, obj: dict[str, Any]) -> None:
        """Store an object unless the cache already holds a newer version of it."""
        key = obj["metadata"]["uid"]
        with self._lock:
            old = self._objects.get(key)
            if old is None or _version(old) <= _version(obj):
                self._objects[key] = obj

    def run(self) -> None:
        while True:
            try:
                self._watch(self._list())
            except (ApiException, HTTPError, OSError, ValueError) as error:
                log.warning("watch of %s failed (%s); relisting", self.list_fn.__name__, error)
                time.sleep(1)

    def _list(self) -> str:
        body = json.loads(self.list_fn(_preload_content=False, **self.params).data)
        with self._lock:
            self._objects = {o["metadata"]["uid"]: o for o in body["items"]}
        self.synced.set()
        self.wake.set()
        return str(body["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> None:
        response = self.list_fn(watch=True, resource_version=version, timeout_seconds=240,
                                allow_watch_bookmarks=True, _preload_content=False,
                                **self.params)  # fmt: skip
        try:
            for line in iter_resp_lines(response):
                event = json.loads(line) if line else {}
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    return  # e.g. 410 Gone: relist
                if kind in ("ADDED", "MODIFIED"):
                    self.put(obj)
                elif kind == "DELETED":
                    with self._lock:
                        self._objects.pop(obj["metadata"]["uid"], None)
                self.wake.set()
        finally:
            response.release_conn()


def _version(obj: Mapping[str, Any]) -> int:
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except ValueError:
        return 0


def _apply(core: Any, pods: Informer, plugin: SimulatedDevicePlugin, patch: PodPatch) -> None:
    try:
        response = core.patch_namespaced_pod(
            patch.name, patch.namespace, patch.body(),
            _content_type="application/merge-patch+json", _preload_content=False,
        )  # fmt: skip
    except ApiException as error:
        if error.status == 404:
            plugin.forget(patch.uid)
        elif error.status != 409:  # 409: changed since; the next pass sees the new version
            log.warning("patching %s/%s failed: %s", patch.namespace, patch.name, error.reason)
        return
    pods.put(json.loads(response.data))
    plugin.written(patch)
    log.info("%s %s/%s: chips %s, %.2f s after the plugin saw it bound", patch.what,
             patch.namespace, patch.name, list(patch.chips), patch.waited)  # fmt: skip


def serve(
    kubeconfig: Path,
    plugin: SimulatedDevicePlugin,
    *,
    interval: float = 0.1,
    ready_file: Path | None = None,
) -> None:
    """Runs the plugin against the cluster until the process ends: watches nodes and bound
    pods, and applies the patches `plugin.step` asks for, at least every `interval` s."""
    api = config.new_client_from_config(config_file=str(kubeconfig))
    core = client.CoreV1Api(api)
    wake = threading.Event()
    nodes = Informer(core.list_node, wake)
    pods = Informer(core.list_pod_for_all_namespaces, wake, field_selector="spec.nodeName!=")
    for informer in (nodes, pods):
        threading.Thread(target=informer.run, daemon=True).start()
        informer.synced.wait()
    if ready_file is not None:
        ready_file.write_text(f"{time.time()}\n")
    log.info("serving the Ascend chips of every fake node (delay %.2f s)", plugin.delay)
    while True:
        changed = wake.wait(interval)
        if not changed and not plugin.pending:
            continue
        wake.clear()
        for patch in plugin.step(nodes.items(), pods.items(), time.monotonic()):
            _apply(core, pods, plugin, patch)


# ---------------------------------------------------------------------------------------------
# Fault injection, for tests and by hand (kubectl annotate does the same)


def _annotate_nodes(
    target: Target, nodes: Sequence[str] | None, key: str, value: str | None
) -> list[str]:
    """Sets (or, for None, removes) the annotation on `nodes`, default every fake Ascend node."""
    kubectl = kubectl_of(target)
    names = list(nodes) if nodes is not None else fake_ascend_nodes(kubectl)
    change = f"{key}={value}" if value is not None else f"{key}-"
    for name in names:
        kubectl("annotate", "node", name, "--overwrite", change)
    return names


def fake_ascend_nodes(target: Target) -> list[str]:
    """The names of the nodes the plugin serves."""
    return [n.name for n in map(ascend_node, fakenodes.list_nodes(target)) if n is not None]


def set_chip_ips_down(
    target: Target, chips: Iterable[int], nodes: Sequence[str] | None = None
) -> list[str]:
    """From now on the plugin cannot read these chips' IPs on `nodes` (default: every fake
    Ascend node) and writes "-1" for them; an empty `chips` makes every IP readable again
    (and the pods given "-1" are rewritten). Returns the nodes."""
    value = ",".join(str(c) for c in sorted(chips))
    return _annotate_nodes(target, nodes, IP_DOWN_ANNOTATION, value or None)


def set_plugin_down(target: Target, down: bool, nodes: Sequence[str] | None = None) -> list[str]:
    """The plugin stops (`down`) or resumes serving `nodes` (default: every fake Ascend node).
    While it is down on a node, the node's pods stay unannotated, as when the plugin's own pod
    there is not running. Returns the nodes."""
    return _annotate_nodes(target, nodes, PLUGIN_ANNOTATION, PLUGIN_DOWN if down else None)


@contextlib.contextmanager
def plugin_down(target: Target, nodes: Sequence[str] | None = None) -> Iterator[list[str]]:
    """`set_plugin_down` for the duration."""
    names = set_plugin_down(target, True, nodes)
    try:
        yield names
    finally:
        set_plugin_down(target, False, names)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--delay", type=float, default=DEFAULT_DELAY,
                        help="seconds from a pod bound to its annotation")  # fmt: skip
    parser.add_argument("--ready-file", type=Path, help="written once the caches are synced")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout
    )
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.kubeconfig, SimulatedDevicePlugin(args.delay), ready_file=args.ready_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
