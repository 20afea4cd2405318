"""Children are the job's own or not at all, and a deleted child comes back while the operator
runs (issue: trust boundaries and self-repair, items 3, 4 and 6)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.operator.conftest import Jobs, wait_for
from tests.operator.test_operator_integration import small_job

pytestmark = pytest.mark.integration
CHILDREN = [
    ("configmap", "rings-config-{}"),
    ("role", "{}-trainer"),
    ("rolebinding", "{}-trainer"),
    ("serviceaccount", "{}-trainer"),
    ("service", "{}"),
    ("networkpolicy", "{}"),
]


def uid_of(jobs: Jobs, kind: str, name: str) -> str | None:
    found = jobs.kubectl("get", kind, name, "-n", jobs.namespace, "-o", "json", check=False)
    if found.returncode != 0:
        return None
    import json

    return str(json.loads(found.stdout)["metadata"]["uid"])


def owner_uids(obj: dict[str, Any]) -> list[str]:
    return [r["uid"] for r in obj["metadata"].get("ownerReferences") or ()]


def test_every_deleted_child_is_made_again_within_seconds(jobs: Jobs) -> None:
    jobs.kubectl.apply(small_job("repair", replicas=1), "-n", jobs.namespace)
    pods = jobs.wait_running_pods("repair", 1)
    job_uid = jobs.get("repair")["metadata"]["uid"]
    for kind, pattern in CHILDREN:
        name = pattern.format("repair")
        old = wait_for(lambda k=kind, n=name: uid_of(jobs, k, n), what=f"{kind} {name}")
        started = time.monotonic()
        jobs.kubectl("delete", kind, name, "-n", jobs.namespace, "--wait=true")
        new = wait_for(
            lambda k=kind, n=name, o=old: (u := uid_of(jobs, k, n)) not in (None, o) and u,
            timeout=20,
            what=f"{kind} {name} made again",
        )
        obj = jobs.kubectl.json("get", kind, name, "-n", jobs.namespace)
        assert owner_uids(obj) == [job_uid] and new != old
        print(f"{kind} repaired in {time.monotonic() - started:.1f} s")
    # The repaired children carry a gang restart: the new gang comes up.
    jobs.set_pod_phase(pods[0]["metadata"]["name"], "Failed", exit_code=137)
    wait_for(lambda: jobs.status("repair").get("restarts") == 1, what="the restart")
    jobs.wait_phase("repair", "Running", timeout=60)


def test_a_pod_that_takes_a_worker_s_name_is_never_adopted(jobs: Jobs) -> None:
    squatter = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "squat-worker-0",
                     "labels": {"training.densenet.dev/job-name": "squat",
                                "training.densenet.dev/replica-index": "0",
                                "training.densenet.dev/gang": "0"}},
        "spec": {"containers": [{"name": "trainer", "image": "anything"}]},
    }  # fmt: skip
    jobs.kubectl.apply(squatter, "-n", jobs.namespace)
    jobs.kubectl.apply(small_job("squat", replicas=1), "-n", jobs.namespace)
    status = wait_for(
        lambda: (s := jobs.status("squat")).get("reason") == "ChildConflict" and s,
        what="the conflict reported",
    )
    assert "Pod squat-worker-0 exists and is not this job's (no owner)" in status["message"]
    conflict = next(c for c in status["conditions"] if c["type"] == "ChildConflict")
    assert conflict["status"] == "True"
    # Not deleted, not counted, not in a rank table.
    pod = jobs.kubectl.json("get", "pod", "squat-worker-0", "-n", jobs.namespace)
    assert owner_uids(pod) == [] and not pod["metadata"].get("deletionTimestamp")
    assert jobs.rank_table("squat")["status"] == "initializing"
    # Once the name is free, the job makes its own pod and clears the condition.
    jobs.kubectl("delete", "pod", "squat-worker-0", "-n", jobs.namespace, "--grace-period=0",
                 "--force", "--wait=true")  # fmt: skip
    (own,) = jobs.wait_running_pods("squat", 1, timeout=60)
    assert owner_uids(own) == [jobs.get("squat")["metadata"]["uid"]]
    status = jobs.wait_phase("squat", "Running")
    assert (
        next(c for c in status["conditions"] if c["type"] == "ChildConflict")["status"] == "False"
    )


def test_a_recreated_job_never_runs_on_an_orphaned_job_s_children(jobs: Jobs) -> None:
    jobs.kubectl.apply(small_job("again", replicas=1), "-n", jobs.namespace)
    (old_pod,) = jobs.wait_running_pods("again", 1)
    jobs.kubectl("delete", "dnt", "again", "-n", jobs.namespace, "--cascade=orphan", "--wait=true")
    jobs.kubectl.apply(small_job("again", replicas=1, recipe={"epochs": 3}), "-n", jobs.namespace)
    status = wait_for(
        lambda: (s := jobs.status("again")).get("reason") == "ChildConflict" and s,
        what="the orphaned children reported",
    )
    assert "is not this job's" in status["message"]
    pod = jobs.kubectl.json("get", "pod", "again-worker-0", "-n", jobs.namespace)
    assert pod["metadata"]["uid"] == old_pod["metadata"]["uid"]  # left alone, not adopted
    assert status.get("pods", {}).get("running", 0) == 0


def test_a_pod_whose_labels_are_removed_is_still_seen(jobs: Jobs) -> None:
    jobs.kubectl.apply(small_job("unlabel", replicas=1), "-n", jobs.namespace)
    (pod,) = jobs.wait_running_pods("unlabel", 1)
    jobs.wait_phase("unlabel", "Running")
    name = pod["metadata"]["name"]
    jobs.kubectl("label", "pod", name, "-n", jobs.namespace, "training.densenet.dev/job-name-",
                 "training.densenet.dev/gang-", "training.densenet.dev/replica-index-")  # fmt: skip
    # Still the job's (owner reference): no longer a member of its gang, so the gang restarts.
    wait_for(lambda: jobs.status("unlabel").get("restarts") == 1, what="the restart")
    (new,) = jobs.wait_running_pods("unlabel", 1, timeout=60)
    assert new["metadata"]["uid"] != pod["metadata"]["uid"]
