"""hack/kubelet.py: the status a kubelet writes when a pod's containers end (unit)."""

from __future__ import annotations

from typing import Any

import pytest
from kubelet import exit_code_of, terminal_status

NOW = "2026-01-01T00:00:10Z"


def running_pod() -> dict[str, Any]:
    """A pod as KWOK leaves it: Running, Ready, its container started."""
    return {
        "metadata": {"name": "job-worker-0", "namespace": "ns"},
        "spec": {"containers": [{"name": "trainer", "image": "densenet-trainer:test"}]},
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
            ],
            "containerStatuses": [
                {
                    "name": "trainer",
                    "restartCount": 2,
                    "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                }
            ],
        },
    }


def test_failed_pod_reports_its_exit_code_and_is_no_longer_ready() -> None:
    status = terminal_status(running_pod(), "Failed", exit_code=137, now=NOW)
    assert status["phase"] == "Failed"
    [container] = status["containerStatuses"]
    assert container["name"] == "trainer" and container["image"] == "densenet-trainer:test"
    assert container["ready"] is False and container["restartCount"] == 2
    assert container["state"] == {
        "terminated": {
            "exitCode": 137,
            "reason": "Error",
            "startedAt": "2026-01-01T00:00:00Z",
            "finishedAt": NOW,
        }
    }
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type["PodScheduled"] == {"type": "PodScheduled", "status": "True"}
    for name in ("Ready", "ContainersReady"):
        assert by_type[name]["status"] == "False" and by_type[name]["reason"] == "PodFailed"
    assert "reason" not in status and "message" not in status


def test_defaults_for_succeeded_and_failed() -> None:
    done = terminal_status(running_pod(), "Succeeded", now=NOW)
    terminated = done["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    assert {c["reason"] for c in done["conditions"] if c["type"] == "Ready"} == {"PodCompleted"}
    failed = terminal_status(running_pod(), "Failed", now=NOW)
    assert failed["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 1
    oom = terminal_status(running_pod(), "Failed", exit_code=137, container_reason="OOMKilled")
    assert oom["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled"
    with pytest.raises(ValueError, match="Succeeded or Failed"):
        terminal_status(running_pod(), "Running")


def test_pod_gc_condition_and_reason() -> None:
    gc = {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC"}
    status = terminal_status(
        running_pod(), "Failed", reason="DeletionByPodGC", message="gone", condition=gc, now=NOW
    )
    assert status["reason"] == "DeletionByPodGC" and status["message"] == "gone"
    assert {**gc, "lastTransitionTime": NOW} in status["conditions"]


def test_a_container_that_never_started_starts_and_ends_now() -> None:
    pod = running_pod()
    del pod["status"]["containerStatuses"]
    [container] = terminal_status(pod, "Failed", now=NOW)["containerStatuses"]
    assert container["state"]["terminated"]["startedAt"] == NOW
    assert container["restartCount"] == 0


def test_exit_codes_of_processes_killed_by_a_signal() -> None:
    assert exit_code_of(0) == 0 and exit_code_of(3) == 3
    assert exit_code_of(-9) == 137 and exit_code_of(-15) == 143
