"""Two operator replicas with kopf peering: the lower priority pauses, one acts."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.operator.conftest import ROOT, Jobs, OperatorProcess, wait_for
from tests.operator.test_metrics_integration import sample, scrape
from tests.operator.test_operator_integration import small_job

pytestmark = pytest.mark.integration
PEERING_CRDS = ROOT / "charts" / "densenet-operator" / "crds" / "kopf-peering.yaml"
CREATED = "densenet_operator_jobs_created_total"
RESTARTED = "densenet_operator_jobs_restarted_total"


def test_two_replicas_with_peering_do_not_both_act(
    cluster: Any, kubectl: Any, crd: None, tmp_path: Path
) -> None:
    kubectl("apply", "-f", str(PEERING_CRDS))
    kubectl(
        "wait",
        "--for=condition=Established",
        "crd/kopfpeerings.kopf.dev",
        "crd/clusterkopfpeerings.kopf.dev",
    )
    namespace = f"peer-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    kubectl.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "densenet"}},
                  "-n", namespace)  # fmt: skip
    replicas = [
        OperatorProcess(
            cluster.kubeconfig,
            tmp_path / f"{label}.log",
            "--namespace",
            namespace,
            "--peering",
            "densenet",
            "--priority",
            priority,
        )
        for label, priority in (("high", "20"), ("low", "10"))
    ]
    high, low = replicas
    with OperatorProcess.others_stopped():
        run_peers(kubectl, namespace, high, low)


def run_peers(kubectl: Any, namespace: str, high: OperatorProcess, low: OperatorProcess) -> None:
    replicas = (high, low)
    try:
        for replica in replicas:
            replica.start()
        # kopf starts every replica paused and lets only the highest priority resume.
        wait_for(
            lambda: "Resuming operations" in high.log_path.read_text(),
            what="the high replica to act",
        )
        wait_for(lambda: "Pausing the watch-stream for densenettrainings" in low.log_path.read_text(),
                 what="the low replica to hold its watch paused")  # fmt: skip
        wait_for(
            lambda: kubectl("get", "sa", "default", "-n", namespace, check=False).returncode == 0
        )
        jobs = Jobs(kubectl, namespace, None)  # never ends a pod by hand
        kubectl.apply(small_job("peered", replicas=2), "-n", namespace)
        jobs.wait_running_pods("peered", 2)
        assert jobs.wait_phase("peered", "Running")["worldSize"] == 16
        assert f"{namespace}/peered:" in high.log_path.read_text()  # it reconciled the job
        assert f"{namespace}/peered:" not in low.log_path.read_text()  # the paused one never did
        assert "Resuming operations" not in low.log_path.read_text()
        job = {"job_namespace": namespace, "device_type": "ascend"}
        assert sample(scrape(high), CREATED, **job) == 1
        assert sample(scrape(low), CREATED, **job) == 0  # the paused replica counts nothing
        # Failover: the active replica goes away, the paused one takes the job over.
        high.stop()
        wait_for(
            lambda: "Resuming operations" in low.log_path.read_text(),
            what="the low replica to resume",
        )
        kubectl("delete", "pod", "peered-worker-0", "-n", namespace, "--wait=false")
        wait_for(
            lambda: f"{namespace}/peered:" in low.log_path.read_text(),
            what="the low replica to reconcile",
        )
        assert jobs.wait_phase("peered", "Running", timeout=60)["restarts"] == 1
        # The job was created once, and counted by the replica that wrote its first phase.
        counted = scrape(low)
        assert sample(counted, CREATED, **job) == 0
        assert sample(counted, RESTARTED, **job, cause="disruption") == 1
    finally:
        for replica in replicas:
            replica.stop()
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
