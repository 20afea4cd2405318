"""The operator against the real local control plane: kube-apiserver, scheduler, controller
manager and KWOK nodes advertising huawei.com/Ascend910."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import localcluster
import pytest
import yaml

from densenet_operator.settings import TrainerDefaults
from densenet_operator.spec import parse_spec
from tests.operator.conftest import ROOT, Jobs, wait_for

pytestmark = pytest.mark.integration
EXAMPLES = ROOT / "examples"


def apply_file(jobs: Jobs, path: Path) -> str:
    jobs.kubectl("apply", "-n", jobs.namespace, "-f", str(path))
    return yaml.safe_load(path.read_text())["metadata"]["name"]


def owned_by(obj: dict[str, Any], job: dict[str, Any]) -> bool:
    return any(
        ref["uid"] == job["metadata"]["uid"] for ref in obj["metadata"].get("ownerReferences", ())
    )


def test_densenet161_8p_example_becomes_wired_pods_and_a_completed_rank_table(jobs: Jobs) -> None:
    jobs.device_plugin_down()  # until it comes up below, the pod has no device annotation
    name = apply_file(jobs, EXAMPLES / "densenet161-8p.yaml")
    (pod,) = jobs.wait_running_pods(name, 1)
    job = jobs.get(name)
    assert pod["metadata"]["name"] == "densenet161-8p-worker-0"
    assert pod["spec"]["nodeName"].startswith(("kwok-", "ascend-"))  # placed by the real scheduler
    for kind, child in [("service", name), ("serviceaccount", f"{name}-trainer"), ("role", f"{name}-trainer"),
                        ("rolebinding", f"{name}-trainer"), ("configmap", f"rings-config-{name}")]:  # fmt: skip
        obj = jobs.kubectl.json("get", kind, child, "-n", jobs.namespace)
        assert owned_by(obj, job), f"{kind}/{child} is not owned by the job"
        assert obj["metadata"]["labels"]["training.densenet.dev/job-name"] == name
    assert owned_by(pod, job)

    # Without the device plugin's annotation the table stays initializing, and says why.
    assert jobs.rank_table(name) == {"status": "initializing"}
    annotation_missing = "densenet161-8p-worker-0: has no ascend-910-configuration annotation"
    wait_for(
        lambda: any(
            annotation_missing in w
            for w in jobs.status(name).get("rankTable", {}).get("waitingFor", [])
        ),
        what="status.rankTable.waitingFor to name the pod without devices",
    )

    jobs.device_plugin_up()  # the simulated plugin annotates the pod with its 8 chips
    table = wait_for(
        lambda: (t := jobs.rank_table(name)).get("status") == "completed" and t, what="table"
    )
    (server,) = table["server_list"]
    assert server["container_ip"] == pod["status"]["podIP"]
    assert server["server_id"] == pod["status"]["hostIP"]
    assert [d["rank_id"] for d in server["device"]] == [str(i) for i in range(8)]
    status = wait_for(
        lambda: (s := jobs.status(name)).get("rankTable", {}).get("status") == "completed" and s
    )
    assert status["phase"] == "Running"
    assert status["worldSize"] == 8
    assert {c["type"]: c["status"] for c in status["conditions"]}["RankTableReady"] == "True"

    table_out = jobs.kubectl("get", "densenettrainings", "-n", jobs.namespace).stdout.splitlines()
    assert table_out[0].split() == [
        "NAME",
        "PHASE",
        "QUEUE",  # empty (no Kueue queue label): kubectl leaves the cell blank
        "MODEL",
        "DEVICES",
        "EPOCH",
        "FPS",
        "ACC@1",
        "PROGRESS",
        "AGE",
    ]
    assert table_out[1].split()[:4] == [name, "Running", "densenet161", "8"]
    events = jobs.kubectl("get", "events", "-n", jobs.namespace, "--field-selector",
                          f"involvedObject.name={name}", "-o", "json")  # fmt: skip
    assert "RankTableCompleted" in {e["reason"] for e in json.loads(events.stdout)["items"]}


def test_two_servers_make_sixteen_ranks_and_recreated_pods_regenerate_the_table(jobs: Jobs) -> None:
    name = apply_file(jobs, EXAMPLES / "densenet161-16p.yaml")
    pods = jobs.wait_running_pods(name, 2)
    assert len({p["spec"]["nodeName"] for p in pods}) == 2  # 8 NPUs per node: one pod each
    table = wait_for(
        lambda: (t := jobs.rank_table(name)).get("status") == "completed" and t, what="table"
    )
    ranks = [d["rank_id"] for s in table["server_list"] for d in s["device"]]
    assert ranks == [str(i) for i in range(16)]
    assert [s["container_ip"] for s in table["server_list"]] == [p["status"]["podIP"] for p in pods]

    # Deleting a pod of the running gang recreates the gang; the table goes back to initializing.
    old_uids = {p["metadata"]["uid"] for p in pods}
    jobs.device_plugin_down()  # the new gang stays unannotated until it comes up below
    jobs.kubectl("delete", "pod", pods[1]["metadata"]["name"], "-n", jobs.namespace, "--wait=false")
    wait_for(lambda: jobs.rank_table(name).get("status") == "initializing", what="table reset")

    def new_gang() -> list[dict[str, Any]] | None:
        fresh = [p for p in jobs.live_pods(name) if p["metadata"]["uid"] not in old_uids]
        running = [
            p for p in fresh if p["status"].get("phase") == "Running" and p["status"].get("podIP")
        ]
        return running if len(running) == 2 else None

    new_pods = wait_for(new_gang, timeout=90, what="the new gang")
    assert all(p["metadata"]["labels"]["training.densenet.dev/gang"] == "1" for p in new_pods)
    assert jobs.rank_table(name) == {"status": "initializing"}
    jobs.device_plugin_up()
    table = wait_for(
        lambda: (t := jobs.rank_table(name)).get("status") == "completed" and t, what="table"
    )
    by_index = sorted(
        new_pods, key=lambda p: int(p["metadata"]["labels"]["training.densenet.dev/replica-index"])
    )
    assert [s["container_ip"] for s in table["server_list"]] == [
        p["status"]["podIP"] for p in by_index
    ]
    assert jobs.status(name)["restarts"] == 1


def test_a_bad_device_ip_is_never_published(jobs: Jobs) -> None:
    jobs.chip_ips_down(range(8))  # the device plugin writes device_ip "-1" for every chip
    name = apply_file(jobs, EXAMPLES / "densenet161-8p.yaml")
    jobs.wait_running_pods(name, 1)
    waiting = wait_for(
        lambda: any(
            "IP -1" in w for w in jobs.status(name).get("rankTable", {}).get("waitingFor", [])
        ),
        what="the -1 device IP to be reported",
    )
    assert waiting
    assert jobs.rank_table(name) == {"status": "initializing"}


def small_job(name: str, **spec: Any) -> dict[str, Any]:
    # KWOK removes a deleted pod at its deletionTimestamp, i.e. after the grace period: a short
    # one keeps gang restarts quick (there is no trainer to stop gracefully here).
    spec["runPolicy"] = {"terminationGracePeriodSeconds": 2, **spec.get("runPolicy", {})}
    return {
        "apiVersion": "training.densenet.dev/v1alpha1",
        "kind": "DenseNetTraining",
        "metadata": {"name": name},
        "spec": {
            "model": "densenet121",
            "replicas": 2,
            "devicesPerReplica": 8,
            "data": {"synthetic": True},
            **spec,
        },
    }


def test_pods_succeeding_make_the_job_succeed(jobs: Jobs) -> None:
    jobs.kubectl.apply(small_job("ok"), "-n", jobs.namespace)
    pods = jobs.wait_running_pods("ok", 2)
    for pod in pods:
        jobs.set_pod_phase(pod["metadata"]["name"], "Succeeded", exit_code=0)
    status = jobs.wait_phase("ok", "Succeeded")
    assert status["reason"] == "AllPodsSucceeded"
    assert status["completionTime"]
    assert status["pods"]["succeeded"] == 2


def test_a_pod_failing_with_a_permanent_code_fails_the_job(jobs: Jobs) -> None:
    jobs.kubectl.apply(small_job("bad"), "-n", jobs.namespace)
    pods = jobs.wait_running_pods("bad", 2)
    jobs.set_pod_phase(pods[0]["metadata"]["name"], "Failed", exit_code=2)
    status = jobs.wait_phase("bad", "Failed")
    assert status["reason"] == "PermanentFailure"
    assert "bad-worker-0 failed (exit code 2" in status["message"]
    assert status.get("restarts", 0) == 0


def test_schema_defaults_are_the_models_defaults(jobs: Jobs) -> None:
    minimal = small_job("defaults")
    del minimal["spec"]["replicas"], minimal["spec"]["devicesPerReplica"]
    jobs.kubectl.apply(minimal, "-n", jobs.namespace)
    served = jobs.get("defaults")["spec"]
    assert served["recipe"]["lr"] == 0.1 and served["runPolicy"]["backoffLimit"] == 3
    defaults = TrainerDefaults(image="x")
    assert parse_spec(served, defaults=defaults) == parse_spec(minimal["spec"], defaults=defaults)


def test_trainer_identity_patches_only_its_own_job(jobs: Jobs, tmp_path: Path) -> None:
    jobs.kubectl.apply([small_job("mine"), small_job("other")], "-n", jobs.namespace)
    wait_for(
        lambda: (
            jobs.kubectl(
                "get", "rolebinding", "mine-trainer", "-n", jobs.namespace, check=False
            ).returncode
            == 0
        )
    )
    kubeconfig = localcluster.service_account_kubeconfig(
        jobs.kubectl.kubeconfig, jobs.namespace, "mine-trainer", tmp_path / "sa.kubeconfig"
    )
    as_trainer = type(jobs.kubectl)(jobs.kubectl.binary, kubeconfig)
    patch = json.dumps({"status": {"training": {"epoch": 3, "fps": 123.5, "acc1": 71.2}}})
    as_trainer("patch", "dnt", "mine", "--subresource=status", "--type=merge", "-p", patch)
    assert jobs.status("mine")["training"] == {"epoch": 3, "fps": 123.5, "acc1": 71.2}
    denied = as_trainer(
        "patch", "dnt", "other", "--subresource=status", "--type=merge", "-p", patch, check=False
    )
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    secrets = as_trainer("get", "secrets", check=False)
    assert secrets.returncode != 0 and "forbidden" in secrets.stderr.lower()
    assert as_trainer("get", "configmap", "rings-config-mine").returncode == 0
    assert as_trainer("get", "configmap", "rings-config-other", check=False).returncode != 0
