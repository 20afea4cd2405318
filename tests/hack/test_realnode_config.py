"""The real node's pure parts (hack/realnode_config.py, realnode_cleanup.py,
realnode_images.py): address plan, rendered configuration, cleanup plans. No cluster."""

from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path

import pytest
import realnode_cleanup as cleanup
import realnode_config as config
import realnode_images as images


def test_network_plan_keeps_nodes_hosts_and_pods_apart() -> None:
    plan = config.NetworkPlan(3)
    assert plan.host_ip == "172.29.3.1"
    assert [plan.node_ip(i) for i in range(3)] == ["172.29.3.10", "172.29.3.11", "172.29.3.12"]
    assert plan.dns_ip == plan.node_ip(0)
    pods = [ipaddress.ip_network(plan.pod_cidr(i)) for i in range(config.MAX_REAL_NODES)]
    assert len(set(pods)) == len(pods)
    # Clear of the fake nodes' pods (10.244.0.0/16), the Service range and the host bridge.
    for net in pods:
        assert not net.overlaps(ipaddress.ip_network("10.244.0.0/16"))
        assert not net.overlaps(ipaddress.ip_network(config.SERVICE_CIDR))
        assert not net.overlaps(plan.subnet)
    assert max(len(plan.host_veth(i)) for i in range(config.MAX_REAL_NODES)) <= 15
    assert len(config.NetworkPlan(config.SLOTS).bridge) <= 15
    with pytest.raises(ValueError):
        config.NetworkPlan(0)
    with pytest.raises(ValueError):
        plan.node_ip(config.MAX_REAL_NODES)


def test_slots_are_stable_per_name_and_never_shared() -> None:
    first = config.choose_slot("densenet", set())
    assert first == config.choose_slot("densenet", set())
    assert config.choose_slot("densenet", {first}) != first
    taken: set[int] = set()
    for name in ("a", "b", "c", "node", "images", "densenet"):
        taken.add(config.choose_slot(name, taken))
    assert len(taken) == 6 and all(1 <= s <= config.SLOTS for s in taken)
    with pytest.raises(ValueError, match="taken"):
        config.choose_slot("x", set(range(1, config.SLOTS + 1)))


def _paths(tmp_path: Path, index: int = 0) -> config.NodePaths:
    return config.NodePaths("c1", index, tmp_path / "cache", tmp_path / "run")


def test_containerd_config_is_valid_toml_with_the_required_settings(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    rendered = tomllib.loads(config.to_toml(config.containerd_config(paths, "localhost/p:1")))
    assert rendered["version"] == 2
    assert rendered["grpc"]["address"] == str(paths.containerd_socket)
    cri = rendered["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "localhost/p:1"
    assert cri["restrict_oom_score_adj"] is True
    assert cri["netns_mounts_under_state_dir"] is True
    runc = cri["containerd"]["runtimes"]["runc"]["options"]
    assert runc["SystemdCgroup"] is False
    # Everything the node writes lives under its own two folders.
    for path in (rendered["root"], rendered["state"], runc["Root"], cri["cni"]["conf_dir"]):
        assert path.startswith((f"{paths.root}/", f"{paths.state}/")), path


def test_to_toml_quotes_dotted_keys_and_rejects_what_it_cannot_write() -> None:
    text = config.to_toml({"a": {"b.c": {"d": True, "e": ["x"]}}, "n": 1})
    assert tomllib.loads(text) == {"n": 1, "a": {"b.c": {"d": True, "e": ["x"]}}}
    with pytest.raises(TypeError):
        config.to_toml({"f": 1.5})


def test_kubelet_config_taints_the_node_and_authenticates_the_apiserver(tmp_path: Path) -> None:
    plan, paths = config.NetworkPlan(5), _paths(tmp_path, 1)
    kubelet = config.kubelet_config(plan, paths, tmp_path / "ca.crt")
    assert kubelet["registerWithTaints"] == [
        {"key": "densenet.dev/real-node", "value": "true", "effect": "NoSchedule"}
    ]
    assert kubelet["authentication"]["anonymous"]["enabled"] is False
    assert kubelet["authentication"]["x509"]["clientCAFile"] == str(tmp_path / "ca.crt")
    assert kubelet["authorization"]["mode"] == "Webhook"
    assert (kubelet["cgroupDriver"], kubelet["failCgroupV1"]) == ("cgroupfs", False)
    assert kubelet["cgroupRoot"] == "/densenet/c1/real-node-1"
    assert kubelet["clusterDNS"] == ["172.29.5.10"]
    assert kubelet["containerRuntimeEndpoint"] == f"unix://{paths.containerd_socket}"
    assert kubelet["imageGCHighThresholdPercent"] == 100
    args = config.kubelet_args(plan, paths, tmp_path / "kc")
    assert "--node-labels=densenet.dev/real-node=true" in args
    assert "--node-ip=172.29.5.11" in args and "--hostname-override=real-node-1" in args


def test_scheduling_matches_the_taint_and_the_label() -> None:
    scheduling = config.real_node_scheduling()
    (toleration,) = scheduling["tolerations"]
    taint = config.REAL_NODE_TAINT
    assert {k: toleration[k] for k in ("key", "value", "effect")} == taint
    assert scheduling["nodeSelector"] == {taint["key"]: "true"}


def test_cni_routes_and_corefile(tmp_path: Path) -> None:
    plan = config.NetworkPlan(9)
    conflist = config.cni_conflist(plan, 2)
    bridge = conflist["plugins"][0]
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.245.2.0/24"}]]
    assert bridge["isGateway"] and bridge["ipMasq"]
    assert config.pod_routes(plan, 1, 3) == [
        ("10.245.0.0/24", "172.29.9.10"),
        ("10.245.2.0/24", "172.29.9.12"),
    ]
    corefile = config.corefile(plan, tmp_path / "kc")
    assert f"bind {plan.dns_ip}" in corefile.splitlines()[1]
    assert "forward" not in corefile  # nothing upstream is reachable
    proxy = config.kube_proxy_config(plan, _paths(tmp_path, 2), tmp_path / "kc")
    assert proxy["hostnameOverride"] == "real-node-2" and proxy["mode"] == "iptables"
    kubeconfig = config.node_kubeconfig("https://172.29.9.1:1", tmp_path, tmp_path, tmp_path)
    assert json.loads(json.dumps(kubeconfig))["clusters"][0]["cluster"]["server"].endswith(":1")


MOUNTINFO = r"""22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /sys/fs/cgroup/memory rw shared:9 - cgroup cgroup rw,memory
31 22 0:27 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw
40 22 0:40 / /cache/realnode/c1/real-node-1/kubelet/pods/p/volumes/cfg rw - tmpfs tmpfs rw
41 22 0:41 / /run/densenet/c1/real-node-1/containerd/io.containerd.runtime.v2.task/k8s.io/a/rootfs rw - overlay overlay rw
42 41 0:42 / /run/densenet/c1/real-node-1/containerd/io.containerd.runtime.v2.task/k8s.io/a/rootfs/dev rw - tmpfs tmpfs rw
43 22 0:43 / /cache/realnode/c1/real-node-10/kubelet/x rw - tmpfs tmpfs rw
44 22 0:44 / /data/with\040space rw - tmpfs tmpfs rw
"""


def test_unmount_plan_takes_children_first_and_only_the_nodes_mounts() -> None:
    roots = [Path("/cache/realnode/c1/real-node-1"), Path("/run/densenet/c1/real-node-1")]
    plan = cleanup.unmount_plan(MOUNTINFO, roots)
    rootfs = "/run/densenet/c1/real-node-1/containerd/io.containerd.runtime.v2.task/k8s.io/a/rootfs"
    assert plan == [
        f"{rootfs}/dev",
        rootfs,
        "/cache/realnode/c1/real-node-1/kubelet/pods/p/volumes/cfg",
    ]  # real-node-10 is another node
    assert ("/data/with space", "tmpfs") in cleanup.parse_mountinfo(MOUNTINFO)


def test_cgroup_plans() -> None:
    assert cleanup.cgroup_hierarchies(MOUNTINFO) == [
        Path("/sys/fs/cgroup/memory"),
        Path("/sys/fs/cgroup/unified"),
    ]
    dirs = [Path("/c/n"), Path("/c/n/kubepods/pod1/ctr"), Path("/c/n/kubepods"), Path("/c/n")]
    assert cleanup.cgroup_removal_plan(dirs) == [
        Path("/c/n/kubepods/pod1/ctr"),
        Path("/c/n/kubepods"),
        Path("/c/n"),
    ]


def test_image_names_follow_their_content(tmp_path: Path) -> None:
    binary = tmp_path / "bin"
    binary.write_bytes(b"one")
    spec = images.ImageSpec("probe", {"/bin/x": binary}, entrypoint=["/bin/x"])
    before = spec.ref()
    assert before.startswith(f"{images.IMAGE_REPO}/probe:")
    assert spec.ref() == before
    binary.write_bytes(b"two")
    assert spec.ref() != before
    ctr_output = "unpacking localhost/densenet/pause:0123 (sha256:" + "a" * 64 + ")...done\n"
    assert images.imported_refs(ctr_output) == ["localhost/densenet/pause:0123"]


def test_an_import_supersedes_only_older_tags_of_the_same_image() -> None:
    present = {
        "localhost/densenet-trainer:old1", "localhost/densenet-trainer:new",
        "localhost/densenet-operator:old", "localhost/densenet-pause:abc",
        "sha256:0123",
    }  # fmt: skip
    stale = images.superseded(present, ["localhost/densenet-trainer:new"])
    assert stale == ["localhost/densenet-trainer:old1"]
    assert images.superseded(present, []) == []
