"""A local stand-in for the kubelet's container runtime, for the demo and the end-to-end test.

KWOK schedules pods and gives them IPs, but runs nothing. This runs the trainer container of
each scheduled pod of a job as a local process, exactly as the operator wrote it: the pod's
command and args, its env (downward-API fields resolved), its volumes (ConfigMaps written to a
local directory and kept in sync, hostPath as the host path, emptyDir as a fresh directory),
and its ServiceAccount's identity (a TokenRequest token in a kubeconfig). What cannot be the
same without a container runtime is translated, and only that: a mount path in an argument
or variable becomes the local directory behind it, and the cluster DNS name of the master
becomes 127.0.0.1 (every pod runs on this machine). When a process exits, the pod's status is
set as a kubelet would (phase and the container's exit code), so the operator sees it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kubernetes import client, config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from localcluster import service_account_kubeconfig

JOB_LABEL = "training.densenet.dev/job-name"
MERGE_PATCH = "application/merge-patch+json"


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


@dataclass
class LocalKubelet:
    kubeconfig: Path
    namespace: str
    job: str
    workdir: Path
    output: TextIO = sys.stdout
    on_line: Callable[[str, str], None] | None = None
    running: dict[str, _Running] = field(default_factory=dict)
    finished: dict[str, int] = field(default_factory=dict)  # pod uid -> exit code

    def __post_init__(self) -> None:
        self.api_client = config.new_client_from_config(config_file=str(self.kubeconfig))
        self.core = client.CoreV1Api(self.api_client)
        self._lock = threading.Lock()

    # -- one pass -------------------------------------------------------------------------
    def sync(self) -> None:
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"{JOB_LABEL}={self.job}", _preload_content=False
        )
        items = json.loads(pods.data)["items"]
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
        deadline = time.monotonic() + timeout
        try:
            while not done():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.job} did not finish within {timeout:.0f}s")
                self.sync()
                time.sleep(interval)
        finally:
            self.stop_all()

    def stop_all(self) -> None:
        for run in self.running.values():
            self._stop(run)
        self.running.clear()

    # -- containers -----------------------------------------------------------------------
    def _start(self, pod: Mapping[str, Any]) -> _Running:
        name = pod["metadata"]["name"]
        container = pod["spec"]["containers"][0]
        root = self.workdir / name / pod["metadata"]["uid"][:8]
        root.mkdir(parents=True, exist_ok=True)
        mounts: dict[str, Path] = {}
        configmaps: dict[Path, tuple[str, str]] = {}
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or ()}
        for mount in container.get("volumeMounts") or ():
            volume = volumes[mount["name"]]
            if "hostPath" in volume:
                local = Path(volume["hostPath"]["path"])
                local.mkdir(parents=True, exist_ok=True)
            else:
                local = root / "volumes" / mount["name"]
                local.mkdir(parents=True, exist_ok=True)
                if "configMap" in volume:
                    configmaps[local] = (volume["configMap"]["name"], self.namespace)
            mounts[mount["mountPath"]] = local
        env = {key: translate(value, mounts) for key, value in resolve_env(pod, container).items()}
        if env.get("MASTER_ADDR", "").split(".")[-1] == pod["spec"].get("subdomain"):
            env["MASTER_ADDR"] = "127.0.0.1"  # the cluster DNS name; every pod runs here
        env["KUBECONFIG"] = str(self._service_account_kubeconfig(pod, root))
        process_env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("KUBERNETES_", "KUBECONFIG"))
        }
        process_env.update(env)
        process_env["PATH"] = f"{Path(sys.executable).parent}:{process_env.get('PATH', '')}"
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
                print(f"[{pod}] {line}", file=self.output, flush=True)

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
        code = run.process.returncode
        if code < 0:  # killed by a signal: report as a shell would, 128 + signal
            code = 128 - code
        run.pump.join(timeout=5)
        self.finished[run.uid] = code
        phase = "Succeeded" if code == 0 else "Failed"
        self._print(run.pod, f"exited with code {code}: pod {phase}")
        status = {
            "phase": phase,
            "containerStatuses": [{
                "name": "trainer", "image": "local", "imageID": "", "ready": False, "restartCount": 0,
                "state": {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}},
            }],
        }  # fmt: skip
        self.core.patch_namespaced_pod_status(
            run.pod, self.namespace, {"status": status}, _content_type=MERGE_PATCH
        )

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
