"""Volcano's gang backend (volcano.py): the PodGroup, and what its pods carry."""

from densenet_operator import backends, gang, pods, volcano
from tests.operator.factories import JOB, make_job

VOLCANO = {"schedulerName": "volcano", "queue": "npu", "priorityClassName": "high"}


def test_volcano_pod_group_asks_for_the_whole_gang():
    job = make_job(
        replicas=4,
        scheduling={"schedulerName": "volcano", "queue": "npu", "priorityClassName": "high"},
    )
    group = volcano.build_pod_group(job)
    assert group["apiVersion"] == "scheduling.volcano.sh/v1beta1"
    assert group["metadata"]["name"] == "dn161"
    assert group["spec"] == {
        "minMember": 4,
        "minResources": {"huawei.com/Ascend910": "32"},
        "queue": "npu",
        "priorityClassName": "high",
    }


def test_a_job_is_volcano_s_when_its_scheduler_is_volcano():
    assert backends.backend_for(make_job(scheduling=VOLCANO)) is volcano.BACKEND
    for scheduling in ({}, {"schedulerName": "my-scheduler", "queue": "ignored"}):
        assert backends.backend_for(make_job(scheduling=scheduling)) is gang.NONE


def test_its_children_are_the_pod_group_of_its_custom_kind():
    job = make_job(replicas=2, scheduling=VOLCANO)
    children = volcano.BACKEND.children(job)
    assert children == [volcano.build_pod_group(job)]
    kind = volcano.BACKEND.kinds[children[0]["kind"]]
    assert (kind.group, kind.version, kind.plural) == ("scheduling.volcano.sh", "v1beta1",
                                                       "podgroups")  # fmt: skip
    assert children[0]["apiVersion"] == f"{kind.group}/{kind.version}"
    assert backends.CUSTOM_KINDS[("scheduling.volcano.sh/v1beta1", "PodGroup")] is kind
    assert "install Volcano" in kind.missing


def test_its_pods_name_the_scheduler_and_their_pod_group():
    job = make_job(replicas=2, scheduling=VOLCANO)
    added = volcano.BACKEND.pod_additions(job, 1, gang=0)
    assert added.scheduler_name == "volcano"
    assert added.annotations == {"scheduling.k8s.io/group-name": JOB.name}
    pod = pods.build_pod(job, 1)
    assert pod["spec"]["schedulerName"] == "volcano"
    assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == JOB.name


def test_without_a_gang_the_pods_keep_the_user_s_scheduler_and_nothing_else_is_made():
    job = make_job(scheduling={"schedulerName": "my-scheduler"})
    assert gang.NONE.children(job) == []
    assert gang.NONE.pod_additions(job, 0, gang=0).scheduler_name == "my-scheduler"
    pod = pods.build_pod(job, 0)
    assert pod["spec"]["schedulerName"] == "my-scheduler"
    assert "scheduling.k8s.io/group-name" not in pod["metadata"].get("annotations", {})
    assert "schedulerName" not in pods.build_pod(make_job(), 0)["spec"]
