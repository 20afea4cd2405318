"""Real nodes for the local cluster: containerd, runc, the kubelet and kube-proxy running real
pods next to KWOK's fake nodes, and CoreDNS for the cluster's DNS names.

Debian's containerd, runc and CNI plugins (hack/setup.sh installs them) and kubelet,
kube-proxy and CoreDNS built from Go modules (hack/build-control-plane.sh). Each node runs in
its own network namespace (realnode_config.py has the address plan), so what its kubelet and
kube-proxy do to the network (bridge, iptables chains, network sysctls) stays there and goes
with it. The node is labelled and tainted `densenet.dev/real-node=true`, so only pods that opt
in (`realnode_config.real_node_scheduling()`) land on it; KWOK manages only the fake nodes.

`ensure_nodes` starts (or reuses) them; `stop_nodes` undoes everything they did: processes,
containers, mounts, cgroups, the namespaces and the host bridge, and the kernel sysctls the
kubelet sets (restored when the machine's last real node stops). Needs root.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import realnode_cleanup as cleanup
import realnode_config as config
import realnode_images as images
from realnode_config import NetworkPlan, NodePaths, node_name
from testsupport import ClusterError, Kubectl, wait_for

RUN_DIR = Path("/run/densenet")
SYSCTL_RECORD = RUN_DIR / "sysctls.json"
# What the kubelet sets on the machine (not per network namespace) when it starts.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
PACKAGES = {  # what a real node needs from the machine, and the Debian package with it
    "containerd": "containerd",
    "runc": "runc",
    str(config.CNI_BIN_DIR / "bridge"): "containernetworking-plugins",
    "catatonit": "catatonit",
    "busybox": "busybox-static",
    "socat": "socat",
    "buildah": "buildah",
    "ctr": "containerd",
    "nsenter": "util-linux",
    "iptables": "iptables",
}
COMPONENTS = ("containerd", "kubelet", "kube-proxy")


def log(message: str) -> None:
    print(f"[realnode] {message}", file=sys.stderr, flush=True)


def missing_requirements() -> list[str]:
    """Why this machine cannot run a real node (empty when it can): root and the packages."""
    missing = [] if os.geteuid() == 0 else ["root"]
    for tool, package in PACKAGES.items():
        if not (Path(tool).exists() if tool.startswith("/") else shutil.which(tool)):
            missing.append(f"{tool} (Debian package {package})")
    return missing


def default_count() -> int:
    """DENSENET_REAL_NODES when set, else 1 where the machine can run one, else 0."""
    value = os.environ.get("DENSENET_REAL_NODES", "").strip()
    if value:
        return int(value)
    return 0 if missing_requirements() else 1


@dataclasses.dataclass(frozen=True)
class Site:
    """A cluster's real nodes: the cluster's name, the cache, its pki and binaries."""

    name: str
    cache: Path
    pki: Path  # the cluster's ca.crt, admin.crt, admin.key
    bin_dir: Path

    def paths(self, index: int) -> NodePaths:
        return NodePaths(self.name, index, self.cache, RUN_DIR)

    @property
    def run(self) -> Path:
        return RUN_DIR / self.name

    @property
    def coredns(self) -> Path:
        found = sorted(self.bin_dir.glob("coredns-v*"))
        if not found:
            raise ClusterError(f"{self.bin_dir} has no coredns-v*: run hack/build-control-plane.sh")
        return found[-1]


# ---------------------------------------------------------------------------------------------
# Network slots: one /24 per cluster on this machine


@contextlib.contextmanager
def _slots() -> Iterator[dict[str, int]]:
    """The machine's slot table, locked while the caller reads or changes it."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with (RUN_DIR / "slots.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        table_file = RUN_DIR / "slots.json"
        try:
            table = json.loads(table_file.read_text())
        except (OSError, ValueError):
            table = {}
        yield table
        table_file.write_text(json.dumps(table, indent=2) + "\n")


def network_plan(name: str) -> NetworkPlan:
    """Cluster `name`'s address plan: its recorded slot, or a new one."""
    with _slots() as table:
        if name not in table:
            table[name] = config.choose_slot(name, set(table.values()))
        return NetworkPlan(table[name])


def recorded_network_plan(name: str) -> NetworkPlan | None:
    """Cluster `name`'s plan if it has one (nothing is allocated)."""
    if not (RUN_DIR / "slots.json").is_file():
        return None
    with _slots() as table:
        slot = table.get(name)
    return None if slot is None else NetworkPlan(slot)


def release_network_plan(name: str) -> None:
    if recorded_network_plan(name) is not None:
        with _slots() as table:
            table.pop(name, None)


# ---------------------------------------------------------------------------------------------
# Processes


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _in_netns(paths: NodePaths, *args: str) -> subprocess.CompletedProcess[str]:
    return _run("ip", "netns", "exec", paths.netns, *args)


def _spawn(argv: Sequence[str], log_file: Path, netns: str | None) -> int:
    """Start a daemon (in the node's network namespace, when given) in its own session."""
    prefix = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            [*prefix, *argv], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    return process.pid


def _alive(pid: int | None) -> bool:
    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def processes_using(markers: Sequence[str]) -> list[psutil.Process]:
    """Running processes whose command line names one of `markers` (a node's folders, the
    forwarder's address): every daemon and shim a node started, even without a pid file."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if process.info["pid"] != os.getpid() and any(m in cmdline for m in markers):
            with contextlib.suppress(psutil.NoSuchProcess):
                if process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
    return found


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.NoSuchProcess:
        return ""


def _terminate(processes: Sequence[psutil.Process], timeout: float = 10) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


# ---------------------------------------------------------------------------------------------
# Machine-wide sysctls the kubelet changes


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key


def record_sysctls() -> None:
    """Remember the values before the first kubelet on this machine changes them."""
    if SYSCTL_RECORD.is_file():
        return
    values = {key: _sysctl_path(key).read_text().strip() for key in KUBELET_SYSCTLS}
    SYSCTL_RECORD.write_text(json.dumps(values, indent=2) + "\n")


def restore_sysctls() -> None:
    """Put back the recorded values once no real node runs on this machine."""
    if any(RUN_DIR.glob(f"*/{config.NODE_PREFIX}*")) or not SYSCTL_RECORD.is_file():
        return
    for key, value in json.loads(SYSCTL_RECORD.read_text()).items():
        with contextlib.suppress(OSError):
            _sysctl_path(key).write_text(value)
    SYSCTL_RECORD.unlink()


# ---------------------------------------------------------------------------------------------
# Host side: the bridge and the apiserver's forwarder


def _link_exists(name: str, netns: str | None = None) -> bool:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return _run(*prefix, "ip", "link", "show", name, check=False).returncode == 0


def ensure_bridge(plan: NetworkPlan) -> None:
    if not _link_exists(plan.bridge):
        _run("ip", "link", "add", plan.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{plan.host_ip}/24", "dev", plan.bridge)
    _run("ip", "link", "set", plan.bridge, "up")


def forwarder_argv(plan: NetworkPlan, port: int) -> list[str]:
    """socat relaying the host bridge's address to the apiserver on 127.0.0.1 (one process
    per connection: watches are long-lived)."""
    return ["socat", f"TCP-LISTEN:{port},bind={plan.host_ip},fork,reuseaddr",
            f"TCP:127.0.0.1:{port}"]  # fmt: skip


def ensure_forwarder(site: Site, plan: NetworkPlan, port: int) -> None:
    wanted = forwarder_argv(plan, port)
    running = processes_using([f"bind={plan.host_ip},"])
    if len(running) >= 1 and any(p.cmdline() == wanted for p in running):
        return
    _terminate(running)
    site.run.mkdir(parents=True, exist_ok=True)
    pid = _spawn(wanted, site.run / "forwarder.log", None)
    wait_for(
        lambda: any(c.laddr.port == port for c in psutil.Process(pid).net_connections()),
        10,
        what="the apiserver forwarder to listen",
    )


def stop_host_side(plan: NetworkPlan) -> None:
    _terminate(processes_using([f"bind={plan.host_ip},"]))
    if _link_exists(plan.bridge):
        _run("ip", "link", "delete", plan.bridge)


# ---------------------------------------------------------------------------------------------
# One node


def ensure_netns(plan: NetworkPlan, paths: NodePaths, count: int) -> None:
    """The node's network namespace, joined to the host bridge, with routes to the other
    nodes' pods and forwarding on."""
    if paths.netns not in _run("ip", "netns", "list").stdout.split():
        _run("ip", "netns", "add", paths.netns)
    veth = plan.host_veth(paths.index)
    if not _link_exists(veth):
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
             "netns", paths.netns)  # fmt: skip
        _run("ip", "link", "set", veth, "master", plan.bridge, "up")
        _in_netns(paths, "ip", "addr", "add", f"{plan.node_ip(paths.index)}/24", "dev", "eth0")
    for link in ("lo", "eth0"):
        _in_netns(paths, "ip", "link", "set", link, "up")
    _in_netns(paths, "ip", "route", "replace", "default", "via", plan.host_ip)
    for cidr, via in config.pod_routes(plan, paths.index, count):
        _in_netns(paths, "ip", "route", "replace", cidr, "via", via)
    _in_netns(paths, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def node_files(site: Site, plan: NetworkPlan, paths: NodePaths, server: str) -> dict[Path, str]:
    """Every configuration file of the node, by path."""
    root, pki = paths.root, site.pki
    kubeconfig = root / "kubeconfig.json"
    toml = config.to_toml(config.containerd_config(paths, images.pause_image().ref()))
    return {
        root / "containerd.toml": toml,
        root / "cni" / "10-densenet.conflist": json.dumps(config.cni_conflist(plan, paths.index)),
        root / "kubelet.json": json.dumps(config.kubelet_config(plan, paths, pki / "ca.crt")),
        root / "kube-proxy.json": json.dumps(config.kube_proxy_config(plan, paths, kubeconfig)),
        kubeconfig: json.dumps(
            config.node_kubeconfig(server, pki / "ca.crt", pki / "admin.crt", pki / "admin.key")
        ),
    }


def files_hash(files: dict[Path, str], ca: Path) -> str:
    """A hash of the files and of the cluster's CA (a recreated cluster has a new one): what
    tells a running node whether it is current."""
    digest = hashlib.sha256(ca.read_bytes())
    for path, text in sorted(files.items()):
        digest.update(f"{path}\0{text}\0".encode())
    return digest.hexdigest()


def write_files(files: dict[Path, str]) -> None:
    """Write what changed only: kube-proxy exits when its configuration file is written."""
    for path, text in files.items():
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


def _pid_file(paths: NodePaths) -> Path:
    return paths.state / "pids.json"


def node_running(paths: NodePaths, config_hash: str) -> bool:
    try:
        recorded = json.loads(_pid_file(paths).read_text())
    except (OSError, ValueError):
        return False
    pids = recorded.get("pids", {})
    return recorded.get("config") == config_hash and all(_alive(pids.get(c)) for c in COMPONENTS)


def start_node(site: Site, plan: NetworkPlan, paths: NodePaths, config_hash: str) -> None:
    """containerd (with the pause image loaded), then the kubelet and kube-proxy."""
    root, netns = paths.root, paths.netns
    (root / "logs").mkdir(parents=True, exist_ok=True)
    paths.state.mkdir(parents=True, exist_ok=True)
    cleanup.make_cgroups(paths.cgroup_root)
    record_sysctls()
    pids = {"containerd": _spawn(
        ["containerd", "--config", str(root / "containerd.toml")],
        root / "logs" / "containerd.log", netns,
    )}  # fmt: skip
    wait_for(
        lambda: _run("ctr", "--address", str(paths.containerd_socket), "version",
                     check=False).returncode == 0,
        30, what=f"containerd of {node_name(paths.index)}",
    )  # fmt: skip
    images.load_image(images.build_image(images.pause_image(), site.cache), paths.containerd_socket)
    kubeconfig = root / "kubeconfig.json"
    pids["kubelet"] = _spawn(
        [str(site.bin_dir / "kubelet"), *config.kubelet_args(plan, paths, kubeconfig)],
        root / "logs" / "kubelet.log", netns,
    )  # fmt: skip
    pids["kube-proxy"] = _spawn(
        [str(site.bin_dir / "kube-proxy"), f"--config={root / 'kube-proxy.json'}"],
        root / "logs" / "kube-proxy.log", netns,
    )  # fmt: skip
    _write_json(_pid_file(paths), {"config": config_hash, "pids": pids})


def stop_node(paths: NodePaths) -> None:
    """Everything node `paths.index` started or changed, undone; its folders removed."""
    markers = [f"{paths.root}/", f"{paths.state}/"]  # "/": real-node-1 is not real-node-10
    daemons = {p: _name(p) for p in processes_using(markers)}
    # The kubelet first, so it does not restart what containerd is stopping.
    _terminate([p for p, name in daemons.items() if "containerd" not in name])
    _terminate([p for p, name in daemons.items() if name == "containerd"])
    _terminate(processes_using(markers))  # shims
    left = cleanup.remove_cgroups(paths.cgroup_root)
    if left:
        log(f"cgroups left behind: {[str(p) for p in left]}")
    cleanup.unmount_under([paths.root, paths.state])
    if paths.netns in _run("ip", "netns", "list", check=False).stdout.split():
        _run("ip", "netns", "delete", paths.netns)
    still_mounted = cleanup.mounts_left([paths.root, paths.state])
    if still_mounted:
        raise ClusterError(f"not removing {paths.root}: still mounted: {still_mounted}")
    for folder in (paths.root, paths.state):
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# CoreDNS, in node 0's namespace


def ensure_coredns(site: Site, plan: NetworkPlan, paths: NodePaths) -> None:
    corefile = paths.root / "Corefile"
    text = config.corefile(plan, paths.root / "kubeconfig.json")
    argv = [str(site.coredns), "-conf", str(corefile)]
    running = [p for p in processes_using([f"{corefile}"]) if _name(p).startswith("coredns")]
    if running and corefile.is_file() and corefile.read_text() == text:
        return
    _terminate(running)
    corefile.write_text(text)
    _spawn(argv, paths.root / "logs" / "coredns.log", paths.netns)


# ---------------------------------------------------------------------------------------------
# The cluster's real nodes


def _server_port(kubectl: Kubectl) -> int:
    server = kubectl("config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}")
    port = urlsplit(server.stdout.strip()).port
    if port is None:
        raise ClusterError(f"no port in the apiserver's address {server.stdout.strip()!r}")
    return port


def _node_ready(kubectl: Kubectl, name: str) -> bool:
    got = kubectl("get", "node", name, "-o", "json", check=False, timeout=10)
    if got.returncode != 0:
        return False
    conditions = json.loads(got.stdout).get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def node_indices(site: Site) -> list[int]:
    """The nodes of the cluster this machine has anything of: folders or a namespace."""
    prefix = config.NODE_PREFIX
    folders = [
        *site.run.glob(f"{prefix}*"),
        *(site.cache / "realnode" / site.name).glob(f"{prefix}*"),
    ]
    found = {p.name[len(prefix) :] for p in folders}
    netns_prefix = f"densenet-{site.name}-"
    listed = _run("ip", "netns", "list", check=False).stdout if shutil.which("ip") else ""
    for line in listed.splitlines():
        netns = line.split()[0] if line.split() else ""
        if netns.startswith(netns_prefix):
            found.add(netns[len(netns_prefix) :])
    return sorted(int(i) for i in found if i.isdigit())


def ensure_nodes(site: Site, kubectl: Kubectl, count: int, timeout: float = 120) -> list[str]:
    """`count` real nodes Ready (started, or reused when current); nodes beyond `count` are
    stopped and deleted. Returns their names."""
    for index in node_indices(site):
        if index >= count:
            stop_node(site.paths(index))
            kubectl("delete", "node", node_name(index), "--ignore-not-found", check=False)
    if count == 0:
        stop_nodes(site)
        return []
    if missing := missing_requirements():
        raise ClusterError(f"a real node needs {', '.join(missing)}: run hack/setup.sh as root")
    plan = network_plan(site.name)
    port = _server_port(kubectl)
    ensure_bridge(plan)
    ensure_forwarder(site, plan, port)
    server = f"https://{plan.host_ip}:{port}"
    for index in range(count):
        paths = site.paths(index)
        files = node_files(site, plan, paths, server)
        config_hash = files_hash(files, site.pki / "ca.crt")
        if node_running(paths, config_hash):
            continue
        stop_node(paths)
        write_files(files)
        ensure_netns(plan, paths, count)
        start_node(site, plan, paths, config_hash)
        log(f"started {node_name(index)} ({plan.node_ip(index)}) of cluster {site.name!r}")
    ensure_coredns(site, plan, site.paths(0))
    names = [node_name(i) for i in range(count)]
    wait_for(
        lambda: all(_node_ready(kubectl, name) for name in names),
        timeout, what=f"nodes {', '.join(names)} Ready",
    )  # fmt: skip
    return names


def stop_nodes(site: Site) -> None:
    """Every real node of the cluster stopped and undone, the host bridge and forwarder gone,
    and the machine's sysctls restored when no other real node runs here."""
    for index in node_indices(site):
        stop_node(site.paths(index))
    plan = recorded_network_plan(site.name)
    if plan is not None:
        stop_host_side(plan)
    shutil.rmtree(site.run, ignore_errors=True)
    shutil.rmtree(site.cache / "realnode" / site.name, ignore_errors=True)
    for cgroup in config.cluster_cgroups(site.name):  # the nodes' parents, when empty
        cleanup.remove_empty_cgroups(cgroup)
    restore_sysctls()


def load_image(site: Site, archive: Path, ref: str | None = None) -> list[str]:
    """Import an image archive into every real node's containerd; returns its names. With
    `ref` (the image's name in the archive), nodes that already have it are skipped: an
    archive is read whole on every import (a minute for the trainer's 1.4 GB)."""
    names: list[str] = [ref] if ref else []
    for index in node_indices(site):
        socket = site.paths(index).containerd_socket
        present = images.images_present(socket)
        if ref is None or ref not in present:
            names = images.load_image(archive, socket)
            # Older builds of the same image go: a node would otherwise keep every trainer.
            images.remove_images(images.superseded(present, names), socket)
    return names


def status(site: Site) -> dict[str, Any]:
    nodes = {}
    for index in node_indices(site):
        paths = site.paths(index)
        try:
            pids = json.loads(_pid_file(paths).read_text())["pids"]
        except (OSError, ValueError, KeyError):
            pids = {}
        nodes[node_name(index)] = {
            c: {"pid": pids.get(c), "running": _alive(pids.get(c))} for c in COMPONENTS
        }
    return nodes
