"""The local control plane's lifecycle: kwokctl's binary runtime on local binaries.

`hack/build-control-plane.sh` builds kube-apiserver, kube-controller-manager, kube-scheduler,
etcd, kwok and kwokctl from Go modules; this module points kwokctl at those binaries (it
downloads nothing), starts, health-checks, reuses and stops the components, and finds and ends
every process they left behind. These are the real components, unchanged: the scheduler places
pods, the controller manager runs garbage collection, and kwok-controller keeps fake nodes Ready
and moves their scheduled pods to Running (fakenodes.py makes the nodes). Beside them runs the simulated Ascend device
plugin (deviceplugin.py), which annotates pods with their chips as Huawei's plugin does; it is
started with the cluster (and again when a reused cluster lacks it) unless
`DENSENET_DEVICE_PLUGIN=0`; `DENSENET_DEVICE_PLUGIN_DELAY` sets its delay (seconds). Kueue's
manager (kueue.py) runs beside them too when asked (`up(kueue=True)`, or DENSENET_KUEUE=1).

Everything binds to 127.0.0.1 on ports kwokctl picks free. State lives under
`$DENSENET_CACHE/kwok` (default `~/.cache/densenet-operator/kwok`), kwokctl's `KWOK_WORKDIR`,
so it never touches a user's own `~/.kwok` clusters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import kueue as kueue_component
import psutil
import realnode
import yaml
from realnode_config import KUBERNETES_SERVICE_IP, NetworkPlan
from testsupport import REPO_ROOT, ClusterError, Kubectl, KubectlError, find_tool, wait_for

BUILD_SCRIPT = REPO_ROOT / "hack" / "build-control-plane.sh"
DEFAULT_NAME = "densenet"
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
PLUGIN_SCRIPT = REPO_ROOT / "hack" / "deviceplugin.py"
PLUGIN = "device-plugin"  # its name in `component_status`; files in the cluster dir:
PLUGIN_PID_FILE, PLUGIN_LOG_FILE, PLUGIN_READY_FILE = (
    "deviceplugin.pid",
    "deviceplugin.log",
    "deviceplugin.ready",
)
KUEUE = "kueue"  # its name in `component_status` (kueue.py: files in the cluster dir)
# Native gang scheduling (KEP-4671): beta and off by default in Kubernetes 1.37. kwokctl hands
# the gates to the apiserver, controller manager (podgroup-protection) and scheduler
# (GangScheduling plugin), and the runtime config to the apiserver (serve the v1beta1 API).
FEATURE_GATES = "GenericWorkload=true"
RUNTIME_CONFIG = "scheduling.k8s.io/v1beta1=true"
# What a wait on the cluster retries: kubectl failing or hanging while a component starts.
TRANSIENT = (KubectlError, subprocess.TimeoutExpired)


def log(message: str) -> None:
    print(f"[localcluster] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A running cluster: kubectl bound to its admin kubeconfig, and what made it."""

    name: str
    kubectl: Kubectl
    bin_dir: Path | None = None  # None for a cluster this module did not start
    workdir: Path | None = None
    reused: bool = False
    nodes: tuple[str, ...] = ()  # the fake (KWOK) nodes
    real_nodes: tuple[str, ...] = ()  # nodes with a kubelet (realnode.py)

    @property
    def kubeconfig(self) -> Path:
        return self.kubectl.kubeconfig


# ---------------------------------------------------------------------------------------------
# Paths, binaries, configuration


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


def render_kwokctl_config(
    bin_dir: Path, kubectl: Path, pki: Path, real_node_network: NetworkPlan | None = None
) -> dict[str, Any]:
    """The KwokctlConfiguration: binary runtime, every binary local, RBAC and admission on;
    native gang scheduling served (FEATURE_GATES, RUNTIME_CONFIG);
    kwok-controller managing only the fake nodes (annotated `kwok.x-k8s.io/node: fake`); and,
    for real nodes, the apiserver advertised on the host bridge (behind the `kubernetes`
    Service), its certificate valid there, and the kubelets reached by InternalIP with the
    cluster's admin certificate (for logs and exec)."""
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
        "kubeFeatureGates": FEATURE_GATES,
        "kubeRuntimeConfig": RUNTIME_CONFIG,
    }
    patches: list[dict[str, Any]] = [
        _patch("kwok-controller", {
            "manage-all-nodes": "false",
            "manage-nodes-with-annotation-selector": "kwok.x-k8s.io/node=fake",
        })
    ]  # fmt: skip
    if real_node_network is not None:
        options["kubeApiserverCertSANs"] = [real_node_network.host_ip, KUBERNETES_SERVICE_IP]
        patches.append(_patch("kube-apiserver", {
            "advertise-address": real_node_network.host_ip,
            "kubelet-preferred-address-types": "InternalIP",
            "kubelet-client-certificate": str(pki / "admin.crt"),
            "kubelet-client-key": str(pki / "admin.key"),
        }))  # fmt: skip
    # The side-by-side benchmark's hook: an audit policy file to count each client's requests.
    if audit_policy := os.environ.get("DENSENET_AUDIT_POLICY"):
        options["kubeAuditPolicy"] = audit_policy
    return {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokctlConfiguration",
        "options": options,
        "componentsPatches": patches,
    }


KWOK_MODULE, KWOK_VERSION = "sigs.k8s.io/kwok", "v0.8.0"  # keep in step with the build script
# kwokctl's own stages for a cluster like ours (pkg/kwokctl/runtime/cluster.go: the "fast" node
# and pod stages, heartbeats with a lease), read from the module; kwokctl uses them only when
# its configuration has no Stage at all, so adding one means giving them all.
KWOK_STAGE_FILES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)
NODE_STATUS_UPDATE_MILLISECONDS = 10000  # kwokctl's default nodeStatusUpdateFrequency
# What a kubelet does to a running pod that is deleted (kubelet's pod workers,
# `pkg/kubelet/pod_workers.go` and `status_manager.go`: since Kubernetes 1.27 a pod the kubelet
# terminated is written in a terminal phase before it goes): its containers get SIGTERM and end
# (exit 143), the pod is Failed. KWOK's pods have no containers and simply vanish, which is the
# same as long as no finalizer holds the pod; one that does (Kueue's `kueue.x-k8s.io/managed`)
# would otherwise stay Running, Terminating, forever. So a held pod ends as a kubelet ends it,
# and pod-delete waits until nothing holds it.
POD_TERMINATE_ON_DELETE: dict[str, Any] = {
    "apiVersion": "kwok.x-k8s.io/v1alpha1",
    "kind": "Stage",
    "metadata": {"name": "pod-terminate-on-delete"},
    "spec": {
        "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
        "selector": {"matchExpressions": [
            {"key": ".metadata.deletionTimestamp", "operator": "Exists"},
            {"key": ".metadata.finalizers", "operator": "Exists"},
            {"key": ".status.phase", "operator": "In", "values": ["Running"]},
        ]},
        "next": {"statusTemplate": """{{ $now := Now }}
{{ $root := . }}
containerStatuses:
{{ range $index, $item := .spec.containers }}
- image: {{ $item.image | Quote }}
  name: {{ $item.name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: 143
      finishedAt: {{ $now | Quote }}
      reason: Error
      startedAt: {{ $root.status.startTime | Quote }}
{{ end }}
phase: Failed
"""},
    },
}  # fmt: skip


def kwok_stages(module_dir: Path) -> list[dict[str, Any]]:
    """The stages kwok-controller runs: kwokctl's defaults (KWOK_STAGE_FILES, with the
    heartbeat's delay as kwokctl sets it), pod-delete only once no finalizer holds the pod, and
    POD_TERMINATE_ON_DELETE."""
    stages = [
        yaml.safe_load((module_dir / "kustomize" / "stage" / name).read_text())
        for name in KWOK_STAGE_FILES
    ]
    for stage in stages:
        name = stage["metadata"]["name"]
        if name == "node-heartbeat-with-lease":
            delay = stage["spec"].setdefault("delay", {})
            frequency = NODE_STATUS_UPDATE_MILLISECONDS
            delay["durationMilliseconds"] = max(delay.get("durationMilliseconds", 0), frequency)
            delay["jitterDurationMilliseconds"] = max(
                delay.get("jitterDurationMilliseconds", 0), frequency + frequency // 10
            )
        if name == "pod-delete":
            stage["spec"]["selector"]["matchExpressions"].append(
                {"key": ".metadata.finalizers", "operator": "DoesNotExist"}
            )
    return [*stages, POD_TERMINATE_ON_DELETE]


def kwok_module_dir() -> Path:
    """Where the Go module cache holds KWOK's module (the build downloaded it)."""
    proc = subprocess.run(["go", "mod", "download", "-json", f"{KWOK_MODULE}@{KWOK_VERSION}"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise ClusterError(f"go mod download {KWOK_MODULE}@{KWOK_VERSION} failed: {proc.stderr}")
    return Path(json.loads(proc.stdout)["Dir"])


def _patch(component: str, args: dict[str, str]) -> dict[str, Any]:
    """Extra flags for a component (appended: they win over kwokctl's own)."""
    return {"name": component, "extraArgs": [{"key": k, "value": v} for k, v in args.items()]}


def _contexts_file(name: str) -> Path:
    """Where kwokctl adds (and removes) the cluster's context: a file of its own, never the
    user's ~/.kube/config, which it would otherwise change and point at this cluster."""
    return kwok_workdir() / f"{name}.kwokctl-contexts.yaml"


def _kwokctl(
    bin_dir: Path, kubectl: Path, *args: str, timeout: float = 300, log_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KWOK_")}
    env["KWOK_WORKDIR"] = str(kwok_workdir())
    # kwokctl looks kubectl up in PATH before it would download one.
    env["PATH"] = os.pathsep.join([str(kubectl.parent), str(bin_dir), env.get("PATH", "")])
    proc = subprocess.run(
        [str(bin_dir / "kwokctl"), *args],
        env=env,
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
def locked(name: str) -> Iterator[None]:
    """Serialises start/stop of one cluster between processes (pytest sessions, CLI calls)."""
    kwok_workdir().mkdir(parents=True, exist_ok=True)
    with (kwok_workdir() / f".{name}.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# Processes


def _running(process: psutil.Process) -> bool:
    """Alive and not a zombie (a zombie still has its pid, but runs nothing)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def pid_running(pid: int | None) -> bool:
    try:
        return pid is not None and _running(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def component_pids(name: str = DEFAULT_NAME) -> dict[str, int]:
    """Pid of each component from kwokctl's pid files (whether it still runs or not)."""
    pids: dict[str, int] = {}
    for pid_file in sorted((cluster_dir(name) / "pids").glob("*.pid")):
        with contextlib.suppress(ValueError, OSError):
            pids[pid_file.stem] = int(pid_file.read_text().strip())
    return pids


def processes_under(workdir: Path) -> list[psutil.Process]:
    """Processes running a binary from the cluster's `bin` directory.

    kwokctl runs every component through a link in `<cluster dir>/bin/`, so this finds the
    components whose pid file is gone, and nothing else.
    """
    prefix = f"{workdir / 'bin'}/"
    return [
        p
        for p in psutil.process_iter(["pid", "cmdline"])
        if p.info["pid"] != os.getpid()
        and (p.info["cmdline"] or [""])[0].startswith(prefix)
        and _running(p)
    ]


def terminate(processes: Sequence[psutil.Process], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL whatever still runs after `timeout` seconds."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    survivors = [p for p in alive if _running(p)]
    for process in survivors:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(survivors, timeout=5)


# ---------------------------------------------------------------------------------------------
# Health


def _load_state(name: str) -> dict[str, Any] | None:
    try:
        return json.loads((cluster_dir(name) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def api_ready(kubectl: Kubectl) -> bool:
    proc = kubectl("get", "--raw", "/readyz", check=False, timeout=10)
    return proc.returncode == 0 and proc.stdout.strip() == "ok"


def _healthy(
    name: str, bin_dir: Path, kubectl: Path, config: list[dict[str, Any]] | None = None
) -> bool:
    """Running with our binaries (and `config`, when given): every component alive and the
    apiserver ready."""
    state = _load_state(name)
    if state is None or state.get("bin_dir") != str(bin_dir):
        return False
    if config is not None and state.get("config") != config:
        return False
    if not kubeconfig_path(name).is_file():
        return False
    pids = component_pids(name)
    if set(pids) != set(COMPONENTS) or not all(pid_running(p) for p in pids.values()):
        return False
    return api_ready(Kubectl(kubectl, kubeconfig_path(name)))


def _component_log_tail(name: str, lines: int = 15) -> str:
    out = []
    for log_file in sorted((cluster_dir(name) / "logs").glob("*.log")):
        with contextlib.suppress(OSError):
            tail = log_file.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log_file}\n" + "\n".join(tail))
    return "\n".join(out)


def component_status(name: str = DEFAULT_NAME) -> dict[str, dict[str, Any]]:
    """Each component's pid (from its pid file) and whether that process runs, and the same
    for the device plugin and Kueue."""
    pids = component_pids(name)
    status = {c: {"pid": pids.get(c), "running": pid_running(pids.get(c))} for c in COMPONENTS}
    return {
        **status,
        PLUGIN: device_plugin_status(name),
        KUEUE: kueue_component.status(cluster_dir(name)),
    }


# ---------------------------------------------------------------------------------------------
# The simulated Ascend device plugin (hack/deviceplugin.py): a process of the cluster


def device_plugin_enabled() -> bool:
    """On unless DENSENET_DEVICE_PLUGIN is 0/false/no/off."""
    value = os.environ.get("DENSENET_DEVICE_PLUGIN", "").strip().lower()
    return value not in {"0", "false", "no", "off"}


def device_plugin_delay() -> float:
    """Seconds from a pod bound to its annotation: DENSENET_DEVICE_PLUGIN_DELAY, else 0.5."""
    return float(os.environ.get("DENSENET_DEVICE_PLUGIN_DELAY") or 0.5)


def device_plugin_processes(name: str = DEFAULT_NAME) -> list[psutil.Process]:
    """The plugin processes serving cluster `name`, found by their command line (the script
    and this cluster's kubeconfig), so that a lost pid file never leaves one behind."""
    wanted = (str(PLUGIN_SCRIPT), str(kubeconfig_path(name)))
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if all(w in cmdline for w in wanted) and _running(process):
            found.append(process)
    return found


def _plugin_current(process: psutil.Process, name: str, delay: float) -> bool:
    """Started from the script as it is now, with this delay."""
    try:
        recorded = json.loads((cluster_dir(name) / PLUGIN_PID_FILE).read_text())
        newer_script = PLUGIN_SCRIPT.stat().st_mtime > process.create_time()
    except (OSError, ValueError, psutil.Error):
        return False
    return recorded == {"pid": process.pid, "delay": delay} and not newer_script


def ensure_device_plugin(
    name: str = DEFAULT_NAME, *, delay: float | None = None, timeout: float = 60
) -> int:
    """The plugin of cluster `name` running (started, or restarted when its script changed or
    its delay differs); returns its pid once its caches are synced."""
    delay = device_plugin_delay() if delay is None else delay
    running = device_plugin_processes(name)
    if len(running) == 1 and _plugin_current(running[0], name, delay):
        return running[0].pid
    stop_device_plugin(name)
    workdir = cluster_dir(name)
    ready = workdir / PLUGIN_READY_FILE
    with (workdir / PLUGIN_LOG_FILE).open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(PLUGIN_SCRIPT), "--kubeconfig", str(kubeconfig_path(name)),
             "--delay", str(delay), "--ready-file", str(ready)],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=str(REPO_ROOT),
        )  # fmt: skip
    (workdir / PLUGIN_PID_FILE).write_text(json.dumps({"pid": process.pid, "delay": delay}))

    def synced() -> bool:
        if process.poll() is not None:
            tail = (workdir / PLUGIN_LOG_FILE).read_text(errors="replace").splitlines()[-15:]
            raise ClusterError(f"the device plugin exited with {process.returncode}:\n"
                               + "\n".join(tail))  # fmt: skip
        return ready.is_file()

    wait_for(synced, timeout, what="the device plugin's caches to sync")
    log(f"device plugin of cluster {name!r} running (pid {process.pid}, delay {delay:g} s)")
    return process.pid


def stop_device_plugin(name: str = DEFAULT_NAME) -> None:
    processes = device_plugin_processes(name)
    if processes:
        terminate(processes, timeout=5)
    for leftover in (PLUGIN_PID_FILE, PLUGIN_READY_FILE):
        (cluster_dir(name) / leftover).unlink(missing_ok=True)


def device_plugin_status(name: str = DEFAULT_NAME) -> dict[str, Any]:
    """The plugin's pid, whether it runs, its delay and its log."""
    processes = device_plugin_processes(name)
    try:
        delay = json.loads((cluster_dir(name) / PLUGIN_PID_FILE).read_text())["delay"]
    except (OSError, ValueError, KeyError, TypeError):
        delay = None
    return {
        "pid": processes[0].pid if processes else None,
        "running": bool(processes),
        "delay": delay if processes else None,
        "log": str(cluster_dir(name) / PLUGIN_LOG_FILE),
    }


# ---------------------------------------------------------------------------------------------
# Start, stop, connect


def _cluster(name: str, bin_dir: Path, kubectl: Path, reused: bool) -> Cluster:
    return Cluster(
        name=name,
        kubectl=Kubectl(kubectl, kubeconfig_path(name)),
        bin_dir=bin_dir,
        workdir=cluster_dir(name),
        reused=reused,
    )


def up(
    name: str,
    *,
    bin_dir: Path | None = None,
    timeout: float = 180,
    device_plugin: bool | None = None,
    real_nodes: bool = False,
    kueue: bool | None = None,
) -> Cluster:
    """The control plane `name` with its apiserver ready: reused when it already runs healthy
    with these binaries and this configuration, else (re)created; the device plugin running
    unless `device_plugin` is False (None: `device_plugin_enabled()`); and Kueue running when
    `kueue` is True, else stopped, its webhooks removed (None: DENSENET_KUEUE when set, else
    as the cluster had it: `kueue.wanted`, `kueue.recorded`). With
    `real_nodes`, configured for them (realnode.py starts them). Call it holding
    `locked(name)`."""
    bin_dir = bin_dir or ensure_binaries()
    kubectl = find_tool("kubectl")
    if kueue is None:
        kueue = kueue_component.wanted()
    if kueue is None:  # asked nothing: as it was (before a recreation forgets it)
        kueue = kueue_component.recorded(cluster_dir(name))
    network = realnode.network_plan(name) if real_nodes else None
    config = [
        render_kwokctl_config(bin_dir, kubectl, cluster_dir(name) / "pki", network),
        *kwok_stages(kwok_module_dir()),
    ]
    reused = _healthy(name, bin_dir, kubectl, config)
    if reused:
        log(f"reusing running cluster {name!r}")
    else:
        _stop_locked(name, bin_dir, kubectl, quiet=True)
        _create(name, bin_dir, kubectl, timeout, config)
    cluster = _cluster(name, bin_dir, kubectl, reused)
    wait_for(
        lambda: api_ready(cluster.kubectl),
        timeout=timeout,
        what="the apiserver's /readyz",
        retry_on=TRANSIENT,
    )
    if device_plugin_enabled() if device_plugin is None else device_plugin:
        ensure_device_plugin(name)
    else:
        stop_device_plugin(name)
    if kueue:
        kueue_component.ensure(cluster_dir(name), cluster.kubectl, timeout=timeout)
    else:
        kueue_component.stop(cluster_dir(name), cluster.kubectl)
    return cluster


def _create(
    name: str, bin_dir: Path, kubectl: Path, timeout: float, config: list[dict[str, Any]]
) -> None:
    """`config`: the KwokctlConfiguration and the Stages (one YAML stream, JSON documents)."""
    workdir = cluster_dir(name)
    kwok_workdir().mkdir(parents=True, exist_ok=True)
    config_file = kwok_workdir() / f"{name}.kwokctl.yaml"
    config_file.write_text("---\n".join(json.dumps(doc, indent=2) + "\n" for doc in config))
    log_file = kwok_workdir() / f"{name}.kwokctl.log"
    log_file.write_text("")
    log(f"creating cluster {name!r} in {workdir}")
    proc = _kwokctl(
        bin_dir, kubectl, "create", "cluster", "--name", name, "--config", str(config_file),
        "--timeout", f"{int(timeout)}s", f"--kubeconfig={_contexts_file(name)}",
        timeout=timeout + 30, log_file=log_file,
    )  # fmt: skip
    if proc.returncode != 0:
        detail = _component_log_tail(name)
        _stop_locked(name, bin_dir, kubectl, quiet=True)
        raise ClusterError(
            f"kwokctl create cluster failed ({proc.returncode}):\n{proc.stderr.strip()}\n{detail}"
        )
    state = {"bin_dir": str(bin_dir), "kubectl": str(kubectl), "created": time.time(),
             "config": config}  # fmt: skip
    (workdir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def _stop_locked(name: str, bin_dir: Path | None, kubectl: Path | None, quiet: bool) -> None:
    workdir = cluster_dir(name)
    kueue_component.stop(workdir)
    stop_device_plugin(name)
    realnode.stop_nodes(real_node_site(name, bin_dir))
    if workdir.exists() and bin_dir is not None and kubectl is not None:
        proc = _kwokctl(
            bin_dir, kubectl, "delete", "cluster", "--name", name,
            f"--kubeconfig={_contexts_file(name)}", timeout=120,
        )  # fmt: skip
        if proc.returncode != 0 and not quiet:
            log(f"kwokctl delete cluster failed ({proc.returncode}): {proc.stderr.strip()}")
    # Whatever kwokctl missed (no pid file, kwokctl absent or failing): every process still
    # running a binary of this cluster. Pid files alone could name a recycled pid.
    leftovers = processes_under(workdir)
    if leftovers:
        log(f"killing leftover processes of cluster {name!r}: {[p.pid for p in leftovers]}")
        terminate(leftovers)
    if workdir.exists():
        shutil.rmtree(workdir, ignore_errors=True)


def _recorded_tools(name: str) -> tuple[Path | None, Path | None]:
    """The bin directory and kubectl the cluster was created with (nothing is built)."""
    state = _load_state(name) or {}
    bin_dir = Path(state["bin_dir"]) if state.get("bin_dir") else None
    if bin_dir is not None and not (bin_dir / "kwokctl").is_file():
        bin_dir = None
    try:
        kubectl: Path | None = find_tool("kubectl")
    except ClusterError:
        kubectl = Path(state["kubectl"]) if state.get("kubectl") else None
    return bin_dir, kubectl


def stop(name: str = DEFAULT_NAME) -> None:
    """Stop the cluster, kill every process it started and remove its state."""
    with locked(name):
        bin_dir, kubectl = _recorded_tools(name)
        _stop_locked(name, bin_dir, kubectl, quiet=False)
        for leftover in (f"{name}.kwokctl.json", f"{name}.kwokctl.yaml", f"{name}.kwokctl.log",
                         _contexts_file(name).name):  # fmt: skip
            (kwok_workdir() / leftover).unlink(missing_ok=True)
        realnode.release_network_plan(name)
    log(f"cluster {name!r} stopped")


def real_node_site(name: str, bin_dir: Path | None) -> realnode.Site:
    """Where cluster `name`'s real nodes live and what they run."""
    return realnode.Site(
        name, cache_dir(), cluster_dir(name) / "pki", bin_dir or Path("/nonexistent")
    )


def connect(name: str = DEFAULT_NAME) -> Cluster:
    """The running cluster `name`, without starting (or building) anything."""
    bin_dir, kubectl = _recorded_tools(name)
    if bin_dir is None or kubectl is None or not _healthy(name, bin_dir, kubectl):
        raise ClusterError(f"cluster {name!r} is not running")
    return _cluster(name, bin_dir, kubectl, reused=True)


def external(kubeconfig: Path) -> Cluster:
    """A cluster someone else runs (DENSENET_KUBECONFIG): nothing is started or stopped."""
    return Cluster(name="external", kubectl=Kubectl(find_tool("kubectl"), kubeconfig), reused=True)
