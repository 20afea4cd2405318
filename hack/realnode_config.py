"""What a real node of the local cluster is made of, as data: addresses, paths and the
configuration files of containerd, CNI, the kubelet, kube-proxy and CoreDNS. Pure functions
only; realnode.py writes these files and runs the processes.

Network plan (one per cluster, `slot` chosen so that clusters on one machine never share it):
- the host gets a bridge `dnbr<slot>` with 172.29.<slot>.1/24; node i lives in its own network
  namespace, joined to that bridge by a veth pair, with the address 172.29.<slot>.(10+i).
  Its kubelet, kube-proxy, CNI bridge, iptables rules and network sysctls stay inside that
  namespace, so two clusters' kube-proxies never fight over one set of chains;
- node i's pods get 10.245.i.0/24 from a CNI bridge inside the node's namespace, and reach
  other nodes' pods through routes via those nodes' addresses;
- the apiserver listens on 127.0.0.1 only; a forwarder on the host bridge's address
  (172.29.<slot>.1, same port) lets the nodes and, as the advertised address behind the
  `kubernetes` Service, the pods reach it;
- CoreDNS runs in node 0's namespace on node 0's address, which is every pod's nameserver.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HOST_NET_BASE = ipaddress.IPv4Network("172.29.0.0/16")
POD_NET_BASE = ipaddress.IPv4Network("10.245.0.0/16")
SLOTS = 250  # 172.29.<slot>.0/24, slot 1..250
MAX_REAL_NODES = 50
NODE_PREFIX = "real-node-"
REAL_NODE_LABEL = "densenet.dev/real-node"
REAL_NODE_TAINT = {"key": REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"}
CLUSTER_DOMAIN = "cluster.local"
SERVICE_CIDR = "10.0.0.0/24"  # the apiserver's default --service-cluster-ip-range
KUBERNETES_SERVICE_IP = "10.0.0.1"
CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
RUNC = Path("/usr/sbin/runc")


@dataclasses.dataclass(frozen=True)
class NetworkPlan:
    """The addresses of one cluster's real nodes (see the module docstring)."""

    slot: int

    def __post_init__(self) -> None:
        if not 1 <= self.slot <= SLOTS:
            raise ValueError(f"slot must be in 1..{SLOTS}, not {self.slot}")

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return list(HOST_NET_BASE.subnets(new_prefix=24))[self.slot]

    @property
    def bridge(self) -> str:
        return f"dnbr{self.slot}"

    @property
    def host_ip(self) -> str:
        """The host's address on the bridge: the apiserver's forwarder and advertised address."""
        return str(self.subnet.network_address + 1)

    def node_ip(self, index: int) -> str:
        _check_index(index)
        return str(self.subnet.network_address + 10 + index)

    def host_veth(self, index: int) -> str:
        _check_index(index)
        return f"dn{self.slot}v{index}"  # at most 15 characters, the kernel's limit

    @staticmethod
    def pod_cidr(index: int) -> str:
        _check_index(index)
        return str(list(POD_NET_BASE.subnets(new_prefix=24))[index])

    @property
    def dns_ip(self) -> str:
        return self.node_ip(0)


def _check_index(index: int) -> None:
    if not 0 <= index < MAX_REAL_NODES:
        raise ValueError(f"a real node's index must be in 0..{MAX_REAL_NODES - 1}, not {index}")


def node_name(index: int) -> str:
    _check_index(index)
    return f"{NODE_PREFIX}{index}"


def choose_slot(name: str, taken: set[int]) -> int:
    """A slot for cluster `name`: stable for a name (a hash), the next free one if taken."""
    start = sum(name.encode()) * 31 % SLOTS
    for step in range(SLOTS):
        slot = (start + step) % SLOTS + 1
        if slot not in taken:
            return slot
    raise ValueError("every real-node network slot is taken")


@dataclasses.dataclass(frozen=True)
class NodePaths:
    """Where node `index` of cluster `cluster` keeps its files.

    `root` (under the cache) holds configuration, logs, containerd's images and the kubelet's
    pods; `state` (under /run) containerd's sockets and runtime state. Both are removed, after
    every mount beneath them is gone, when the node stops.
    """

    cluster: str
    index: int
    cache: Path
    run: Path = Path("/run/densenet")

    @property
    def root(self) -> Path:
        return self.cache / "realnode" / self.cluster / node_name(self.index)

    @property
    def state(self) -> Path:
        return self.run / self.cluster / node_name(self.index)

    @property
    def netns(self) -> str:
        return f"densenet-{self.cluster}-{self.index}"

    @property
    def cgroup_root(self) -> str:
        """The kubelet's cgroupRoot (relative to each hierarchy's mount)."""
        return f"{cluster_cgroups(self.cluster)[0]}/{node_name(self.index)}"

    @property
    def containerd_socket(self) -> Path:
        return self.state / "containerd.sock"


def cluster_cgroups(cluster: str) -> tuple[str, str]:
    """The cgroups above a cluster's nodes' cgroupRoots, innermost first."""
    return (f"/densenet/{cluster}", "/densenet")


def to_toml(table: Mapping[str, Any], prefix: str = "") -> str:
    """TOML for nested tables of strings, booleans, integers and lists of strings: the subset
    containerd's configuration needs. Keys with dots are quoted."""
    lines, subtables = [], []
    for key, value in table.items():
        quoted = json.dumps(key) if not key.replace("_", "").replace("-", "").isalnum() else key
        if isinstance(value, Mapping):
            subtables.append((f"{prefix}.{quoted}" if prefix else quoted, value))
        elif isinstance(value, bool):
            lines.append(f"{quoted} = {'true' if value else 'false'}")
        elif isinstance(value, int):
            lines.append(f"{quoted} = {value}")
        elif isinstance(value, str | list):
            lines.append(f"{quoted} = {json.dumps(value)}")
        else:
            raise TypeError(f"{key}: cannot write {type(value).__name__} as TOML")
    out = [f"[{prefix}]", *lines] if prefix and lines else lines
    text = "\n".join(out) + ("\n" if out else "")
    for name, sub in subtables:
        text += ("\n" if text else "") + to_toml(sub, name)
    return text


def containerd_config(paths: NodePaths, sandbox_image: str) -> dict[str, Any]:
    """containerd 1.6's configuration (version 2) for one node: its own root, state and
    socket; the CRI plugin with the local pause image, cgroupfs, CNI from the node's folder,
    and oom_score_adj restricted (this machine lacks CAP_SYS_RESOURCE: without it runc fails
    with "can't get final child's PID from pipe")."""
    cri = "io.containerd.grpc.v1.cri"
    return {
        "version": 2,
        "root": str(paths.root / "containerd"),
        "state": str(paths.state / "containerd"),
        "disabled_plugins": [
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.zfs",
            "io.containerd.snapshotter.v1.devmapper",
            "io.containerd.snapshotter.v1.aufs",
            "io.containerd.tracing.processor.v1.otlp",
        ],
        "grpc": {"address": str(paths.containerd_socket)},
        "ttrpc": {"address": str(paths.state / "containerd.sock.ttrpc")},
        "metrics": {"address": ""},
        "plugins": {
            "io.containerd.internal.v1.opt": {"path": str(paths.root / "opt")},
            cri: {
                "sandbox_image": sandbox_image,
                "restrict_oom_score_adj": True,
                "netns_mounts_under_state_dir": True,
                "disable_apparmor": True,
                "enable_selinux": False,
                "stream_server_address": "127.0.0.1",
                "cni": {
                    "bin_dir": str(CNI_BIN_DIR),
                    "conf_dir": str(paths.root / "cni"),
                    "max_conf_num": 1,
                },
                "containerd": {
                    "snapshotter": "overlayfs",
                    "default_runtime_name": "runc",
                    "runtimes": {
                        "runc": {
                            "runtime_type": "io.containerd.runc.v2",
                            "options": {
                                "BinaryName": str(RUNC),
                                "Root": str(paths.state / "runc"),
                                "SystemdCgroup": False,
                            },
                        }
                    },
                },
            },
        },
    }


def cni_conflist(plan: NetworkPlan, index: int) -> dict[str, Any]:
    """The node's pod network: a bridge inside its namespace, pod addresses from its /24,
    masquerading for traffic that leaves it (to the host: the apiserver's forwarder)."""
    routes = [{"dst": "0.0.0.0/0"}]
    return {
        "cniVersion": "1.0.0",
        "name": "densenet",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": plan.pod_cidr(index)}]],
                    "routes": routes,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(plan: NetworkPlan, paths: NodePaths, ca_file: Path) -> dict[str, Any]:
    """The KubeletConfiguration: x509 + webhook auth (the apiserver's client certificate is
    signed by the cluster CA), cgroupfs under the node's own cgroup root, cgroup v1 allowed,
    the taint that keeps workloads off unless they tolerate it, and no image garbage
    collection (the images come from archives, there is no registry to pull them again)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": plan.node_ip(paths.index),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": paths.cgroup_root,
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        "clusterDNS": [plan.dns_ip],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": "",
        "podCIDR": plan.pod_cidr(paths.index),
        "registerWithTaints": [REAL_NODE_TAINT],
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "serializeImagePulls": False,
        "maxPods": 110,
    }


def kube_proxy_config(plan: NetworkPlan, paths: NodePaths, kubeconfig: Path) -> dict[str, Any]:
    """kube-proxy in iptables mode inside the node's namespace; conntrack limits untouched
    (they are the machine's, not the namespace's)."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node_name(paths.index),
        "mode": "iptables",
        "clusterCIDR": str(POD_NET_BASE),
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


def corefile(plan: NetworkPlan, kubeconfig: Path) -> str:
    """CoreDNS: Service, headless-Service and pod names of the cluster domain from the API;
    nothing is forwarded (no upstream is reachable)."""
    return (
        f".:53 {{\n"
        f"    bind {plan.dns_ip}\n"
        f"    errors\n"
        f"    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{\n"
        f"        kubeconfig {kubeconfig}\n"
        f"        pods insecure\n"
        f"        fallthrough in-addr.arpa ip6.arpa\n"
        f"    }}\n"
        f"    cache 5\n"
        f"}}\n"
    )


def node_kubeconfig(server: str, ca: Path, cert: Path, key: Path) -> dict[str, Any]:
    """A kubeconfig for the node's components: the forwarder's address, the cluster's CA and
    admin credentials (a local, single-user cluster)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [
            {"name": "admin", "user": {"client-certificate": str(cert), "client-key": str(key)}}
        ],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
        "current-context": "local",
    }


def kubelet_args(plan: NetworkPlan, paths: NodePaths, kubeconfig: Path) -> list[str]:
    index = paths.index
    return [
        f"--config={paths.root / 'kubelet.json'}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={paths.root / 'kubelet'}",
        f"--cert-dir={paths.root / 'kubelet-pki'}",
        f"--hostname-override={node_name(index)}",
        f"--node-ip={plan.node_ip(index)}",
        f"--node-labels={REAL_NODE_LABEL}=true",
    ]


def pod_routes(plan: NetworkPlan, index: int, count: int) -> list[tuple[str, str]]:
    """(pod CIDR, via) for every other node's pods, as node `index`'s routes."""
    return [(plan.pod_cidr(j), plan.node_ip(j)) for j in range(count) if j != index]


def real_node_scheduling() -> dict[str, Any]:
    """The pod spec fields that put a pod on a real node: the taint's toleration and the
    label as nodeSelector."""
    return {
        "tolerations": [{**REAL_NODE_TAINT, "operator": "Equal"}],
        "nodeSelector": {REAL_NODE_LABEL: "true"},
    }
