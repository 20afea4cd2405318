"""The trainer reports into a real DenseNetTraining, as its job's ServiceAccount."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from densenet_operator import rbac
from densenet_operator.spec import JobRef
from tests.conftest import localcluster

pytestmark = pytest.mark.integration


def test_trainer_fills_status_training_with_a_token_of_its_service_account(
    kubectl: Any, crd: None, namespace: str, tmp_path: Path
) -> None:
    name = "reporter"
    kubectl.apply({
        "apiVersion": "training.densenet.dev/v1alpha1", "kind": "DenseNetTraining", "metadata": {"name": name},
        "spec": {"model": "densenet121", "device": {"type": "cpu"}, "devicesPerReplica": 1, "data": {"synthetic": True}},
    }, "-n", namespace)  # fmt: skip
    uid = kubectl.json("get", "dnt", name, "-n", namespace)["metadata"]["uid"]
    job = JobRef(name=name, namespace=namespace, uid=uid)
    # The identity the operator gives the trainer (built by the operator's own builders).
    kubectl.apply(
        [rbac.build_service_account(job), rbac.build_role(job), rbac.build_role_binding(job)]
    )
    kubeconfig = localcluster.service_account_kubeconfig(
        kubectl.kubeconfig, namespace, f"{name}-trainer", tmp_path / "trainer.kubeconfig"
    )
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "DENSENET_JOB_NAME": name,
           "DENSENET_JOB_NAMESPACE": namespace}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "densenet_trainer", "--synthetic", "--arch", "densenet121", "--device", "cpu",
         "--image-size", "32", "--num-classes", "10", "-b", "8", "--epochs", "2", "--synthetic-steps", "4",
         "--workers", "0", "--print-freq", "1", "--status-interval", "1", "--mode", "train"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    training = kubectl.json("get", "dnt", name, "-n", namespace)["status"]["training"]
    assert training["epoch"] == 2
    assert training["totalEpochs"] == 2
    assert training["step"] == 8
    assert training["fps"] > 0
    assert training["updated"]
