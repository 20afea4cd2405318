"""A local stand-in for a kubelet and its container runtime, for the demo and the e2e test.

KWOK schedules pods and gives them IPs, but runs nothing. `LocalKubelet` runs the trainer
container of each scheduled pod of a job as a local process, exactly as the operator wrote it:
the pod's command and args, its env (downward-API fields resolved), its volumes (ConfigMaps
written to a local directory and kept in sync, hostPath as the host path, emptyDir as a fresh
directory), and its ServiceAccount's identity (a TokenRequest token in a kubeconfig). What
cannot be the same without a container runtime is translated, and only that: a mount path in
an argument or variable becomes the local directory behind it, and a variable holding a pod's
cluster DNS name under the pod's own subdomain (`<host>.<subdomain>`, e.g. MASTER_ADDR or
PET_MASTER_ADDR: the headless Service's name for the master) becomes 127.0.0.1, since every pod
runs on this machine. When a process exits, the pod's status is written by kubelet.py, as a
kubelet would (phase, conditions, the container's exit code), so the operator sees it.

Not emulated: images (the process runs from this venv), resource limits, probes, container
restarts, init and sidecar containers (only the first container runs), Secrets and projected
volumes other than the ServiceAccount token, and network isolation between pods.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kubelet import exit_code_of, set_pod_phase
from kubernetes import client, config
from testsupport import Kubectl, find_tool, service_account_kubeconfig, wait_for

from densenet_operator.naming import LABEL_JOB

LOCALHOST = "127.0.0.1"
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@dataclass
class _Running:
    pod: str
    uid: str
    process: subprocess.Popen[str]
    root: Path
    configmaps: dict[Path, tuple[str, str]]  # local dir -> (configmap name, namespace)
    pump: threading.Thread


def _field(pod: Mapping[str, Any], path: str) -> str:
    value: Any = pod
    for part in path.split("."):
        value = (value or {}).get(part)
    return "" if value is None else str(value)


def resolve_env(pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
    """The container's env as the kubelet computes it (values and downward-API fieldRefs)."""
    env: dict[str, str] = {}
    for var in container.get("env") or ():
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "fieldRef" in (var.get("valueFrom") or {}):
            env[var["name"]] = _field(pod, var["valueFrom"]["fieldRef"]["fieldPath"])
    return env


def translate(value: str, mounts: Mapping[str, Path]) -> str:
    """A container path under a mount point -> the local directory behind it."""
    for mount_path in sorted(mounts, key=len, reverse=True):
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return str(mounts[mount_path]) + value[len(mount_path.rstrip("/")) :]
    return value


def is_pod_dns_name(value: str, subdomain: str | None, namespace: str) -> bool:
    """Whether `value` names a pod through its headless Service: `<host>.<subdomain>`, or the
    same with `.<namespace>`, `.<namespace>.svc` or `.<namespace>.svc.cluster.local` after it."""
    if not subdomain:
        return False
    host, _, rest = value.partition(".")
    under = (subdomain, f"{subdomain}.{namespace}", f"{subdomain}.{namespace}.svc",
             f"{subdomain}.{namespace}.svc.cluster.local")  # fmt: skip
    return DNS_LABEL.fullmatch(host) is not None and rest in under


def localize_pod_addresses(
    env: Mapping[str, str], subdomain: str | None, namespace: str
) -> dict[str, str]:
    """Every variable that holds a pod's DNS name under `subdomain` -> 127.0.0.1: the cluster
    DNS does not resolve here, and every pod runs on this machine."""
    return {
        key: LOCALHOST if is_pod_dns_name(value, subdomain, namespace) else value
        for key, value in env.items()
    }


@dataclass
class LocalKubelet:
    kubeconfig: Path
    namespace: str
    job: str
    workdir: Path
    output: TextIO | None = None  # default: sys.stdout as it is when a line is printed
    on_line: Callable[[str, str], None] | None = None
    running: dict[str, _Running] = field(default_factory=dict)
    finished: dict[str, int] = field(default_factory=dict)  # pod uid -> exit code

    def __post_init__(self) -> None:
        self.api_client = config.new_client_from_config(config_file=str(self.kubeconfig))
        self.core = client.CoreV1Api(self.api_client)
        self.kubectl = Kubectl(find_tool("kubectl"), self.kubeconfig)
        self._lock = threading.Lock()

    # -- one pass -------------------------------------------------------------------------
    def sync(self) -> None:
        reply: Any = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"{LABEL_JOB}={self.job}", _preload_content=False
        )  # the raw reply (urllib3), not a V1PodList: JSON is all that is needed
        items = json.loads(reply.data)["items"]
        live = {
            p["metadata"]["uid"]: p for p in items if not p["metadata"].get("deletionTimestamp")
        }
        for uid, run in list(self.running.items()):
            if uid not in live:  # deleted (gang restart, clean-up): the kubelet kills it
                self._stop(run)
                del self.running[uid]
            elif run.process.poll() is not None:
                self._report_exit(run)
                del self.running[uid]
            else:
                self._refresh_configmaps(run)
        for uid, pod in live.items():
            phase = (pod.get("status") or {}).get("phase")
            if uid in self.running or uid in self.finished or phase != "Running":
                continue
            if not (pod.get("status") or {}).get("podIP"):
                continue
            self.running[uid] = self._start(pod)

    def run_until(
        self, done: Callable[[], bool], interval: float = 0.5, timeout: float = 3600
    ) -> None:
        """Syncs every `interval` seconds until done() holds; then stops every process."""

        def finished() -> bool:
            if done():
                return True
            self.sync()
            return False

        try:
            wait_for(finished, timeout, interval, what=f"job {self.job} to finish")
        finally:
            self.stop_all()

    def stop_all(self) -> None:
        for run in self.running.values():
            self._stop(run)
        self.running.clear()

    # -- containers -----------------------------------------------------------------------
    def _volumes(
        self, pod: Mapping[str, Any], container: Mapping[str, Any], root: Path
    ) -> tuple[dict[str, Path], dict[Path, tuple[str, str]]]:
        """Mount path -> local directory; and the ConfigMaps to keep in sync, by directory."""
        mounts: dict[str, Path] = {}
        configmaps: dict[Path, tuple[str, str]] = {}
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or ()}
        for mount in container.get("volumeMounts") or ():
            volume = volumes[mount["name"]]
            if "hostPath" in volume:
                local = Path(volume["hostPath"]["path"])
            else:
                local = root / "volumes" / mount["name"]
                if "configMap" in volume:
                    configmaps[local] = (volume["configMap"]["name"], self.namespace)
            local.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = local
        return mounts, configmaps

    def _process_env(
        self, pod: Mapping[str, Any], container: Mapping[str, Any], mounts: Mapping[str, Path],
        root: Path,
    ) -> dict[str, str]:  # fmt: skip
        env = {key: translate(value, mounts) for key, value in resolve_env(pod, container).items()}
        env = localize_pod_addresses(env, pod["spec"].get("subdomain"), self.namespace)
        env["KUBECONFIG"] = str(self._service_account_kubeconfig(pod, root))
        process_env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("KUBERNETES_", "KUBECONFIG"))
        }
        process_env.update(env)
        process_env["PATH"] = f"{Path(sys.executable).parent}:{process_env.get('PATH', '')}"
        return process_env

    def _start(self, pod: Mapping[str, Any]) -> _Running:
        name = pod["metadata"]["name"]
        container = pod["spec"]["containers"][0]
        root = self.workdir / name / pod["metadata"]["uid"][:8]
        root.mkdir(parents=True, exist_ok=True)
        mounts, configmaps = self._volumes(pod, container, root)
        process_env = self._process_env(pod, container, mounts, root)
        argv = [
            translate(a, mounts)
            for a in (container.get("command") or []) + (container.get("args") or [])
        ]
        run = _Running(name, pod["metadata"]["uid"], None, root, configmaps, None)  # type: ignore[arg-type]
        self._refresh_configmaps(run)
        process = subprocess.Popen(
            argv, env=process_env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        run.process = process
        run.pump = threading.Thread(target=self._pump, args=(name, process), daemon=True)
        run.pump.start()
        self._print(name, f"started: {' '.join(argv)}")
        return run

    def _pump(self, name: str, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._print(name, line.rstrip("\n"))

    def _print(self, pod: str, line: str) -> None:
        with self._lock:
            if self.on_line is not None:
                self.on_line(pod, line)
            else:
                print(f"[{pod}] {line}", file=self.output or sys.stdout, flush=True)

    def _refresh_configmaps(self, run: _Running) -> None:
        """As the kubelet does: the files follow the ConfigMap, replaced atomically."""
        for local, (name, namespace) in run.configmaps.items():
            configmap = self.core.read_namespaced_config_map(name, namespace)
            for key, value in (configmap.data or {}).items():
                target = local / key
                if target.exists() and target.read_text() == value:
                    continue
                tmp = local / f".{key}.tmp"
                tmp.write_text(value)
                tmp.replace(target)

    def _service_account_kubeconfig(self, pod: Mapping[str, Any], root: Path) -> Path:
        account = pod["spec"].get("serviceAccountName", "default")
        return service_account_kubeconfig(
            self.kubeconfig, self.namespace, account, root / "serviceaccount.kubeconfig"
        )

    def _stop(self, run: _Running) -> None:
        if run.process.poll() is None:
            os.killpg(run.process.pid, signal.SIGTERM)
            try:
                run.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(run.process.pid, signal.SIGKILL)
                run.process.wait()
        self._print(run.pod, f"stopped (exit code {run.process.returncode})")

    def _report_exit(self, run: _Running) -> None:
        """As the kubelet does when the pod's container ends (restartPolicy Never)."""
        code = exit_code_of(run.process.returncode)
        run.pump.join(timeout=5)
        self.finished[run.uid] = code
        phase = "Succeeded" if code == 0 else "Failed"
        self._print(run.pod, f"exited with code {code}: pod {phase}")
        set_pod_phase(self.kubectl, self.namespace, run.pod, phase, exit_code=code)

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
