"""Fixtures shared by every test folder: the local cluster, kubectl, a namespace per test.

- `cluster` (session): the control plane of hack/localcluster.py, started once per session and
  stopped at its end. Environment:
    DENSENET_KUBECONFIG=PATH   use that cluster instead; nothing is started or stopped.
    DENSENET_KEEP_CLUSTER=1    leave the cluster running after the session (fast iteration;
                               the next session reuses it; `python hack/localcluster.py down`).
    DENSENET_CLUSTER=NAME      cluster name (default `densenet`).
  A cluster that was already running when the session began (kept by an earlier session or
  started with `python hack/localcluster.py up`) is reused and left running.
  While the session runs, KUBECONFIG points at the cluster, so kopf and the Kubernetes clients
  find it without being told.
- `kubectl` (session): runs the real kubectl against the cluster.
- `namespace`: a fresh namespace for one test, deleted after it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_localcluster() -> Any:
    """hack/localcluster.py as module `localcluster` (hack/ is not a package)."""
    if "localcluster" in sys.modules:
        return sys.modules["localcluster"]
    spec = importlib.util.spec_from_file_location("localcluster", ROOT / "hack" / "localcluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["localcluster"] = module
    spec.loader.exec_module(module)
    return module


localcluster = _load_localcluster()


class Kubectl:
    """The kubectl binary bound to one kubeconfig.

    `kubectl("get", "pods", "-n", ns)` returns the CompletedProcess (raises on a non-zero exit
    unless check=False); `kubectl.json("get", "pod", name)` adds `-o json` and parses it;
    `kubectl.apply(obj)` applies a manifest given as a dict (or a list of them).
    """

    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    def __call__(
        self,
        *args: str,
        input: str | dict[str, Any] | list[Any] | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        if input is not None and not isinstance(input, str):
            input = json.dumps(input)
        proc = subprocess.run(
            [str(self.binary), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited with {proc.returncode}:\n{proc.stderr}"
            )
        return proc

    def json(self, *args: str, timeout: float = 60) -> Any:
        return json.loads(self(*args, "-o", "json", timeout=timeout).stdout)

    def apply(
        self, manifest: dict[str, Any] | list[dict[str, Any]], *args: str
    ) -> subprocess.CompletedProcess[str]:
        if isinstance(manifest, list):
            manifest = {"apiVersion": "v1", "kind": "List", "items": manifest}
        return self("apply", "-f", "-", *args, input=manifest)


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@pytest.fixture(scope="session")
def cluster() -> Iterator[Any]:
    external = os.environ.get("DENSENET_KUBECONFIG")
    if external:
        yield localcluster.Cluster(
            name="external",
            kubeconfig=Path(external).expanduser().resolve(),
            bin_dir=None,
            workdir=None,
            kubectl_path=localcluster.find_kubectl(),
            reused=True,
        )
        return
    name = os.environ.get("DENSENET_CLUSTER", localcluster.DEFAULT_NAME)
    started = localcluster.start(name)
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(started.kubeconfig)
    try:
        yield started
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
        if not started.reused and not _truthy("DENSENET_KEEP_CLUSTER"):
            localcluster.stop(name)


@pytest.fixture(scope="session")
def kubectl(cluster: Any) -> Kubectl:
    return Kubectl(cluster.kubectl_path, cluster.kubeconfig)


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace named after the test; its `default` ServiceAccount exists."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{stem}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    deadline = time.monotonic() + 30
    # Pods are refused until the controller manager created the namespace's default SA.
    while kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"ServiceAccount {name}/default never appeared")
        time.sleep(0.1)
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


CRD = ROOT / "crds" / "densenettrainings.training.densenet.dev.yaml"


@pytest.fixture(scope="session")
def crd(kubectl: Kubectl) -> None:
    """The DenseNetTraining CRD, applied once per session (server-side, as the chart would)."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/densenettrainings.training.densenet.dev",
    )
