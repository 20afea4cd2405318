"""Integration fixtures: the CRD installed into the local cluster and the operator running as a
real process (`densenet-operator run`) against it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "densenettrainings.training.densenet.dev.yaml"
ASCEND_ANNOTATION = "ascend.kubectl.kubernetes.io/ascend-910-configuration"


def wait_for(
    predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.2, what: str = ""
) -> Any:
    """Polls until predicate() is truthy and returns its value; fails naming `what`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or predicate}; last value: {last!r}"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    """`densenet-operator run` as a child process; can be killed and started again."""

    def __init__(self, kubeconfig: Path, log_path: Path, *extra_args: str) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, wait: bool = True) -> None:
        self.port = _free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "DENSENET_TRAINER_IMAGE": "densenet-trainer:test",
        }
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "densenet_operator.cli", "run", "--verbose",
             "--liveness", f"http://127.0.0.1:{self.port}/healthz", *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        if wait:
            wait_for(
                self.healthy,
                timeout=60,
                what=f"the operator's liveness endpoint (log: {self.log_path})",
            )

    def healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"the operator exited with {self.process.returncode}:\n{self.log_tail()}"
            )
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/healthz", timeout=1
            ) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no clean-up, as when a node dies under the operator."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def crd(kubectl: Any) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/densenettrainings.training.densenet.dev",
    )


@pytest.fixture(scope="session")
def operator(
    cluster: Any, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        cluster.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log"
    )
    process.start()
    yield process
    process.stop()


class Jobs:
    """Helpers on DenseNetTrainings and their pods in one namespace."""

    def __init__(self, kubectl: Any, namespace: str) -> None:
        self.kubectl = kubectl
        self.namespace = namespace

    def get(self, name: str) -> dict[str, Any]:
        return self.kubectl.json("get", "dnt", name, "-n", self.namespace)

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def pods(self, name: str) -> list[dict[str, Any]]:
        items = self.kubectl.json(
            "get", "pods", "-n", self.namespace, "-l", f"training.densenet.dev/job-name={name}"
        )["items"]
        return sorted(
            items, key=lambda p: int(p["metadata"]["labels"]["training.densenet.dev/replica-index"])
        )

    def live_pods(self, name: str) -> list[dict[str, Any]]:
        return [p for p in self.pods(name) if not p["metadata"].get("deletionTimestamp")]

    def wait_phase(self, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(
            lambda: (s := self.status(name)).get("phase") == phase and s,
            timeout=timeout,
            what=f"{name} to reach phase {phase}",
        )

    def wait_running_pods(self, name: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        def ready() -> list[dict[str, Any]] | None:
            pods = self.live_pods(name)
            ok = len(pods) == count and all(
                p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP")
                for p in pods
            )
            return pods if ok else None

        return wait_for(ready, timeout=timeout, what=f"{count} running pods of {name}")

    def annotate_devices(
        self, pod: dict[str, Any], devices: int, *, device_ip: str | None = None
    ) -> None:
        """What the Ascend device plugin does when it allocates NPUs to a pod."""
        index = int(pod["metadata"]["labels"]["training.densenet.dev/replica-index"])
        config = {
            "pod_name": pod["metadata"]["name"],
            "server_id": pod["status"]["hostIP"],
            "devices": [
                {
                    "device_id": str(d),
                    "device_ip": device_ip or f"192.168.{100 + d % 4}.{10 + index}",
                }
                for d in range(devices)
            ],
        }
        self.kubectl(
            "annotate", "pod", pod["metadata"]["name"], "-n", self.namespace, "--overwrite",
            f"{ASCEND_ANNOTATION}={json.dumps(config)}",
        )  # fmt: skip

    def rank_table(self, name: str) -> dict[str, Any]:
        configmap = self.kubectl.json(
            "get", "configmap", f"rings-config-{name}", "-n", self.namespace
        )
        return json.loads(configmap["data"]["hccl.json"])

    def set_pod_phase(self, pod_name: str, phase: str, exit_code: int | None = None) -> None:
        """Ends a pod as its kubelet would: phase, and the trainer container's exit code."""
        status: dict[str, Any] = {"phase": phase}
        if exit_code is not None:
            status["containerStatuses"] = [{
                "name": "trainer", "image": "densenet-trainer:test", "imageID": "", "ready": False,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed"}},
            }]  # fmt: skip
        self.kubectl(
            "patch", "pod", pod_name, "-n", self.namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": status}),
        )  # fmt: skip


@pytest.fixture
def jobs(kubectl: Any, namespace: str, operator: OperatorProcess) -> Jobs:
    return Jobs(kubectl, namespace)
