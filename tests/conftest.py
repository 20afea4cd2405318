"""Fixtures shared by every test folder: the local cluster, kubectl, a namespace per test.

- `cluster` (session): the control plane of hack/localcluster.py, started once per session and
  stopped at its end. Environment:
    DENSENET_KUBECONFIG=PATH   use that cluster instead; nothing is started or stopped.
    DENSENET_KEEP_CLUSTER=1    leave the cluster running after the session (fast iteration;
                               the next session reuses it; `python hack/localcluster.py down`).
    DENSENET_CLUSTER=NAME      cluster name (default `densenet`).
    DENSENET_KUEUE=0           no Kueue (hack/kueue.py); by default the session's cluster runs
                               it, with its webhooks (they touch only namespaces labelled
                               `kueue.x-k8s.io/managed-namespace: "true"`).
  A cluster that was already running when the session began (kept by an earlier session or
  started with `python hack/localcluster.py up`) is reused and left running.
  While the session runs, KUBECONFIG points at the cluster, so kopf and the Kubernetes clients
  find it without being told.
- `kubectl` (session): runs the real kubectl against the cluster.
- `namespace`: a fresh namespace for one test, deleted after it.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import controlplane
import kueue
import localcluster
import pytest
import realnode
from testsupport import Kubectl, create_namespace, install_crd

# Tests of pods that must really run: skipped, with what is missing, where this machine cannot
# have a real node (not root, or without the packages hack/setup.sh installs).
needs_real_node = pytest.mark.skipif(
    bool(realnode.missing_requirements()),
    reason=f"needs a real node: missing {', '.join(realnode.missing_requirements())}",
)


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@pytest.fixture(scope="session")
def cluster() -> Iterator[localcluster.Cluster]:
    external = os.environ.get("DENSENET_KUBECONFIG")
    if external:
        yield controlplane.external(Path(external).expanduser().resolve())
        return
    name = os.environ.get("DENSENET_CLUSTER", localcluster.DEFAULT_NAME)
    started = localcluster.start(name, kueue=kueue.wanted(default=True))
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
def kubectl(cluster: localcluster.Cluster) -> Kubectl:
    return cluster.kubectl


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace named after the test; its `default` ServiceAccount exists."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = create_namespace(kubectl, f"t-{stem}-{uuid.uuid4().hex[:6]}")
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="session")
def crd(kubectl: Kubectl) -> None:
    """The DenseNetTraining CRD, applied once per session (server-side, as the chart would)."""
    install_crd(kubectl)
