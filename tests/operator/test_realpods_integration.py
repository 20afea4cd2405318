"""What only a real node can show: the trainer image run by a real kubelet under the operator.

An OOM-killed trainer (exit 137, OOMKilled) is a retryable failure that restarts the gang and
counts against backoffLimit; a deleted pod's trainer gets SIGTERM, finishes its step and saves
its checkpoint within the grace period (the file appears on the node), which the operator
counts as a disruption and the next gang resumes from.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import images
import localcluster
import pytest
from realnode_config import real_node_scheduling

from tests.conftest import needs_real_node

from .conftest import Jobs, OperatorProcess, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    needs_real_node,
]
TRAINER_UID = 1000  # docker/trainer.Dockerfile's user


@pytest.fixture(scope="module")
def trainer_image(cluster: localcluster.Cluster) -> str:
    """The trainer image built from docker/ (cached by content), in the real node."""
    if not cluster.real_nodes:
        pytest.skip("the session's cluster has no real node (DENSENET_REAL_NODES=0)")
    built = images.ensure_images(("trainer",))["trainer"]
    localcluster.load_image(cluster, built.archive, built.ref)
    return built.ref


@pytest.fixture
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A host folder the trainer (uid 1000) may write, mounted by hostPath on the real node."""
    path = tmp_path_factory.mktemp("checkpoints")
    os.chown(path, TRAINER_UID, TRAINER_UID)
    path.chmod(0o755)
    yield path


def real_job(name: str, image: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "densenet121", "replicas": 1, "devicesPerReplica": 1, "image": image,
        "device": {"type": "cpu"}, "data": {"synthetic": True},
        "recipe": {"epochs": 2, "batchSize": 8, "imageSize": 32, "workers": 0,
                   "printFreq": 1, "mixedPrecision": False,
                   "extraArgs": ["--synthetic-steps", "100000"]},  # an epoch longer than a test
        "scheduling": real_node_scheduling(),
    }  # fmt: skip
    for key, value in spec.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    return {"apiVersion": "training.densenet.dev/v1alpha1", "kind": "DenseNetTraining",
            "metadata": {"name": name}, "spec": body}  # fmt: skip


def test_an_oom_killed_trainer_restarts_the_gang_then_fails_the_job(
    jobs: Jobs, operator: OperatorProcess, trainer_image: str
) -> None:
    # 128 MiB: the trainer's Python is killed while it loads torch.
    memory = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "128Mi"}}
    scheduling = {**real_node_scheduling(), "resources": memory}
    jobs.kubectl.apply(
        real_job("oom", trainer_image, scheduling=scheduling, runPolicy={"backoffLimit": 1}),
        "-n", jobs.namespace,
    )  # fmt: skip
    status = jobs.wait_phase("oom", "Failed", timeout=600)
    assert status["restarts"] == 1 and status.get("disruptions", 0) == 0
    ended = jobs.pods("oom")
    terminated = [p["status"]["containerStatuses"][0]["state"]["terminated"] for p in ended]
    assert terminated and all(t["exitCode"] == 137 for t in terminated)
    assert all(t["reason"] == "OOMKilled" for t in terminated)


def test_a_deleted_pods_trainer_saves_within_the_grace_period_and_the_gang_resumes(
    jobs: Jobs, operator: OperatorProcess, trainer_image: str, checkpoints: Path
) -> None:
    volume = {"hostPath": {"path": str(checkpoints), "type": "Directory"}}
    job = real_job("graceful", trainer_image, checkpoint={"path": "/checkpoints", "volume": volume},
                   runPolicy={"terminationGracePeriodSeconds": 120})  # fmt: skip
    jobs.kubectl.apply(job, "-n", jobs.namespace)

    def training_step() -> int | None:
        step = (jobs.status("graceful").get("training") or {}).get("step")
        return step if isinstance(step, int) and step >= 2 else None

    wait_for(training_step, 600, interval=2, what="the trainer to report steps")
    saved = checkpoints / "graceful"
    assert not list(saved.glob("checkpoint-*.pth"))  # nothing saved yet: epochs are long
    jobs.kubectl("delete", "pod", "graceful-worker-0", "-n", jobs.namespace, "--wait=false")
    # SIGTERM -> the step ends, rank 0 saves (checkpoint.py's name carries the step), exit 75.
    wait_for(lambda: list(saved.glob("checkpoint-*.pth")) or None, 120, interval=1,
             what="the checkpoint saved on SIGTERM")  # fmt: skip

    def resumed() -> dict[str, Any] | None:
        status = jobs.status("graceful")
        pods = jobs.live_pods("graceful")
        restarted = status.get("restarts") == 1 and status.get("disruptions") == 1
        return status if restarted and pods and status.get("phase") == "Running" else None

    status = wait_for(resumed, 300, interval=2, what="the gang to be restarted as a disruption")
    assert status["restarts"] == 1 and status["disruptions"] == 1
    jobs.kubectl("delete", "dnt", "graceful", "-n", jobs.namespace, "--wait=false")
