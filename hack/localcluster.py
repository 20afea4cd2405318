#!/usr/bin/env python3
"""A local Kubernetes control plane for the tests: kwokctl's binary runtime on local binaries.

`hack/build-control-plane.sh` builds kube-apiserver, kube-controller-manager, kube-scheduler,
etcd, kwok and kwokctl from Go modules; this module points kwokctl at those binaries (it
downloads nothing) and adds fake Ascend nodes that KWOK keeps Ready. The real scheduler places
pods on them, the real controller manager runs garbage collection, and KWOK gives scheduled
pods an IP from their node's `spec.podCIDR` and moves them to Running.

Everything binds to 127.0.0.1 on ports kwokctl picks free. State lives under
`$DENSENET_CACHE/kwok` (default `~/.cache/densenet-operator/kwok`), kwokctl's `KWOK_WORKDIR`,
so it never touches a user's own `~/.kwok` clusters.

The module needs only the standard library (it talks to the cluster through kubectl), so the
CLI runs under any Python 3.11:

    python hack/localcluster.py up [--name densenet] [--nodes 4]   # last line: kubeconfig path
    python hack/localcluster.py status
    python hack/localcluster.py down
    python hack/localcluster.py add-node NAME / delete-node NAME
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-control-plane.sh"

DEFAULT_NAME = "densenet"
DEFAULT_NODES = 4
NPU_RESOURCE = "huawei.com/Ascend910"
NODE_PREFIX = "ascend-node-"
# Node i (0-based slot) gets InternalIP 172.18.0.(11+i) and podCIDR 10.244.i.0/24. Both stay
# clear of the apiserver's default service range 10.0.0.0/24.
NODE_IP_BASE = ipaddress.IPv4Address("172.18.0.11")
POD_CIDR_BASE = ipaddress.IPv4Network("10.244.0.0/16")
MAX_NODES = 200
NODE_LABELS: Mapping[str, str] = {
    "node.kubernetes.io/instance-type": "ascend-910",
    "accelerator": "huawei-Ascend910",
    "type": "kwok",
}
SLOT_ANNOTATION = "densenet.dev/fake-node-slot"
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok-controller",
)
# component name in kwokctl -> binary name in the bin directory
BINARIES = {
    "etcd": "etcd",
    "kube-apiserver": "kube-apiserver",
    "kube-controller-manager": "kube-controller-manager",
    "kube-scheduler": "kube-scheduler",
    "kwok-controller": "kwok",
}
STATE_FILE = "densenet-cluster.json"


class ClusterError(RuntimeError):
    """The local cluster could not be started, reached or stopped."""


def log(message: str) -> None:
    print(f"[localcluster] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Paths and binaries


def cache_dir() -> Path:
    return Path(os.environ.get("DENSENET_CACHE") or Path.home() / ".cache" / "densenet-operator")


def kwok_workdir() -> Path:
    """kwokctl's KWOK_WORKDIR: clusters live in `<workdir>/clusters/<name>`."""
    return cache_dir() / "kwok"


def cluster_dir(name: str = DEFAULT_NAME) -> Path:
    return kwok_workdir() / "clusters" / name


def kubeconfig_path(name: str = DEFAULT_NAME) -> Path:
    return cluster_dir(name) / "kubeconfig.yaml"


def ensure_binaries() -> Path:
    """Build (or find, when already built) the control plane; return its bin directory."""
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise ClusterError(f"{BUILD_SCRIPT} failed with exit status {proc.returncode}")
    bin_dir = Path(lines[-1])
    missing = [b for b in (*BINARIES.values(), "kwokctl") if not (bin_dir / b).is_file()]
    if missing:
        raise ClusterError(f"{bin_dir} lacks {', '.join(missing)}")
    return bin_dir


def find_kubectl() -> Path:
    """kubectl from the project's venv (hack/setup.sh puts it there), else from PATH."""
    venv_kubectl = REPO_ROOT / ".venv" / "bin" / "kubectl"
    if venv_kubectl.exists():
        return venv_kubectl
    found = shutil.which("kubectl")
    if found:
        return Path(found)
    raise ClusterError("kubectl not found: run `bash hack/setup.sh` first")


# ---------------------------------------------------------------------------------------------
# Pure helpers: configuration and manifests


def render_kwokctl_config(bin_dir: Path, kubectl: Path) -> dict[str, Any]:
    """The KwokctlConfiguration: binary runtime, every binary local, RBAC and admission on."""
    options: dict[str, Any] = {
        "runtime": "binary",
        "components": list(COMPONENTS),
        "kubeApiserverBinary": str(bin_dir / "kube-apiserver"),
        "kubeControllerManagerBinary": str(bin_dir / "kube-controller-manager"),
        "kubeSchedulerBinary": str(bin_dir / "kube-scheduler"),
        "etcdBinary": str(bin_dir / "etcd"),
        "kwokControllerBinary": str(bin_dir / "kwok"),
        "kubectlBinary": str(kubectl),
        "bindAddress": "127.0.0.1",
        # HTTPS with client certificates, authorization mode Node,RBAC, default admission
        # plugins (ServiceAccount, NamespaceLifecycle, ...). kwokctl's defaults for Kubernetes
        # >= 1.13, spelt out so that an environment variable cannot turn them off unnoticed.
        "securePort": True,
        "kubeAuthorization": True,
        "kubeAdmission": True,
        # No client-side QPS limits and no API priority and fairness: tests create bursts.
        "disableQPSLimits": True,
        "quietPull": True,
    }
    return {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokctlConfiguration",
        "options": options,
    }


def node_ip(slot: int) -> str:
    if not 0 <= slot < MAX_NODES:
        raise ValueError(f"node slot {slot} out of range 0..{MAX_NODES - 1}")
    return str(NODE_IP_BASE + slot)


def pod_cidr(slot: int) -> str:
    if not 0 <= slot < MAX_NODES:
        raise ValueError(f"node slot {slot} out of range 0..{MAX_NODES - 1}")
    return str(list(POD_CIDR_BASE.subnets(new_prefix=24))[slot])


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


# ---------------------------------------------------------------------------------------------
# The cluster


@dataclasses.dataclass(frozen=True)
class Cluster:
    name: str
    kubeconfig: Path
    bin_dir: Path | None  # None for a cluster this module did not start
    workdir: Path | None
    kubectl_path: Path
    reused: bool = False
    nodes: tuple[str, ...] = ()

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return _kubectl(
            self.kubectl_path, self.kubeconfig, *args, input=input, check=check, timeout=timeout
        )

    def kubectl_json(self, *args: str, timeout: float = 60) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json", timeout=timeout).stdout)


def _kubectl(
    kubectl: Path,
    kubeconfig: Path,
    *args: str,
    input: str | None = None,
    check: bool = True,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    cmd = [str(kubectl), "--kubeconfig", str(kubeconfig), *args]
    proc = subprocess.run(
        cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise ClusterError(
            f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
        )
    return proc


def _kwokctl_env(bin_dir: Path, kubectl: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KWOK_")}
    env["KWOK_WORKDIR"] = str(kwok_workdir())
    # kwokctl looks kubectl up in PATH before it would download one.
    env["PATH"] = os.pathsep.join([str(kubectl.parent), str(bin_dir), env.get("PATH", "")])
    return env


def _kwokctl(
    bin_dir: Path, kubectl: Path, *args: str, timeout: float = 300, log_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [str(bin_dir / "kwokctl"), *args]
    proc = subprocess.run(
        cmd,
        env=_kwokctl_env(bin_dir, kubectl),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=str(kwok_workdir()),
    )
    if log_file is not None:
        with log_file.open("a") as f:
            f.write(f"$ kwokctl {' '.join(args)}\n{proc.stdout}{proc.stderr}\n")
    return proc


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """Serialises start/stop of one cluster between processes (pytest sessions, CLI calls)."""
    kwok_workdir().mkdir(parents=True, exist_ok=True)
    with (kwok_workdir() / f".{name}.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers signal 0; it is not running.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def component_pids(name: str = DEFAULT_NAME) -> dict[str, int]:
    """Pid of each component from kwokctl's pid files (whether it still runs or not)."""
    pids: dict[str, int] = {}
    for pid_file in sorted((cluster_dir(name) / "pids").glob("*.pid")):
        with contextlib.suppress(ValueError, OSError):
            pids[pid_file.stem] = int(pid_file.read_text().strip())
    return pids


def _processes_under(path: Path) -> list[int]:
    """Pids of processes running a binary from the cluster's `bin` directory.

    kwokctl runs every component through a link in `<cluster dir>/bin/`, so this finds the
    components whose pid file is gone, and nothing else.
    """
    prefix = str(path / "bin").encode() + b"/"
    found = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit() or int(proc_dir.name) == os.getpid():
            continue
        try:
            argv0 = (proc_dir / "cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue
        if argv0.startswith(prefix) and _pid_alive(int(proc_dir.name)):
            found.append(int(proc_dir.name))
    return found


def _kill(pids: Sequence[int], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after `timeout` seconds."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
        time.sleep(0.05)


def _load_state(name: str) -> dict[str, Any] | None:
    try:
        return json.loads((cluster_dir(name) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _healthy(name: str, bin_dir: Path, kubectl: Path) -> bool:
    """Running with our configuration: every component alive and the apiserver ready."""
    state = _load_state(name)
    if state is None or state.get("bin_dir") != str(bin_dir):
        return False
    if not kubeconfig_path(name).is_file():
        return False
    pids = component_pids(name)
    if set(pids) != set(COMPONENTS) or not all(_pid_alive(p) for p in pids.values()):
        return False
    proc = _kubectl(
        kubectl, kubeconfig_path(name), "get", "--raw", "/readyz", check=False, timeout=10
    )
    return proc.returncode == 0 and proc.stdout.strip() == "ok"


def _component_log_tail(name: str, lines: int = 15) -> str:
    out = []
    for log_file in sorted((cluster_dir(name) / "logs").glob("*.log")):
        with contextlib.suppress(OSError):
            tail = log_file.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log_file}\n" + "\n".join(tail))
    return "\n".join(out)


def _wait(what: str, predicate: Any, timeout: float, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            if predicate():
                return
            last_error = None
        except (ClusterError, subprocess.TimeoutExpired) as e:
            last_error = e
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}: {last_error}")
        time.sleep(interval)


def _wait_api_ready(cluster: Cluster, timeout: float) -> None:
    def ready() -> bool:
        proc = cluster.kubectl("get", "--raw", "/readyz", check=False, timeout=10)
        return proc.returncode == 0 and proc.stdout.strip() == "ok"

    _wait("the apiserver's /readyz", ready, timeout)


def _list_nodes(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.kubectl_json("get", "nodes")["items"]


def _node_ready(node: Mapping[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def wait_nodes_ready(cluster: Cluster, names: Sequence[str], timeout: float = 60) -> None:
    def ready() -> bool:
        by_name = {n["metadata"]["name"]: n for n in _list_nodes(cluster)}
        return all(name in by_name and _node_ready(by_name[name]) for name in names)

    _wait(f"nodes {', '.join(names)} to be Ready", ready, timeout)


def _wait_default_service_account(cluster: Cluster, timeout: float) -> None:
    """Pods can only be created once the controller manager made the `default` SA."""

    def exists() -> bool:
        proc = cluster.kubectl(
            "get", "serviceaccount", "default", "-n", "default", check=False, timeout=10
        )
        return proc.returncode == 0

    _wait("ServiceAccount default/default", exists, timeout)


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
    used = [s for n in _list_nodes(cluster) if (s := node_slot(n)) is not None]
    manifest = node_manifest(name, free_slot(used), npus=npus, labels=labels)
    cluster.kubectl("create", "-f", "-", input=json.dumps(manifest))
    if wait:
        wait_nodes_ready(cluster, [name], timeout=timeout)
    return name


def pods_on_node(cluster: Cluster, node: str) -> list[dict[str, Any]]:
    return cluster.kubectl_json(
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
    checked every 20 s: about 45 s here), marks them Failed with condition DisruptionTarget
    (reason DeletionByPodGC) and deletes them with grace period 0. `gc_pods=True` does that at
    once instead, for tests that do not want to wait. `node` is a name or a Node object.
    """
    name = node if isinstance(node, str) else node["metadata"]["name"]
    pods = pods_on_node(cluster, name) if gc_pods else []
    cluster.kubectl("delete", "node", name, "--ignore-not-found", "--wait=false")
    if wait:

        def gone() -> bool:
            proc = cluster.kubectl("get", "node", name, check=False, timeout=10)
            return proc.returncode != 0 and "NotFound" in proc.stderr

        _wait(f"node {name} to be deleted", gone, timeout)
    for pod in pods:
        meta = pod["metadata"]
        if pod["status"].get("phase") not in ("Succeeded", "Failed"):
            set_pod_phase(
                cluster,
                meta["namespace"],
                meta["name"],
                "Failed",
                exit_code=137,
                reason="DeletionByPodGC",
                message="PodGC: node no longer exists",
                condition={
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "DeletionByPodGC",
                    "message": "PodGC: node no longer exists",
                },
                check=False,
            )
        cluster.kubectl(
            "delete",
            "pod",
            meta["name"],
            "-n",
            meta["namespace"],
            "--grace-period=0",
            "--force",
            "--ignore-not-found",
            "--wait=false",
            check=False,
        )


def set_pod_phase(
    cluster: Cluster,
    namespace: str,
    name: str,
    phase: str,
    *,
    exit_code: int | None = None,
    reason: str | None = None,
    message: str | None = None,
    condition: Mapping[str, str] | None = None,
    check: bool = True,
) -> dict[str, Any]:
    """Move a pod to a terminal phase as a kubelet would; KWOK leaves terminal pods alone.

    Patches the status subresource: phase, reason, message, Ready/ContainersReady False and
    every container terminated with `exit_code` (default 0 for Succeeded, 1 for Failed).
    """
    if phase not in ("Succeeded", "Failed"):
        raise ValueError(f"phase must be Succeeded or Failed, not {phase!r}")
    pod = cluster.kubectl_json("get", "pod", name, "-n", namespace)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    code = exit_code if exit_code is not None else (0 if phase == "Succeeded" else 1)
    term_reason = "Completed" if code == 0 else "Error"
    old = {c["name"]: c for c in pod["status"].get("containerStatuses") or []}
    statuses = []
    for container in pod["spec"]["containers"]:
        started = (old.get(container["name"], {}).get("state", {}).get("running") or {}).get(
            "startedAt", now
        )
        statuses.append(
            {
                "name": container["name"],
                "image": container.get("image", ""),
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": old.get(container["name"], {}).get("restartCount", 0),
                "state": {
                    "terminated": {
                        "exitCode": code,
                        "reason": term_reason,
                        "startedAt": started,
                        "finishedAt": now,
                    }
                },
            }
        )
    conditions = [
        c
        for c in pod["status"].get("conditions") or []
        if c["type"] not in ("Ready", "ContainersReady", (condition or {}).get("type"))
    ]
    conditions += [
        {
            "type": t,
            "status": "False",
            "reason": "PodCompleted" if phase == "Succeeded" else "PodFailed",
            "lastTransitionTime": now,
        }
        for t in ("Ready", "ContainersReady")
    ]
    if condition:
        conditions.append({**condition, "lastTransitionTime": now})
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "containerStatuses": statuses,
    }
    if reason is not None:
        status["reason"] = reason
    if message is not None:
        status["message"] = message
    proc = cluster.kubectl(
        "patch",
        "pod",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
        "-o",
        "json",
        check=check,
    )
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def _ensure_nodes(cluster: Cluster, count: int, timeout: float) -> tuple[str, ...]:
    wanted = default_node_names(count)
    existing = {n["metadata"]["name"]: n for n in _list_nodes(cluster)}
    used = [s for n in existing.values() if (s := node_slot(n)) is not None]
    manifests = []
    for index, name in enumerate(wanted):
        if name in existing:
            continue
        slot = index if index not in used else free_slot(used)
        used.append(slot)
        manifests.append(node_manifest(name, slot))
    if manifests:
        doc = {"apiVersion": "v1", "kind": "List", "items": manifests}
        cluster.kubectl("create", "-f", "-", input=json.dumps(doc))
    wait_nodes_ready(cluster, wanted, timeout=timeout)
    return tuple(wanted)


def _cluster(name: str, bin_dir: Path, kubectl: Path, reused: bool) -> Cluster:
    return Cluster(
        name=name,
        kubeconfig=kubeconfig_path(name),
        bin_dir=bin_dir,
        workdir=cluster_dir(name),
        kubectl_path=kubectl,
        reused=reused,
    )


def start(
    name: str = DEFAULT_NAME,
    nodes: int = DEFAULT_NODES,
    *,
    bin_dir: Path | None = None,
    timeout: float = 180,
) -> Cluster:
    """Start the cluster, or reuse it when it already runs healthy; wait for nodes Ready."""
    bin_dir = bin_dir or ensure_binaries()
    kubectl = find_kubectl()
    with _lock(name):
        started = time.monotonic()
        reused = _healthy(name, bin_dir, kubectl)
        if reused:
            log(f"reusing running cluster {name!r}")
        else:
            _stop_locked(name, bin_dir, kubectl, quiet=True)
            _create(name, bin_dir, kubectl, timeout)
        cluster = _cluster(name, bin_dir, kubectl, reused)
        _wait_api_ready(cluster, timeout)
        names = _ensure_nodes(cluster, nodes, timeout)
        _wait_default_service_account(cluster, timeout)
        log(f"cluster {name!r} ready in {time.monotonic() - started:.1f} s: {cluster.kubeconfig}")
        return dataclasses.replace(cluster, nodes=names)


def _create(name: str, bin_dir: Path, kubectl: Path, timeout: float) -> None:
    workdir = cluster_dir(name)
    kwok_workdir().mkdir(parents=True, exist_ok=True)
    config_file = kwok_workdir() / f"{name}.kwokctl.json"
    config_file.write_text(json.dumps(render_kwokctl_config(bin_dir, kubectl), indent=2) + "\n")
    log_file = kwok_workdir() / f"{name}.kwokctl.log"
    log_file.write_text("")
    log(f"creating cluster {name!r} in {workdir}")
    proc = _kwokctl(
        bin_dir,
        kubectl,
        "create",
        "cluster",
        "--name",
        name,
        "--config",
        str(config_file),
        "--timeout",
        f"{int(timeout)}s",
        timeout=timeout + 30,
        log_file=log_file,
    )
    if proc.returncode != 0:
        detail = _component_log_tail(name)
        _stop_locked(name, bin_dir, kubectl, quiet=True)
        raise ClusterError(
            f"kwokctl create cluster failed ({proc.returncode}):\n{proc.stderr.strip()}\n{detail}"
        )
    state = {"bin_dir": str(bin_dir), "kubectl": str(kubectl), "created": time.time()}
    (workdir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def _stop_locked(name: str, bin_dir: Path | None, kubectl: Path | None, quiet: bool) -> None:
    workdir = cluster_dir(name)
    if workdir.exists() and bin_dir is not None and kubectl is not None:
        proc = _kwokctl(bin_dir, kubectl, "delete", "cluster", "--name", name, timeout=120)
        if proc.returncode != 0 and not quiet:
            log(f"kwokctl delete cluster failed ({proc.returncode}): {proc.stderr.strip()}")
    # Whatever kwokctl missed (no pid file, kwokctl absent or failing): every process still
    # running a binary of this cluster. Pid files alone could name a recycled pid.
    leftovers = _processes_under(workdir)
    if leftovers:
        log(f"killing leftover processes of cluster {name!r}: {leftovers}")
        _kill(leftovers)
    if workdir.exists():
        shutil.rmtree(workdir, ignore_errors=True)


def _recorded_tools(name: str) -> tuple[Path | None, Path | None]:
    """The bin directory and kubectl the cluster was created with (nothing is built)."""
    state = _load_state(name) or {}
    bin_dir = Path(state["bin_dir"]) if state.get("bin_dir") else None
    if bin_dir is not None and not (bin_dir / "kwokctl").is_file():
        bin_dir = None
    try:
        kubectl: Path | None = find_kubectl()
    except ClusterError:
        kubectl = Path(state["kubectl"]) if state.get("kubectl") else None
    return bin_dir, kubectl


def stop(name: str = DEFAULT_NAME) -> None:
    """Stop the cluster, kill every process it started and remove its state."""
    with _lock(name):
        bin_dir, kubectl = _recorded_tools(name)
        _stop_locked(name, bin_dir, kubectl, quiet=False)
        for leftover in (f"{name}.kwokctl.json", f"{name}.kwokctl.log"):
            (kwok_workdir() / leftover).unlink(missing_ok=True)
    log(f"cluster {name!r} stopped")


def connect(name: str = DEFAULT_NAME) -> Cluster:
    """The running cluster `name`, without starting (or building) anything."""
    bin_dir, kubectl = _recorded_tools(name)
    if bin_dir is None or kubectl is None or not _healthy(name, bin_dir, kubectl):
        raise ClusterError(f"cluster {name!r} is not running")
    return _cluster(name, bin_dir, kubectl, reused=True)


def status(name: str = DEFAULT_NAME) -> dict[str, Any]:
    pids = component_pids(name)
    info: dict[str, Any] = {
        "name": name,
        "workdir": str(cluster_dir(name)),
        "kubeconfig": str(kubeconfig_path(name)),
        "components": {
            c: {"pid": pids.get(c), "running": bool(pids.get(c)) and _pid_alive(pids[c])}
            for c in COMPONENTS
        },
        "healthy": False,
        "nodes": {},
    }
    try:
        cluster = connect(name)
    except ClusterError:
        return info
    info["healthy"] = True
    info["nodes"] = {
        n["metadata"]["name"]: {
            "ready": _node_ready(n),
            "ip": next(
                (
                    a["address"]
                    for a in n["status"].get("addresses", [])
                    if a["type"] == "InternalIP"
                ),
                None,
            ),
            "podCIDR": n["spec"].get("podCIDR"),
            NPU_RESOURCE: n["status"].get("allocatable", {}).get(NPU_RESOURCE),
        }
        for n in _list_nodes(cluster)
    }
    return info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default=os.environ.get("DENSENET_CLUSTER", DEFAULT_NAME))
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start (or reuse) the cluster; prints the kubeconfig path")
    up.add_argument("--nodes", type=int, default=DEFAULT_NODES)
    sub.add_parser("down", help="stop the cluster and remove its state")
    sub.add_parser("status", help="components, health and nodes, as JSON")
    sub.add_parser("kubeconfig", help="print the kubeconfig path")
    add = sub.add_parser("add-node", help="add a fake Ascend node")
    add.add_argument("node")
    add.add_argument("--npus", type=int, default=8)
    delete = sub.add_parser("delete-node", help="delete a node")
    delete.add_argument("node")
    delete.add_argument(
        "--gc-pods", action="store_true", help="fail and delete its pods now, not in ~45 s"
    )
    args = parser.parse_args(argv)

    try:
        if args.command == "up":
            print(start(args.name, args.nodes).kubeconfig)
        elif args.command == "down":
            stop(args.name)
        elif args.command == "status":
            info = status(args.name)
            print(json.dumps(info, indent=2))
            return 0 if info["healthy"] else 1
        elif args.command == "kubeconfig":
            print(kubeconfig_path(args.name))
        elif args.command == "add-node":
            add_node(connect(args.name), args.node, npus=args.npus)
        elif args.command == "delete-node":
            delete_node(connect(args.name), args.node, gc_pods=args.gc_pods)
    except ClusterError as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def service_account_kubeconfig(
    kubeconfig: Path, namespace: str, account: str, path: Path, *, duration: str = "1h"
) -> Path:
    """A kubeconfig that authenticates only as `account`, with a TokenRequest token: what a
    pod of that ServiceAccount gets, for processes that stand in for pods."""
    kubectl = find_kubectl()
    token = _kubectl(kubectl, kubeconfig, "create", "token", account, "-n", namespace,
                     f"--duration={duration}").stdout.strip()  # fmt: skip
    view = json.loads(
        _kubectl(kubectl, kubeconfig, "config", "view", "--raw", "--minify", "-o", "json").stdout
    )
    cluster = dict(view["clusters"][0]["cluster"])
    if "certificate-authority" in cluster:  # inline it: the file may be relative to the kubeconfig
        ca = Path(cluster.pop("certificate-authority"))
        ca = ca if ca.is_absolute() else kubeconfig.parent / ca
        cluster["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": account,
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "local", "user": account, "namespace": namespace}}],
    }))  # fmt: skip
    return path
