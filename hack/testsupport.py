"""What the cluster code, the tests, the benchmarks and the demo share: kubectl, waiting, pods.

- `Kubectl`: the kubectl binary bound to one kubeconfig. The only kubectl wrapper: the local
  cluster's `Cluster.kubectl` and the tests' `kubectl` fixture are instances of it.
- `wait_for`: the only polling loop. Everything that waits for the cluster polls through it.
- pod helpers: a pod's phase, its conditions, whether it runs; namespaces and the CRD.

hack/ is on the import path of the tests (pytest's `pythonpath`) and of every script in hack/
(Python puts a script's own folder first), so this is imported as `testsupport`. Standard
library only (and the contract's names, from the project's venv): the cluster CLI runs it
without the Kubernetes client.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from densenet_contract import CRD_NAME

REPO_ROOT = Path(__file__).resolve().parents[1]
CRD_FILE = REPO_ROOT / "crds" / f"{CRD_NAME}.yaml"
ADMISSION_FILE = REPO_ROOT / "crds" / "densenettrainings-admission.yaml"
TERMINAL_PHASES = ("Succeeded", "Failed")


class ClusterError(RuntimeError):
    """The local cluster, or a tool run against it, failed."""


class KubectlError(ClusterError):
    """kubectl exited with a non-zero status; the message carries its stderr."""

    def __init__(self, args: tuple[str, ...], returncode: int, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} exited with {returncode}:\n{stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


class TimedOut(AssertionError):
    """`wait_for` gave up. An AssertionError, so that a test reads it as a failed check."""


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 60,
    interval: float = 0.2,
    what: str = "",
    retry_on: tuple[type[BaseException], ...] = (),
) -> Any:
    """Polls until predicate() is truthy and returns that value.

    Exceptions of the types in `retry_on` count as "not yet" (the last one is named when time
    runs out); any other exception propagates at once. Raises TimedOut naming `what`.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except retry_on as error:
            last = error
        if time.monotonic() >= deadline:
            raise TimedOut(
                f"timed out after {timeout:g} s waiting for {what or predicate}; last: {last!r}"
            )
        time.sleep(interval)


def find_tool(name: str) -> Path:
    """kubectl or helm from the project's venv (hack/setup.sh puts them there), else from PATH."""
    in_venv = REPO_ROOT / ".venv" / "bin" / name
    if in_venv.exists():
        return in_venv
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ClusterError(f"{name} not found: run `bash hack/setup.sh` first")


Manifest = Mapping[str, Any] | list[Any]


class Kubectl:
    """The kubectl binary bound to one kubeconfig.

    `kubectl("get", "pods", "-n", ns)` returns the CompletedProcess and raises KubectlError on a
    non-zero exit unless check=False; `input` is text, or a manifest sent as JSON (a list of
    manifests becomes a v1 List). `kubectl.json(...)` adds `-o json` and parses it;
    `kubectl.apply(manifest)` applies a dict or a list of them.
    """

    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    def __repr__(self) -> str:
        return f"Kubectl({str(self.binary)!r}, {str(self.kubeconfig)!r})"

    def __call__(
        self,
        *args: str,
        input: str | Manifest | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        if isinstance(input, list):
            input = {"apiVersion": "v1", "kind": "List", "items": input}
        text = input if input is None or isinstance(input, str) else json.dumps(input)
        proc = subprocess.run(
            [str(self.binary), "--kubeconfig", str(self.kubeconfig), *args],
            input=text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise KubectlError(args, proc.returncode, proc.stderr)
        return proc

    def json(self, *args: str, timeout: float = 60) -> Any:
        return json.loads(self(*args, "-o", "json", timeout=timeout).stdout)

    def apply(self, manifest: Manifest, *args: str) -> subprocess.CompletedProcess[str]:
        return self("apply", "-f", "-", *args, input=manifest)

    def succeeds(self, *args: str, input: str | Manifest | None = None) -> bool:
        """Whether `kubectl ARGS` exits 0 (a short timeout: for polling)."""
        return self(*args, input=input, check=False, timeout=10).returncode == 0

    def not_found(self, *args: str) -> bool:
        """Whether `kubectl get ARGS` answers NotFound (not merely fails: for polling)."""
        proc = self("get", *args, check=False, timeout=10)
        return proc.returncode != 0 and "NotFound" in proc.stderr


# ---------------------------------------------------------------------------------------------
# Pods


def pod_phase(kubectl: Kubectl, namespace: str, name: str) -> str | None:
    """The pod's status.phase; None when the pod does not exist (any more)."""
    proc = kubectl("get", "pod", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(proc.stdout)["status"].get("phase") if proc.returncode == 0 else None


def is_running(pod: Mapping[str, Any]) -> bool:
    """Running with an IP: what a pod looks like once KWOK (or a kubelet) started it."""
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and bool(status.get("podIP"))


def condition(obj: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    """The object's status condition of that type, if it has one."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_), None)


# ---------------------------------------------------------------------------------------------
# Namespaces, ServiceAccounts, the CRD


def wait_default_service_account(kubectl: Kubectl, namespace: str, timeout: float = 60) -> None:
    """Pods are refused until the controller manager made the namespace's `default` SA."""
    wait_for(
        lambda: kubectl.succeeds("get", "serviceaccount", "default", "-n", namespace),
        timeout=timeout,
        what=f"ServiceAccount {namespace}/default",
    )


def create_namespace(kubectl: Kubectl, name: str, *, exist_ok: bool = False) -> str:
    """Creates the namespace and waits until pods can be created in it."""
    created = kubectl("create", "namespace", name, check=not exist_ok)
    if created.returncode != 0 and "AlreadyExists" not in created.stderr:
        raise KubectlError(("create", "namespace", name), created.returncode, created.stderr)
    wait_default_service_account(kubectl, name)
    return name


def install_crd(kubectl: Kubectl, path: Path = CRD_FILE) -> None:
    """The DenseNetTraining CRD from crds/, applied server-side (as the chart would), Established,
    and the admission policies beside it (crds/densenettrainings-admission.yaml)."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ADMISSION_FILE))


def service_account_kubeconfig(
    kubeconfig: Path, namespace: str, account: str, path: Path, *, duration: str = "1h"
) -> Path:
    """A kubeconfig that authenticates only as `account`, with a TokenRequest token: what a
    pod of that ServiceAccount gets, for processes that stand in for pods."""
    kubectl = Kubectl(find_tool("kubectl"), kubeconfig)
    token = kubectl("create", "token", account, "-n", namespace, f"--duration={duration}")
    view = kubectl.json("config", "view", "--raw", "--minify")
    cluster = dict(view["clusters"][0]["cluster"])
    if "certificate-authority" in cluster:  # inline it: the file may be relative to the kubeconfig
        ca = Path(cluster.pop("certificate-authority"))
        ca = ca if ca.is_absolute() else kubeconfig.parent / ca
        cluster["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
    context = {"cluster": "local", "user": account, "namespace": namespace}
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": account,
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token.stdout.strip()}}],
        "contexts": [{"name": account, "context": context}],
    }))  # fmt: skip
    return path
