"""Native gang scheduling (native.py): the Workload, a PodGroup per gang generation, what the
pods carry, which jobs `gang: auto` gives it, and what its PodGroup's conditions tell the job."""

import asyncio
import datetime as dt

import pytest

from densenet_operator import backends, gang, lifecycle, native, pods, volcano
from densenet_operator.podrecord import PodRecord
from densenet_operator.spec import SpecError
from tests.operator.factories import (
    DEFAULTS,
    JOB,
    NATIVE_CLUSTER,
    NATIVE_SERVED,
    make_job,
    make_pod,
)

NOW = dt.datetime(2026, 12, 7, 12, 0, 0, tzinfo=dt.UTC)


def test_auto_is_native_where_the_api_is_served_and_the_default_scheduler_places_the_pods():
    for scheduling in ({}, {"schedulerName": "default-scheduler"}, {"gang": "native"}):
        job = make_job(NATIVE_CLUSTER, scheduling=scheduling)
        assert job.spec.scheduling.gang == "native"
        assert backends.backend_for(job) is native.BACKEND
    # Another scheduler may not run the GangScheduling plugin; Volcano keeps its own gangs.
    assert (
        make_job(NATIVE_CLUSTER, scheduling={"schedulerName": "mine"}).spec.scheduling.gang
        == "none"
    )
    volcano_job = make_job(NATIVE_CLUSTER, scheduling={"schedulerName": "volcano"})
    assert backends.backend_for(volcano_job) is volcano.BACKEND
    assert make_job(NATIVE_CLUSTER, scheduling={"gang": "none"}).spec.scheduling.gang == "none"


def test_auto_is_today_s_behaviour_where_the_api_is_not_served():
    assert make_job(DEFAULTS).spec.scheduling.gang == "none"
    assert backends.backend_for(make_job(DEFAULTS)) is gang.NONE
    # Asked for explicitly, native is kept: creating its Workload fails with `missing`.
    assert make_job(DEFAULTS, scheduling={"gang": "native"}).spec.scheduling.gang == "native"
    assert "GenericWorkload" in native.WORKLOAD.missing


def test_an_unknown_gang_is_refused():
    with pytest.raises(SpecError, match="gang"):
        make_job(scheduling={"gang": "kueue"})


def test_the_workload_is_one_gang_of_every_pod_made_by_the_job():
    job = make_job(NATIVE_CLUSTER, replicas=3, scheduling={"priorityClassName": "high"})
    workload = native.build_workload(job)
    assert workload["apiVersion"] == "scheduling.k8s.io/v1beta1"
    assert workload["metadata"]["name"] == JOB.name
    assert workload["metadata"]["ownerReferences"][0]["uid"] == JOB.uid
    assert workload["spec"] == {
        "controllerRef": {"apiGroup": "training.densenet.dev", "kind": "DenseNetTraining",
                          "name": JOB.name},
        "podGroupTemplates": [{"name": "workers", "schedulingPolicy": {"gang": {"minCount": 3}},
                               "disruptionMode": {"all": {}}, "priorityClassName": "high"}],
    }  # fmt: skip
    assert native.BACKEND.children(job) == [workload]


def test_each_gang_generation_has_its_own_pod_group_with_the_pods_priority():
    job = make_job(NATIVE_CLUSTER, replicas=3, scheduling={"priorityClassName": "high"})
    (group,) = native.BACKEND.gang_children(job, 2)
    assert group["metadata"]["name"] == "dn161-gang-2"
    assert group["metadata"]["labels"]["training.densenet.dev/gang"] == "2"
    assert group["spec"] == {
        "workloadRef": {"workloadName": JOB.name, "templateName": "workers"},
        "schedulingPolicy": {"gang": {"minCount": 3}},
        "disruptionMode": {"all": {}},
        "priorityClassName": "high",  # the scheduler refuses a group whose pods' differs
    }
    assert native.BACKEND.retired_children(job, 1) == [(native.POD_GROUP, "dn161-gang-1")]
    assert native.BACKEND.state_of(job, 2) == (native.POD_GROUP, "dn161-gang-2")
    assert backends.CUSTOM_KINDS[("scheduling.k8s.io/v1beta1", "PodGroup")] is native.POD_GROUP


def test_a_pod_joins_its_generation_s_group():
    job = make_job(NATIVE_CLUSTER, replicas=2)
    pod = pods.build_pod(job, 1, gang=4)
    assert pod["spec"]["schedulingGroup"] == {"podGroupName": "dn161-gang-4"}
    assert "schedulerName" not in pod["spec"]
    assert "schedulingGroup" not in pods.build_pod(make_job(DEFAULTS), 0)["spec"]


def test_discovery_lists_what_the_cluster_serves():
    documents = {
        ("scheduling.k8s.io", "v1beta1"): {
            "resources": [{"name": "workloads"}, {"name": "podgroups"},
                          {"name": "podgroups/status"}, {"name": "priorityclasses"}],
        },
    }  # fmt: skip

    async def get(group, version):
        return documents.get((group, version))

    served = asyncio.run(backends.discover(get))
    assert served == NATIVE_SERVED
    assert backends.auto_gangs(served) == {None: "native", "default-scheduler": "native",
                                           "volcano": "volcano"}  # fmt: skip
    assert backends.auto_gangs(frozenset()) == {"volcano": "volcano"}


def _group_condition(status, reason, message):
    return {"status": {"conditions": [
        {"type": "PodGroupInitiallyScheduled", "status": status, "reason": reason,
         "message": message, "lastTransitionTime": "2026-12-07T12:00:00Z"}]}}  # fmt: skip


def test_the_group_s_word_reaches_the_job_status_and_its_events():
    job = make_job(NATIVE_CLUSTER, replicas=3, devicesPerReplica=8)
    waiting = []
    for index in range(3):
        pod = make_pod(index, phase="Pending", pod_ip=None, host_ip=None, annotation=None)
        pod["spec"] = {}
        pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False",
                                        "reason": "Unschedulable",
                                        "message": "pod group is unschedulable"}]  # fmt: skip
        waiting.append(PodRecord.from_pod(pod))
    why = "0/2 nodes are available: 2 Insufficient huawei.com/Ascend910."
    state = native.gang_state(_group_condition("False", "Unschedulable", why))
    result = lifecycle.plan(job, {"phase": "Pending"}, waiting, NOW, None, state)
    assert result.status["reason"] == "GangUnschedulable"
    assert result.status["message"] == f"gang 0 (3 pod(s)): {why}"
    assert ("Warning", "GangUnschedulable") in [(e.type, e.reason) for e in result.events]
    (condition,) = [c for c in result.status["conditions"] if c["type"] == "GangScheduled"]
    assert (condition["status"], condition["reason"], condition["message"]) == (
        "False", "Unschedulable", why)  # fmt: skip
    placed = native.gang_state(_group_condition("True", "Scheduled", ""))
    assert placed is not None and placed.scheduled
    assert native.gang_state({"status": {}}) is None  # fewer pods than minCount: no word yet


def test_scheduler_preemption_is_a_disruption_named_by_its_reason():
    job = make_job(NATIVE_CLUSTER, replicas=2)
    preempted = make_pod(1, terminating=True)
    preempted["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True",
                                          "reason": "PreemptionByScheduler"}]  # fmt: skip
    records = [PodRecord.from_pod(p) for p in (make_pod(0), preempted)]
    result = lifecycle.plan(job, {"phase": "Running"}, records, NOW, None)
    assert result.status["phase"] == "Restarting"
    assert "dn161-worker-1 was disrupted" in result.status["message"]
    assert "PreemptionByScheduler" in result.status["message"]
    assert (result.status["restarts"], result.status["disruptions"]) == (1, 1)
    assert result.restart_cause == "disruption"


def test_a_placed_gang_is_read_no_more_and_a_restart_forgets_it():
    job = make_job(NATIVE_CLUSTER, replicas=2)
    pods_ = [PodRecord.from_pod(make_pod(i)) for i in range(2)]
    placed = native.gang_state(_group_condition("True", "Scheduled", ""))
    result = lifecycle.plan(job, {"phase": "Pending"}, pods_, NOW, None, placed)
    assert result.status["phase"] == "Running"
    (condition,) = [c for c in result.status["conditions"] if c["type"] == "GangScheduled"]
    assert (condition["status"], condition["reason"]) == ("True", "Scheduled")
    # The next generation is a new group: the old one's word is dropped with the restart.
    failed = [PodRecord.from_pod(make_pod(0, phase="Failed", exit_code=137)), pods_[1]]
    restarted = lifecycle.plan(job, result.status, failed, NOW, None)
    assert restarted.status["phase"] == "Restarting"
    assert "GangScheduled" not in [c["type"] for c in restarted.status["conditions"]]
