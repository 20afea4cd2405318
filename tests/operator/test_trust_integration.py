"""A job-creator gets no more than a pod-creator, and the status is the operator's (issue:
trust boundaries, items 1 and 2), on the real API server with the shipped admission policies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from testsupport import Kubectl, find_tool, service_account_kubeconfig

from tests.operator.conftest import Jobs, wait_for
from tests.operator.test_operator_integration import small_job

pytestmark = pytest.mark.integration


def grant(jobs: Jobs, user: str, rules: list[dict[str, Any]]) -> None:
    name = f"{user}-role"
    jobs.kubectl.apply(
        [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": name}, "rules": rules},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": name},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]},
        ],
        "-n", jobs.namespace,
    )  # fmt: skip


JOBS_ONLY = [{"apiGroups": ["training.densenet.dev"], "resources": ["densenettrainings"],
              "verbs": ["create", "get", "list"]}]  # fmt: skip
PODS_TOO = [*JOBS_ONLY, {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]


def apply_as(jobs: Jobs, user: str, manifest: dict[str, Any]) -> Any:
    return jobs.kubectl("--as", user, "apply", "-n", jobs.namespace, "-f", "-",
                        input=manifest, check=False)  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "asks"),
    [
        ({"data": {"path": "/d", "volume": {"hostPath": {"path": "/"}}}}, "a data volume"),
        ({"checkpoint": {"volume": {"secret": {"secretName": "s"}}}}, "a checkpoint volume"),
        ({"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
         "environment from Secrets"),
        ({"image": "evil:latest"}, "a custom image"),
        ({"scheduling": {"priorityClassName": "system-node-critical"}}, "privileged scheduling"),
        ({"imagePullSecrets": [{"name": "regcred"}]}, "image pull secrets"),
        ({"podTemplate": {"metadata": {"labels": {"team": "a"}}}}, "pod labels or annotations"),
        ({"podTemplate": {"spec": {"hostNetwork": True}}}, "pod overrides (podTemplate.spec)"),
        ({"podTemplate": {"spec": {"sidecars": [{"name": "s", "image": "x:1"}]}}},
         "pod overrides (podTemplate.spec)"),
        ({"podTemplate": {"trainer": {"envFrom": [{"secretRef": {"name": "s"}}]}}},
         "trainer overrides (podTemplate.trainer)"),
    ],
)  # fmt: skip
def test_a_job_creator_cannot_ask_for_what_only_a_pod_creator_could(
    jobs: Jobs, spec: dict[str, Any], asks: str
) -> None:
    grant(jobs, "alice", JOBS_ONLY)
    grant(jobs, "bob", PODS_TOO)
    refused = apply_as(jobs, "alice", small_job("escalate", replicas=1, **spec))
    assert refused.returncode != 0
    assert "needs permission to create pods in namespace " + jobs.namespace in refused.stderr
    assert asks in refused.stderr
    assert apply_as(jobs, "bob", small_job("escalate", replicas=1, **spec)).returncode == 0


def test_a_plain_job_needs_no_pod_permission(jobs: Jobs) -> None:
    grant(jobs, "carol", JOBS_ONLY)
    result = apply_as(jobs, "carol", small_job("plain", replicas=1))
    assert result.returncode == 0, result.stderr


def trainer_kubectl(jobs: Jobs, name: str, tmp_path: Path) -> Kubectl:
    config = service_account_kubeconfig(
        jobs.kubectl.kubeconfig, jobs.namespace, f"{name}-trainer", tmp_path / "trainer.kubeconfig"
    )
    return Kubectl(find_tool("kubectl"), config)


def patch_status(kubectl: Kubectl, jobs: Jobs, name: str, status: dict[str, Any]) -> Any:
    return kubectl("patch", "dnt", name, "-n", jobs.namespace, "--subresource=status",
                   "--type=merge", "-p", json.dumps({"status": status}), check=False)  # fmt: skip


def test_the_trainer_s_token_writes_its_progress_and_nothing_else(
    jobs: Jobs, tmp_path: Path
) -> None:
    jobs.kubectl.apply(small_job("tok", replicas=1), "-n", jobs.namespace)
    jobs.wait_running_pods("tok", 1)
    jobs.wait_phase("tok", "Running")
    trainer = wait_for(lambda: trainer_kubectl(jobs, "tok", tmp_path), what="the trainer SA")
    assert patch_status(trainer, jobs, "tok", {"training": {"epoch": 3}}).returncode == 0
    for forged in ({"phase": "Succeeded"}, {"restarts": 1000}, {"message": "x"},
                   {"training": {"epoch": 4}, "restarts": 1}):  # fmt: skip
        refused = patch_status(trainer, jobs, "tok", forged)
        assert refused.returncode != 0, forged
        assert "may write status.training only" in refused.stderr
    too_long = patch_status(trainer, jobs, "tok", {"training": {"checkpoint": "/" + "c" * 2000}})
    assert too_long.returncode != 0 and "status.training.checkpoint" in too_long.stderr
    status = jobs.status("tok")
    assert status["phase"] == "Running" and status["training"]["epoch"] == 3


def test_a_forged_status_is_corrected_and_never_acted_on(jobs: Jobs) -> None:
    jobs.kubectl.apply(small_job("forge", replicas=1), "-n", jobs.namespace)
    jobs.wait_running_pods("forge", 1)
    jobs.wait_phase("forge", "Running")
    # Someone with status rights (not the operator) writes a success and a restart count.
    patch_status(jobs.kubectl, jobs, "forge", {"phase": "Succeeded", "restarts": 1000})
    status = wait_for(
        lambda: (
            (s := jobs.status("forge")).get("phase") == "Running"
            and s.get("restarts", 0) < 1000
            and s
        ),
        what="the status corrected",
    )
    events = jobs.kubectl.json("get", "events", "-n", jobs.namespace,
                               "--field-selector", "involvedObject.name=forge")["items"]  # fmt: skip
    story = [(e["reason"], e["message"]) for e in events]
    assert any(reason == "StatusCorrected" for reason, _ in story), story
    # Never acted on: not finished, its pods not cleaned up, no failure counted. (A restart for
    # a disruption of the shared test cluster, e.g. a pod gone with its node, may happen
    # meanwhile: it is counted as one, and never as a failure.)
    acted = {"AllPodsSucceeded", "PermanentFailure", "BackoffLimitExceeded", "TTLExpired"}
    assert not acted & {reason for reason, _ in story}, story
    assert status.get("restarts", 0) == status.get("disruptions", 0), story
    assert not status.get("completionTime")


@pytest.mark.parametrize(
    ("devices", "reason"),
    [
        ([{"device_id": "0", "device_ip": "192.168.1.1"},
          {"device_id": "00", "device_ip": "192.168.1.2"}], "device ids more than once"),
        ([{"device_id": "\u00b2", "device_ip": "192.168.1.1"},
          {"device_id": "1", "device_ip": "192.168.1.2"}], "not a number"),
        ([{"device_id": "0", "device_ip": "1" * 200_000},
         {"device_id": "1", "device_ip": "192.168.1.2"}], "bytes, more than"),
    ],
    ids=["duplicate-after-normalising", "superscript-digit", "huge-ip"],
)  # fmt: skip
def test_hostile_device_annotations_keep_the_table_waiting_with_a_bounded_status(
    jobs: Jobs, devices: list[dict[str, str]], reason: str
) -> None:
    jobs.kubectl.apply(small_job("hostile", replicas=1, devicesPerReplica=2), "-n", jobs.namespace)
    (pod,) = jobs.wait_running_pods("hostile", 1)
    annotation = json.dumps({"pod_name": pod["metadata"]["name"], "devices": devices})
    path = Path(jobs.kubectl.kubeconfig).parent / f"annotation-{pod['metadata']['uid']}.json"
    path.write_text(json.dumps({"metadata": {"annotations": {
        "ascend.kubectl.kubernetes.io/ascend-910-configuration": annotation}}}))  # fmt: skip
    jobs.kubectl("patch", "pod", pod["metadata"]["name"], "-n", jobs.namespace,
                 "--type=merge", "--patch-file", str(path))  # fmt: skip
    path.unlink()
    waiting = wait_for(
        lambda: [w for w in jobs.status("hostile").get("rankTable", {}).get("waitingFor", [])
                 if reason in w],
        what="the annotation refused",
    )  # fmt: skip
    assert len(waiting[0]) <= 256
    assert len(json.dumps(jobs.get("hostile")["status"])) < 8_000
    assert jobs.rank_table("hostile")["status"] == "initializing"
