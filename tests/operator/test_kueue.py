"""Kueue (kueue.py): which jobs are Kueue's, what their pods carry, and what the job's status
says while it waits in its queue, is preempted and ends."""

import dataclasses
import datetime as dt

from densenet_operator import backends, kueue, lifecycle, naming, pods
from densenet_operator.podrecord import PodRecord
from tests.operator.factories import JOB, NATIVE_CLUSTER, make_job, make_pod

NOW = dt.datetime(2026, 12, 7, 12, 0, 0, tzinfo=dt.UTC)
QUEUE = {"kueue.x-k8s.io/queue-name": "team-a"}


def queued_job(**spec):
    return dataclasses.replace(make_job(NATIVE_CLUSTER, **spec), labels=QUEUE)


def gated_pod(index, gang=0):
    pod = make_pod(index, phase="Pending", gang=gang, pod_ip=None, host_ip=None, annotation=None)
    pod["metadata"]["name"] = naming.pod_name(JOB.name, index, gang)
    pod["spec"] = {"schedulingGates": [{"name": "kueue.x-k8s.io/admission"}]}
    return pod


def test_a_job_labelled_for_a_queue_is_kueue_s_whatever_its_gang():
    assert backends.backend_for(queued_job()) is kueue.BACKEND
    assert backends.backend_for(queued_job(scheduling={"gang": "native"})) is kueue.BACKEND
    assert backends.backend_for(make_job(NATIVE_CLUSTER)) is not kueue.BACKEND
    assert "kueue" not in backends.auto_gangs(frozenset(k.resource for k in backends.CUSTOM_KINDS.values())).values()  # fmt: skip


def test_its_pods_are_one_plain_pod_group_named_per_generation():
    job = queued_job(replicas=3)
    pod = pods.build_pod(job, 1, gang=2)
    meta = pod["metadata"]
    assert meta["name"] == "dn161-worker-1-g2"  # Kueue keeps old pods until replaced
    assert pod["spec"]["hostname"] == "dn161-worker-1"  # peers' DNS names do not change
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    # The group (Kueue's Workload) is the job's, the same across generations.
    assert meta["labels"]["kueue.x-k8s.io/pod-group-name"] == f"dn161-{JOB.uid[:8]}"
    assert pods.build_pod(job, 0, gang=5)["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] == (
        meta["labels"]["kueue.x-k8s.io/pod-group-name"])  # fmt: skip
    assert meta["annotations"]["kueue.x-k8s.io/pod-group-total-count"] == "3"
    assert "schedulingGroup" not in pod["spec"]  # Kueue admits the whole group itself
    # Without a queue, the names stay what they were.
    assert (
        pods.build_pod(make_job(NATIVE_CLUSTER), 1, gang=2)["metadata"]["name"] == "dn161-worker-1"
    )


def test_gated_pods_make_the_job_queued_with_the_queue_s_word():
    job = queued_job(replicas=2)
    records = [PodRecord.from_pod(gated_pod(i)) for i in range(2)]
    assert records[0].gates == ("kueue.x-k8s.io/admission",)
    plain = lifecycle.plan(job, {"phase": "Pending"}, records, NOW, None)
    assert (plain.status["phase"], plain.status["reason"]) == ("Queued", "Queued")
    assert "kueue.x-k8s.io/admission" in plain.status["message"]
    assert plain.requeue_after == lifecycle.QUEUE_RECHECK_SECONDS  # the word changes quietly
    owners = [{"kind": "Pod", "name": "dn161-worker-0-g0"}]
    workload = {"metadata": {"ownerReferences": owners}, "status": {"conditions": [
        {"type": "QuotaReserved", "status": "False", "reason": "Pending",
         "message": "couldn't assign flavors to pod set main: insufficient unused quota"}]}}  # fmt: skip
    state = kueue.BACKEND.read_state(job, workload)
    result = lifecycle.plan(job, {"phase": "Pending"}, records, NOW, None, state)
    assert result.status["phase"] == "Queued"
    assert result.status["message"] == (
        "LocalQueue team-a: couldn't assign flavors to pod set main: insufficient unused quota"
    )
    assert ("Normal", "Queued") in [(e.type, e.reason) for e in result.events]
    (queued,) = [c for c in result.status["conditions"] if c["type"] == "Queued"]
    assert queued["status"] == "True"


def test_admission_ends_the_wait():
    job = queued_job(replicas=2)
    admitted = {"metadata": {"ownerReferences": [{"kind": "Pod", "name": "dn161-worker-1-g0"}]},
                "status": {"conditions": [{"type": "Admitted", "status": "True"}]}}  # fmt: skip
    state = kueue.BACKEND.read_state(job, admitted)
    assert state is not None and state.scheduled and not state.queued
    # Evicted (preempted), it may still say Admitted for a moment: it is queued again.
    evicted = {**admitted, "status": {"conditions": [
        {"type": "Admitted", "status": "True"},
        {"type": "Evicted", "status": "True", "message": "Preempted to accommodate a workload"}]}}  # fmt: skip
    again = kueue.BACKEND.read_state(job, evicted)
    assert again is not None and again.queued
    assert again.message == "LocalQueue team-a: Preempted to accommodate a workload"
    # A Workload the group's pods do not own is not the group's (anyone may make one).
    squatter = kueue.BACKEND.read_state(job, {**admitted, "metadata": {}})
    assert squatter is not None and not squatter.scheduled and squatter.queued
    running = []
    for index in range(2):
        pod = make_pod(index)
        pod["metadata"]["name"] = naming.pod_name(JOB.name, index, 0)
        running.append(PodRecord.from_pod(pod))
    result = lifecycle.plan(job, {"phase": "Queued"}, running, NOW, None, state)
    assert result.status["phase"] == "Running"


def test_kueue_preemption_is_a_disruption_and_the_next_generation_has_new_names():
    job = queued_job(replicas=2)
    stopped = []
    for index in range(2):
        pod = make_pod(index, terminating=True)
        pod["metadata"]["name"] = naming.pod_name(JOB.name, index, 0)
        pod["status"]["conditions"] = [{"type": "TerminationTarget", "status": "True",
                                        "reason": "Preempted"}]  # fmt: skip
        stopped.append(PodRecord.from_pod(pod))
    result = lifecycle.plan(job, {"phase": "Running"}, stopped, NOW, None)
    assert (result.status["restarts"], result.status["disruptions"]) == (1, 1)
    assert "Preempted" in result.status["message"]
    assert not result.release  # the group keeps its place in the queue
    # While the old pods still run (their trainers writing checkpoints), Kueue counts them in
    # the group: the new generation waits, or Kueue would turn it away as one too many.
    assert lifecycle.plan(job, result.status, stopped, NOW, None).create == []
    # Ended, the old pods linger (Kueue's finalizer, until replaced): new names, made at once.
    ended = [dataclasses.replace(p, phase="Failed") for p in stopped]
    again = lifecycle.plan(job, result.status, ended, NOW, None)
    assert again.create == [0, 1]
    assert {pods.build_pod(job, i, gang=1)["metadata"]["name"] for i in again.create} == {
        "dn161-worker-0-g1", "dn161-worker-1-g1"}  # fmt: skip


def test_failing_or_suspending_gives_the_quota_back_succeeding_needs_not():
    job = queued_job(replicas=1, runPolicy={"restartPolicy": "Never"})
    failed = make_pod(0, phase="Failed", exit_code=1)
    failed["metadata"]["name"] = naming.pod_name(JOB.name, 0, 0)
    result = lifecycle.plan(job, {"phase": "Running"}, [PodRecord.from_pod(failed)], NOW, None)
    assert result.status["phase"] == "Failed" and result.release
    assert kueue.BACKEND.released_children(job) == [(kueue.WORKLOAD, f"dn161-{JOB.uid[:8]}")]
    suspended = queued_job(replicas=1, runPolicy={"suspend": True})
    assert lifecycle.plan(suspended, {"phase": "Running"}, [], NOW, None).release
    done = make_pod(0, phase="Succeeded", exit_code=0)
    done["metadata"]["name"] = naming.pod_name(JOB.name, 0, 0)
    succeeded = lifecycle.plan(job, {"phase": "Running"}, [PodRecord.from_pod(done)], NOW, None)
    assert succeeded.status["phase"] == "Succeeded" and not succeeded.release
