"""hack/deviceplugin.py, the simulated Ascend device plugin: its chip choice and annotation
(unit: no cluster), and the plugin process that runs beside the local cluster (integration)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import controlplane
import deviceplugin as dp
import fakenodes
import localcluster
import pytest
from hypothesis import given
from hypothesis import strategies as st
from localcluster import Cluster
from testsupport import Kubectl, is_running, wait_for

NPU = fakenodes.NPU_RESOURCE


def node(product: str = "910", slot: int = 0, name: str = "n0", **options: Any) -> dict[str, Any]:
    return fakenodes.node_manifest(name, slot, product=product, **options)


def pod(name: str, chips: int, node_name: str = "n0", **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}",
                     "resourceVersion": "7", "creationTimestamp": f"2026-01-01T00:00:{name}",
                     "annotations": annotations},
        "spec": {"nodeName": node_name,
                 "containers": [{"name": "c", "resources": {"limits": {NPU: str(chips)}}}]},
        "status": {"phase": "Running"},
    }  # fmt: skip


class Sim:
    """The plugin's decisions against an in-memory cluster: patches are applied at once."""

    def __init__(self, *nodes: dict[str, Any], delay: float = 0.5) -> None:
        self.plugin = dp.SimulatedDevicePlugin(delay)
        self.nodes = list(nodes)
        self.pods: dict[str, dict[str, Any]] = {}
        self.now = 0.0

    def run(self, seconds: float = 1.0) -> list[dp.PodPatch]:
        """Two passes, `seconds` apart, writing every patch."""
        applied = []
        for _ in range(2):
            for patch in self.plugin.step(self.nodes, list(self.pods.values()), self.now):
                meta = self.pods[patch.name]["metadata"]
                meta["annotations"] = {**meta["annotations"], **patch.annotations}
                self.plugin.written(patch)
                applied.append(patch)
            self.now += seconds
        return applied

    def add(self, name: str, chips: int, node_name: str = "n0", **annotations: str) -> list[int]:
        """Adds the pod, runs the plugin, returns the pod's chips ([] when it got none)."""
        self.pods[name] = pod(name, chips, node_name, **annotations)
        self.run()
        return self.chips(name)

    def chips(self, name: str) -> list[int]:
        real = self.pods[name]["metadata"]["annotations"].get(dp.REAL_ANNOTATION)
        return sorted(dp.parse_chips(real) or [])

    def config(self, name: str) -> dict[str, Any]:
        return json.loads(self.pods[name]["metadata"]["annotations"][dp.CONFIG_ANNOTATION])


# ---------------------------------------------------------------------------------------------
# Which chips: Volcano's ring best fit on a 910, the lowest free ids elsewhere


@pytest.mark.parametrize(
    ("free", "wanted", "chosen"),
    [
        (range(8), 1, [0]),
        (range(1, 8), 2, [4, 5]),  # left 3 free, right 4: no ring has exactly 2; 4 first
        ([1, 2, 3, 6, 7], 1, [1]),  # left 3, right 2: priority 1, then 3 -> left
        ([1, 2, 3, 6, 7], 2, [6, 7]),  # the right ring has exactly 2
        ([0, 1, 4, 5, 6, 7], 1, [0]),  # left has 2, right 4: [1, 3, 2, 4] -> 2 comes first
        (range(8), 4, [0, 1, 2, 3]),
        (range(4, 8), 4, [4, 5, 6, 7]),
        ([0, 1, 4, 5], 4, None),  # 4 free, but no whole ring
        (range(8), 8, list(range(8))),
        (range(1, 8), 8, None),
        (range(8), 3, None),  # Volcano refuses 3, 5, 6 and 7 on a 910
    ],
)
def test_ring_best_fit_is_volcano_s_choice(free: Any, wanted: int, chosen: Any) -> None:
    assert dp.ring_best_fit(free, wanted) == chosen


def test_a_sequence_on_an_empty_910_follows_the_rings() -> None:
    sim = Sim(node("910"))
    assert sim.add("a", 1) == [0]
    assert sim.add("b", 2) == [4, 5]
    assert sim.add("c", 1) == [1]
    assert sim.add("d", 2) == [2, 3]  # both rings have exactly 2 free: the left one first
    assert sim.add("e", 2) == [6, 7]
    assert sim.add("f", 1) == []  # the node is full: it waits


def test_two_pods_of_four_get_one_ring_each_and_a_freed_ring_is_reused() -> None:
    sim = Sim(node("910"))
    assert sim.add("a", 4) == [0, 1, 2, 3]
    assert sim.add("b", 4) == [4, 5, 6, 7]
    sim.pods["a"]["status"]["phase"] = "Succeeded"  # terminal: its chips are free
    assert sim.add("c", 4) == [0, 1, 2, 3]
    del sim.pods["b"]  # deleted
    assert sim.add("d", 8) == []  # c still holds 0-3
    del sim.pods["c"]
    sim.run()
    assert sim.chips("d") == list(range(8))


def test_a_910_falls_back_to_the_lowest_free_chips_when_no_ring_fits() -> None:
    sim = Sim(node("910"))
    assert [sim.add(n, 2) for n in "abc"] == [[0, 1], [2, 3], [4, 5]]
    del sim.pods["a"], sim.pods["b"]  # the left ring free, the right one half used
    sim.pods["d"] = pod("d", 2)  # the right ring's 6, 7 (best fit), then:
    assert sim.add("e", 3) == [0, 1, 2]  # 3 is not a Volcano size: kubelet takes any
    assert sim.chips("d") == [6, 7]
    assert sim.add("f", 3) == []
    four_free = dp.ascend_node(node("910"))
    assert four_free is not None and dp.choose_chips(four_free, [0, 1, 4, 5], 4) == [0, 1, 4, 5]


@pytest.mark.parametrize("product", ["910b", "910b-16", "a3", "a3-superpod"])
def test_other_products_take_the_lowest_free_chips(product: str) -> None:
    sim = Sim(node(product))
    chips = fakenodes.PRODUCTS[product].chips
    assert sim.add("a", 1) == [0]
    assert sim.add("b", 2) == [1, 2]
    assert sim.add("c", chips - 3) == list(range(3, chips))
    assert sim.add("d", 1) == []


def test_volcano_s_chips_are_honoured_and_kubelet_keeps_its_own_ids() -> None:
    sim = Sim(node("910"))
    assert sim.add("v", 2, **{dp.VOLCANO_ANNOTATION: "Ascend910-4,Ascend910-5"}) == [4, 5]
    annotations = sim.pods["v"]["metadata"]["annotations"]
    assert annotations[dp.KLT_DEV_ANNOTATION] == "Ascend910-0,Ascend910-1"  # kubelet's picks
    assert annotations[dp.PREDICATE_TIME_ANNOTATION] == dp.TAKEN
    assert [d["device_id"] for d in sim.config("v")["devices"]] == ["4", "5"]
    # A pod without Volcano's annotation is not given Volcano's chips again.
    assert sim.add("w", 4) == [0, 1, 2, 3]
    # kubelet counts 0 and 1 as v's: its own ids for w are the lowest it counts free.
    assert sim.pods["w"]["metadata"]["annotations"][dp.KLT_DEV_ANNOTATION] == (
        "Ascend910-2,Ascend910-3,Ascend910-4,Ascend910-5"
    )
    assert dp.PREDICATE_TIME_ANNOTATION not in sim.pods["w"]["metadata"]["annotations"]


def test_a_volcano_annotation_of_the_wrong_size_is_ignored() -> None:
    sim = Sim(node("910"))
    assert sim.add("v", 4, **{dp.VOLCANO_ANNOTATION: "Ascend910-4,Ascend910-5"}) == [0, 1, 2, 3]


@given(
    product=st.sampled_from(sorted(fakenodes.PRODUCTS)),
    requests=st.lists(st.integers(1, 16), min_size=1, max_size=12),
    ended=st.sets(st.integers(0, 11)),
)
def test_no_chip_is_ever_given_twice(product: str, requests: list[int], ended: set[int]) -> None:
    sim = Sim(node(product))
    chips = fakenodes.PRODUCTS[product].chips
    for i, request in enumerate(requests):
        got = sim.add(f"p{i:02}", request)
        assert got == [] or (len(got) == request and all(0 <= c < chips for c in got))
        if i in ended:
            sim.pods[f"p{i:02}"]["status"]["phase"] = "Failed"
        live = [sim.chips(p) for p, v in sim.pods.items() if v["status"]["phase"] == "Running"]
        flat = [c for held in live for c in held]
        assert len(flat) == len(set(flat))


# ---------------------------------------------------------------------------------------------
# The annotation


def test_the_configuration_is_the_plugin_s_json_exactly() -> None:
    sim = Sim(node("910", slot=2))
    sim.add("p", 2)
    raw = sim.pods["p"]["metadata"]["annotations"][dp.CONFIG_ANNOTATION]
    assert raw == (
        '{"pod_name":"p","server_id":"uid-p","host_ip":"172.18.0.13","super_pod_id":-2,'
        '"devices":[{"device_id":"0","device_ip":"192.168.100.18","super_device_id":"0"},'
        '{"device_id":"1","device_ip":"192.168.101.18","super_device_id":"0"}],'
        '"rack_id":0,"server_index":"-2","server_ip":"172.18.0.13"}'
    )
    pairs = json.loads(raw, object_pairs_hook=list)
    assert [k for k, _ in pairs] == ["pod_name", "server_id", "host_ip", "super_pod_id",
                                     "devices", "rack_id", "server_index", "server_ip"]  # fmt: skip
    config = dict(pairs)
    assert [type(config[k]) for k in ("super_pod_id", "rack_id", "server_index")] == [
        int, int, str,
    ]  # fmt: skip
    assert all(isinstance(v, str) for d in config["devices"] for _, v in d)
    assert [[k for k, _ in d] for d in config["devices"]] == [
        ["device_id", "device_ip", "super_device_id"]
    ] * 2


def test_one_patch_writes_klt_dev_ascend_real_and_the_configuration() -> None:
    sim = Sim(node("a3"))
    sim.pods["p"] = pod("p", 12)
    [patch] = sim.run()
    assert set(patch.annotations) == {
        dp.KLT_DEV_ANNOTATION, dp.REAL_ANNOTATION, dp.CONFIG_ANNOTATION,
    }  # fmt: skip
    # Sorted as Go's sort.Strings sorts them: "Ascend910-10" before "Ascend910-2".
    assert patch.annotations[dp.REAL_ANNOTATION].split(",")[:4] == [
        "Ascend910-0", "Ascend910-1", "Ascend910-10", "Ascend910-11",
    ]  # fmt: skip
    ids = [d["device_id"] for d in sim.config("p")["devices"]]
    assert ids == [str(i) for i in range(12)]  # numeric order
    assert patch.body()["metadata"]["resourceVersion"] == "7"


def test_a3_super_pod_nodes_give_super_pod_ids_and_super_device_ids() -> None:
    sim = Sim(node("a3-superpod", slot=5, super_pod_id=1, server_index=3))
    sim.add("p", 16)
    config = sim.config("p")
    assert config["super_pod_id"] == 1 and config["server_index"] == "3"
    assert [d["super_device_id"] for d in config["devices"]] == [str(48 + i) for i in range(16)]
    assert config["host_ip"] == config["server_ip"] == "172.18.0.16"


def test_the_annotation_waits_for_the_delay() -> None:
    sim = Sim(node("910"), delay=0.5)
    sim.pods["p"] = pod("p", 8)
    assert sim.plugin.step(sim.nodes, [sim.pods["p"]], 10.0) == []
    assert sim.plugin.step(sim.nodes, [sim.pods["p"]], 10.4) == []
    [patch] = sim.plugin.step(sim.nodes, [sim.pods["p"]], 10.5)
    assert patch.waited == pytest.approx(0.5)


def test_pods_that_ask_for_no_npu_or_are_not_on_a_fake_node_are_left_alone() -> None:
    real_node = node("910", slot=1, name="n1")
    del real_node["metadata"]["annotations"][dp.FAKE_NODE_ANNOTATION]
    sim = Sim(node("910"), real_node)
    assert sim.add("none", 0) == []
    assert sim.add("elsewhere", 1, node_name="n1") == []
    assert sim.add("unbound", 1, node_name="") == []
    assert all(p["metadata"]["annotations"] == {} for p in sim.pods.values())


def test_a_pod_with_ascend_real_or_someone_else_s_configuration_is_skipped() -> None:
    sim = Sim(node("910"))
    assert sim.add("volcano", 2, **{dp.REAL_ANNOTATION: "Ascend910-0,Ascend910-1",
                                    dp.CONFIG_ANNOTATION: "{}"}) == [0, 1]  # fmt: skip
    foreign = json.dumps({"devices": [{"device_id": "4", "device_ip": "1.2.3.4"}]})
    sim.add("hostile", 1, **{dp.CONFIG_ANNOTATION: foreign})
    assert sim.pods["hostile"]["metadata"]["annotations"] == {dp.CONFIG_ANNOTATION: foreign}
    assert sim.add("next", 2) == [2, 3]  # 0, 1 (AscendReal) and 4 (listed) are held


def test_unreadable_ips_are_minus_one_and_are_rewritten_once_readable() -> None:
    down = node("910")
    sim = Sim(down)
    dp_annotations = down["metadata"]["annotations"]
    dp_annotations[dp.IP_DOWN_ANNOTATION] = "1,5"
    down["metadata"]["resourceVersion"] = "1"
    sim.add("p", 4)
    assert [d["device_ip"] for d in sim.config("p")["devices"]] == [
        "192.168.100.10", "-1", "192.168.102.10", "192.168.103.10",
    ]  # fmt: skip
    assert sim.run() == []  # nothing changed: nothing written
    del dp_annotations[dp.IP_DOWN_ANNOTATION]
    down["metadata"]["resourceVersion"] = "2"
    [patch] = sim.run()
    assert patch.what == "rewrote" and set(patch.annotations) == {dp.CONFIG_ANNOTATION}
    assert "-1" not in [d["device_ip"] for d in sim.config("p")["devices"]]


def test_a_configuration_changed_by_someone_else_is_not_rewritten() -> None:
    down = node("910")
    down["metadata"]["annotations"][dp.IP_DOWN_ANNOTATION] = "0"
    sim = Sim(down)
    sim.add("p", 1)
    sim.pods["p"]["metadata"]["annotations"][dp.CONFIG_ANNOTATION] = '{"devices": []}'
    down["metadata"]["annotations"] = {
        k: v for k, v in down["metadata"]["annotations"].items() if k != dp.IP_DOWN_ANNOTATION
    }
    down["metadata"]["resourceVersion"] = "9"
    assert sim.run() == []


def test_while_the_plugin_is_down_on_a_node_its_pods_wait() -> None:
    paused = node("910")
    paused["metadata"]["annotations"][dp.PLUGIN_ANNOTATION] = dp.PLUGIN_DOWN
    sim = Sim(paused)
    assert sim.add("p", 8) == []
    del paused["metadata"]["annotations"][dp.PLUGIN_ANNOTATION]
    paused["metadata"]["resourceVersion"] = "3"
    sim.run()
    assert sim.chips("p") == list(range(8))


def test_requested_chips_counts_containers_and_init_containers() -> None:
    p = pod("p", 2)
    p["spec"]["containers"].append({"name": "d", "resources": {"requests": {NPU: "1"}}})
    p["spec"]["initContainers"] = [{"name": "i", "resources": {"limits": {NPU: "4"}}}]
    assert dp.requested_chips(p) == 4
    p["spec"]["initContainers"] = []
    assert dp.requested_chips(p) == 3


def test_parse_chips() -> None:
    assert dp.parse_chips("Ascend910-4,Ascend910-5") == [4, 5]
    assert dp.parse_chips("3, 5") == [3, 5]
    assert dp.parse_chips("") is None and dp.parse_chips("Ascend910-x") is None
    assert dp.chip_names([10, 2, 1]) == "Ascend910-1,Ascend910-10,Ascend910-2"


# ---------------------------------------------------------------------------------------------
# The fake hardware (fakenodes.py) the plugin reads


def test_device_ips_are_unique_across_the_cluster_and_stable() -> None:
    ips = [fakenodes.device_ip(s, c) for s in range(fakenodes.MAX_NODES) for c in range(16)]
    assert len(set(ips)) == len(ips)
    assert fakenodes.device_ip(0, 0) == "192.168.100.10"
    assert fakenodes.device_ip(1, 5) == "192.168.101.15"  # chip i: subnet 100 + i % 4
    assert {fakenodes.device_ip(s, 4).split(".")[2] for s in range(60)} == {"100"}


@pytest.mark.parametrize("product", sorted(fakenodes.PRODUCTS))
def test_product_nodes_carry_what_the_real_plugin_writes(product: str) -> None:
    kind = fakenodes.PRODUCTS[product]
    place = (0, 2) if kind.super_pod else (-2, -2)
    manifest = node(product, slot=3, super_pod_id=place[0], server_index=place[1])
    labels, annotations = manifest["metadata"]["labels"], manifest["metadata"]["annotations"]
    assert labels["accelerator-type"] == kind.accelerator_type
    assert labels["accelerator"] == "huawei-Ascend910" and labels["type"] == "kwok"
    assert manifest["status"]["allocatable"][NPU] == str(kind.chips)
    infos = json.loads(annotations["baseDeviceInfos"])
    assert len(infos) == kind.chips and list(infos) == sorted(infos)
    assert infos["Ascend910-1"] == {
        "IP": fakenodes.device_ip(3, 1), "SuperDeviceID": 33 if kind.super_pod else 0,
    }  # fmt: skip
    expected = ("0", "2") if kind.super_pod else ("-2", "-2")
    assert (annotations["superPodID"], annotations["serverIndex"]) == expected
    parsed = dp.ascend_node(manifest)
    assert parsed is not None and parsed.chips == kind.chips


def test_a_node_without_base_device_infos_gets_the_same_ips_from_its_slot() -> None:
    manifest = node("910", slot=4)
    with_infos = dp.ascend_node(manifest)
    del manifest["metadata"]["annotations"]["baseDeviceInfos"]
    assert dp.ascend_node(manifest) == with_infos


def test_super_pods_fill_up_in_order() -> None:
    assert [fakenodes.super_pod_place(i, 2) for i in range(5)] == [
        (0, 0), (0, 1), (1, 0), (1, 1), (2, 0),
    ]  # fmt: skip
    assert fakenodes.product_node_names("a3-superpod", 2) == [
        "ascend-a3-superpod-0", "ascend-a3-superpod-1",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown product"):
        fakenodes.find_product("910c")


def test_up_takes_products() -> None:
    assert localcluster.parse_products("910b=2, a3-superpod=1") == {"910b": 2, "a3-superpod": 1}
    assert localcluster.parse_products("") == {}
    with pytest.raises(ValueError):
        localcluster.parse_products("910x=2")


# ---------------------------------------------------------------------------------------------
# The plugin process (controlplane.py), without a cluster


def test_plugin_processes_are_found_by_script_and_kubeconfig_and_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DENSENET_CACHE", str(tmp_path))
    controlplane.cluster_dir("x").mkdir(parents=True)
    args = [str(controlplane.PLUGIN_SCRIPT), "--kubeconfig"]
    stand_in = "import time; time.sleep(60)"
    mine = subprocess.Popen([sys.executable, "-c", stand_in, *args,
                             str(controlplane.kubeconfig_path("x"))])  # fmt: skip
    other = subprocess.Popen([sys.executable, "-c", stand_in, *args,
                              str(controlplane.kubeconfig_path("y"))])  # fmt: skip
    try:
        wait_for(lambda: controlplane.device_plugin_processes("x"), 10, interval=0.05)
        assert [p.pid for p in controlplane.device_plugin_processes("x")] == [mine.pid]
        assert controlplane.device_plugin_status("x")["running"]
        controlplane.stop_device_plugin("x")
        assert mine.poll() is not None  # ended (and reaped by psutil)
        assert other.poll() is None  # another cluster's plugin is left alone
        assert controlplane.device_plugin_status("x") == {
            "pid": None, "running": False, "delay": None,
            "log": str(controlplane.cluster_dir("x") / "deviceplugin.log"),
        }  # fmt: skip
    finally:
        for process in (mine, other):
            process.kill()
            process.wait()


def test_the_plugin_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DENSENET_DEVICE_PLUGIN", "0")
    assert not controlplane.device_plugin_enabled()
    monkeypatch.delenv("DENSENET_DEVICE_PLUGIN")
    assert controlplane.device_plugin_enabled()
    monkeypatch.setenv("DENSENET_DEVICE_PLUGIN_DELAY", "0.2")
    assert controlplane.device_plugin_delay() == 0.2


# ---------------------------------------------------------------------------------------------
# Integration: the plugin serving the local cluster


@pytest.fixture(scope="module")
def plugin_nodes(cluster: Cluster) -> Iterator[dict[str, str]]:
    """A fresh 910 node and an A3 super-pod node (server 0 of super pod 0), only for these
    tests; deleted with their pods at the end."""
    suffix = uuid.uuid4().hex[:6]
    names = {"910": f"plugin-910-{suffix}", "a3-superpod": f"plugin-a3sp-{suffix}"}
    for product, name in names.items():
        fakenodes.add_node(cluster, name, product=product)
    yield names
    fakenodes.delete_nodes(cluster, list(names.values()))


def pinned_pod(name: str, chips: int, node_name: str) -> dict[str, Any]:
    container = {"name": "trainer", "image": "densenet-trainer:test",
                 "resources": {"limits": {NPU: str(chips)}}}  # fmt: skip
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": node_name}, "containers": [container]},
    }


def annotated(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    """The pod once the plugin annotated it."""

    def done() -> dict[str, Any] | None:
        got = kubectl.json("get", "pod", name, "-n", namespace)
        return got if dp.CONFIG_ANNOTATION in got["metadata"].get("annotations", {}) else None

    return wait_for(done, 30, interval=0.05, what=f"the device annotation of {name}")


def config_of(pod_: dict[str, Any]) -> dict[str, Any]:
    return json.loads(pod_["metadata"]["annotations"][dp.CONFIG_ANNOTATION])


@pytest.mark.integration
def test_the_plugin_runs_with_the_cluster(cluster: Cluster) -> None:
    if cluster.name == "external":
        pytest.skip("an external cluster runs its own device plugin, if any")
    assert localcluster.status(cluster.name)["components"]["device-plugin"]["running"]


@pytest.mark.integration
def test_four_chip_pods_get_one_ring_each_after_the_delay(
    cluster: Cluster, kubectl: Kubectl, namespace: str, plugin_nodes: dict[str, str]
) -> None:
    target = plugin_nodes["910"]
    delay = controlplane.device_plugin_status(cluster.name)["delay"]
    started = time.monotonic()
    kubectl.apply(pinned_pod("ring-a", 4, target), "-n", namespace)
    running_at: list[float] = []

    def running() -> bool:
        now = time.monotonic()
        got = kubectl.json("get", "pod", "ring-a", "-n", namespace)
        if is_running(got) and not running_at:
            running_at.append(now)
        return dp.CONFIG_ANNOTATION in got["metadata"].get("annotations", {})

    wait_for(running, 30, interval=0.02, what="ring-a annotated")
    annotated_at = time.monotonic()
    if delay is not None:  # a plugin this cluster runs, not an external cluster's
        assert annotated_at - started >= delay
    if running_at:
        print(f"pod Running -> annotation: {annotated_at - running_at[0]:.2f} s (delay {delay})")
    first = annotated(kubectl, namespace, "ring-a")
    kubectl.apply(pinned_pod("ring-b", 4, target), "-n", namespace)
    second = annotated(kubectl, namespace, "ring-b")
    rings = [[int(d["device_id"]) for d in config_of(p)["devices"]] for p in (first, second)]
    assert rings == [[0, 1, 2, 3], [4, 5, 6, 7]]
    config = config_of(first)
    assert config["server_id"] == first["metadata"]["uid"]
    assert config["host_ip"] == config["server_ip"] == first["status"]["hostIP"]
    assert first["metadata"]["annotations"][dp.REAL_ANNOTATION] == dp.chip_names(range(4))
    # Deleted, ring-a's chips are free again.
    kubectl("delete", "pod", "ring-a", "-n", namespace, "--grace-period=0", "--force")
    kubectl.apply(pinned_pod("ring-c", 4, target), "-n", namespace)
    third = annotated(kubectl, namespace, "ring-c")
    assert [d["device_id"] for d in config_of(third)["devices"]] == ["0", "1", "2", "3"]


@pytest.mark.integration
def test_a_chip_whose_ip_is_down_gets_minus_one_and_recovers(
    kubectl: Kubectl, namespace: str, plugin_nodes: dict[str, str]
) -> None:
    target = plugin_nodes["a3-superpod"]
    dp.set_chip_ips_down(kubectl, [3], [target])
    try:
        kubectl.apply(pinned_pod("faulty", 16, target), "-n", namespace)
        got = annotated(kubectl, namespace, "faulty")
        config = config_of(got)
        print(f"A3 super-pod annotation: {got['metadata']['annotations'][dp.CONFIG_ANNOTATION]}")
        assert [d["device_ip"] for d in config["devices"]].count("-1") == 1
        assert config["devices"][3]["device_ip"] == "-1"
        assert (config["super_pod_id"], config["server_index"]) == (0, "0")
        assert [d["super_device_id"] for d in config["devices"]] == [str(i) for i in range(16)]
    finally:
        dp.set_chip_ips_down(kubectl, [], [target])

    infos = kubectl.json("get", "node", target)["metadata"]["annotations"]["baseDeviceInfos"]
    real_ip = json.loads(infos)["Ascend910-3"]["IP"]

    def recovered() -> bool:
        again = config_of(kubectl.json("get", "pod", "faulty", "-n", namespace))
        return bool(again["devices"][3]["device_ip"] == real_ip)

    wait_for(recovered, 30, what="the chip's IP rewritten")


@pytest.mark.integration
def test_a_reused_cluster_restarts_a_missing_plugin(cluster: Cluster) -> None:
    if cluster.name == "external" or not controlplane.device_plugin_enabled():
        pytest.skip("the plugin runs with the local cluster only")
    old = controlplane.device_plugin_status(cluster.name)["pid"]
    controlplane.stop_device_plugin(cluster.name)
    assert not controlplane.device_plugin_status(cluster.name)["running"]
    again = localcluster.start(cluster.name)
    assert again.reused
    status = controlplane.device_plugin_status(cluster.name)
    assert status["running"] and status["pid"] not in (None, old)
