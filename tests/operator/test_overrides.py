"""The merge rule of spec.podTemplate onto the operator's pod (overrides.py), the defaults it
merges over (podsecurity.py, podresources.py), and the spec rules that refuse overrides that
cannot work (podtemplate.py; their CEL side is checked on the API server in
test_crd_validation.py)."""

from __future__ import annotations

from typing import Any

import pytest

from densenet_contract import RANK_TABLE_DIR, TRAINER_COMMAND, TRAINER_CONTAINER
from densenet_operator import naming, pods
from densenet_operator.ascend import products
from densenet_operator.podresources import container_resources
from densenet_operator.settings import RunAs
from densenet_operator.spec import SpecError
from tests.operator.factories import make_job

SIDECAR = {"name": "log-shipper", "image": "fluent-bit:3.1", "ports": [{"containerPort": 2020}]}
TEMPLATE: dict[str, Any] = {
    "metadata": {
        "labels": {"kueue.x-k8s.io/queue-name": "team-a"},
        "annotations": {"sidecar.istio.io/inject": "false"},
    },
    "spec": {
        "hostNetwork": True,
        "hostIPC": True,
        "runtimeClassName": "ascend",
        "securityContext": {"runAsUser": 2000, "supplementalGroups": [44]},
        "volumes": [{"name": "cache", "emptyDir": {}}],
        "initContainers": [{"name": "warm", "image": "busybox:1.36", "command": ["true"]}],
        "sidecars": [SIDECAR],
    },
    "trainer": {
        "securityContext": {"readOnlyRootFilesystem": True},
        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
        "envFrom": [{"secretRef": {"name": "s3-credentials"}}],
    },
}


def trainer(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == TRAINER_CONTAINER)


def cpu_job(**spec: Any) -> Any:
    return make_job(device={"type": "cpu"}, devicesPerReplica=2, **spec)


def test_every_override_reaches_the_pod() -> None:
    pod = pods.build_pod(cpu_job(podTemplate=TEMPLATE, imagePullSecrets=[{"name": "regcred"}]), 1)
    spec, meta = pod["spec"], pod["metadata"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert meta["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["hostIPC"] is True and spec["runtimeClassName"] == "ascend"
    assert [v["name"] for v in spec["volumes"]][-1] == "cache"
    assert [c["name"] for c in spec["initContainers"]] == ["warm", "log-shipper"]
    assert "restartPolicy" not in spec["initContainers"][0]  # a plain init container stays one
    assert spec["initContainers"][1] == {**SIDECAR, "restartPolicy": "Always"}  # native sidecar
    container = trainer(pod)
    assert container["volumeMounts"][-1] == {"name": "cache", "mountPath": "/cache"}
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]


def test_the_operator_s_fields_win() -> None:
    # On Ascend the operator sets a label and an annotation that Huawei's stack reads.
    template = {
        **TEMPLATE,
        "metadata": {
            "labels": {products.RING_CONTROLLER_LABEL: "mine"},
            "annotations": {products.RANK_INDEX_ANNOTATION: "7"},
        },
    }
    pod = pods.build_pod(make_job(podTemplate=template), 1, gang=3)
    labels = pod["metadata"]["labels"]
    assert labels[products.RING_CONTROLLER_LABEL] == "ascend-910"
    assert pod["metadata"]["annotations"][products.RANK_INDEX_ANNOTATION] == "1"
    assert labels[naming.LABEL_JOB] == "dn161"
    assert labels[naming.LABEL_GANG] == "3" and labels[naming.LABEL_REPLICA_INDEX] == "1"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["hostname"] == "dn161-worker-1" and spec["subdomain"] == "dn161"
    assert spec["serviceAccountName"] == "dn161-trainer"
    container = trainer(pod)
    assert container["command"] == list(TRAINER_COMMAND)
    rank_table = {"name": "rank-table", "mountPath": RANK_TABLE_DIR, "readOnly": True}
    assert container["volumeMounts"][0] == rank_table
    names = [e["name"] for e in container["env"]]
    assert names.index("PET_MASTER_ADDR") >= 0 and len(names) == len(set(names))


def test_security_contexts_merge_key_by_key_over_the_defaults() -> None:
    pod = pods.build_pod(cpu_job(podTemplate=TEMPLATE), 0)
    assert pod["spec"]["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 2000, "runAsGroup": 1000, "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"}, "supplementalGroups": [44],
    }  # fmt: skip
    assert trainer(pod)["securityContext"] == {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}, "readOnlyRootFilesystem": True,
    }  # fmt: skip


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_cpu_and_cuda_pods_are_restricted_by_default(device: str) -> None:
    pod = pods.build_pod(make_job(device={"type": device}, devicesPerReplica=2), 0)
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 1000
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    container = trainer(pod)["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert "hostNetwork" not in pod["spec"] and "initContainers" not in pod["spec"]


def test_ascend_pods_keep_what_the_ascend_runtime_needs() -> None:
    pod = pods.build_pod(make_job(), 0)  # ascend: driver hostPaths, run as HwHiAiUser
    assert pod["spec"]["securityContext"] == {
        "runAsUser": 1000, "runAsGroup": 1000, "supplementalGroups": [1000], "fsGroup": 1000,
        "fsGroupChangePolicy": "OnRootMismatch", "runAsNonRoot": True,
    }  # fmt: skip
    assert "securityContext" not in trainer(pod)  # no capability dropped: the driver's mounts
    assert {"ascend-driver", "npu-log"} <= {v["name"] for v in pod["spec"]["volumes"]}


def test_ascend_pods_run_as_the_clusters_hwhiaiuser() -> None:
    pod = pods.build_pod(make_job(), 0, run_as=RunAs(uid=1001, gid=1002))
    security = pod["spec"]["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (1001, 1002)
    assert security["supplementalGroups"] == [1002] and security["fsGroup"] == 1002
    # A cluster whose devices belong to root: no runAsNonRoot that would refuse the pod.
    root = pods.build_pod(make_job(), 0, run_as=RunAs(uid=0, gid=0))["spec"]["securityContext"]
    assert root["runAsUser"] == 0 and "runAsNonRoot" not in root
    # cpu and cuda pods keep the image's user whatever the Ascend setting.
    cpu = pods.build_pod(cpu_job(), 0, run_as=RunAs(uid=1001, gid=1002))["spec"]
    assert cpu["securityContext"]["runAsUser"] == 1000


def test_a_pod_template_overrides_the_ascend_run_as_user_key_by_key() -> None:
    job = make_job(podTemplate={"spec": {"securityContext": {"runAsUser": 2000}}})
    security = pods.build_pod(job, 0, run_as=RunAs(uid=1001, gid=1002))["spec"]["securityContext"]
    assert security["runAsUser"] == 2000 and security["supplementalGroups"] == [1002]


def test_host_network_keeps_the_rendezvous_on_a_host_port_of_its_own() -> None:
    job = cpu_job(podTemplate={"spec": {"hostNetwork": True}}, network={"masterPort": 31500})
    pod = pods.build_pod(job, 0)
    assert trainer(pod)["ports"] == [{"name": "dist", "containerPort": 31500, "hostPort": 31500}]
    env = {e["name"]: e.get("value") for e in trainer(pod)["env"]}
    assert env["PET_MASTER_PORT"] == "31500"
    assert env["PET_MASTER_ADDR"] == naming.master_address("dn161")  # DNS: ClusterFirstWithHostNet


@pytest.mark.parametrize(
    ("device", "devices", "cpu", "memory"),
    [("ascend", 8, "32", "128Gi"), ("cuda", 2, "8", "32Gi"), ("cpu", 4, "4", "8Gi")],
)
def test_default_requests_scale_with_the_devices(
    device: str, devices: int, cpu: str, memory: str
) -> None:
    job = make_job(device={"type": device}, devicesPerReplica=devices)
    resources = container_resources(job.spec)
    assert resources["requests"]["cpu"] == cpu and resources["requests"]["memory"] == memory
    assert resources["requests"]["ephemeral-storage"] == "10Gi"
    assert resources["limits"]["memory"] == memory and "cpu" not in resources["limits"]


def test_user_resources_win_and_never_contradict() -> None:
    job = make_job(devicesPerReplica=8, scheduling={"resources": {
        "requests": {"memory": "200Gi"}, "limits": {"cpu": "64"}}})  # fmt: skip
    resources = container_resources(job.spec)
    # A request alone is also the limit; a limit alone leaves the request to Kubernetes.
    assert resources["requests"]["memory"] == "200Gi" and resources["limits"]["memory"] == "200Gi"
    assert "cpu" not in resources["requests"] and resources["limits"]["cpu"] == "64"
    assert resources["requests"]["huawei.com/Ascend910"] == "8"
    assert resources["limits"]["huawei.com/Ascend910"] == "8"


# (podTemplate or spec changes, a fragment of the refusal)
REFUSED = {
    "a volume named like the operator's": (
        {"podTemplate": {"spec": {"volumes": [{"name": "rank-table", "emptyDir": {}}]}}},
        "may not be named rank-table",
    ),
    "a sidecar named trainer": (
        {"podTemplate": {"spec": {"sidecars": [{"name": "trainer", "image": "x:1"}]}}},
        "may not be named trainer",
    ),
    "a sidecar and an init container of one name": (
        {"podTemplate": {"spec": {"sidecars": [{"name": "a", "image": "x:1"}],
                                  "initContainers": [{"name": "a", "image": "x:1"}]}}},
        "may not share a name",
    ),
    "restartPolicy": (
        {"podTemplate": {"spec": {"restartPolicy": "Always"}}},
        "restartPolicy is the operator's",
    ),
    "a mount of a volume that is not there": (
        {"podTemplate": {"trainer": {"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}}},
        "may mount only volumes of podTemplate.spec.volumes",
    ),
    "a mount over the rank table": (
        {"podTemplate": {"spec": {"volumes": [{"name": "v", "emptyDir": {}}]},
                         "trainer": {"volumeMounts": [{"name": "v", "mountPath": RANK_TABLE_DIR}]}}},
        "may not mount at the operator's paths",
    ),
    "a mount over the checkpoints": (
        {"podTemplate": {"spec": {"volumes": [{"name": "v", "emptyDir": {}}]},
                         "trainer": {"volumeMounts": [{"name": "v", "mountPath": "/checkpoints"}]}}},
        "may not mount at the operator's paths",
    ),
    "a sidecar on the master port": (
        {"podTemplate": {"spec": {"sidecars": [
            {"name": "s", "image": "x:1", "ports": [{"containerPort": 29500}]}]}}},
        "may not use network.masterPort",
    ),
    "a host port other than the container port under hostNetwork": (
        {"podTemplate": {"spec": {"hostNetwork": True, "sidecars": [
            {"name": "s", "image": "x:1", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}},
        "hostPort must equal containerPort",
    ),
    "a job label": (
        {"podTemplate": {"metadata": {"labels": {naming.LABEL_GANG: "9"}}}},
        "the operator finds the job's pods by them",
    ),
    "the operator's env": (
        {"env": [{"name": "PET_NODE_RANK", "value": "0"}]},
        "the operator sets them",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_overrides_that_cannot_work_are_refused(case: str) -> None:
    changes, fragment = REFUSED[case]
    with pytest.raises(SpecError, match=fragment.replace(".", r"\.")):
        make_job(**changes)


def test_the_full_template_is_valid() -> None:
    job = make_job(podTemplate=TEMPLATE, imagePullSecrets=[{"name": "regcred"}])
    assert job.spec.pod_template.spec.sidecars[0]["name"] == "log-shipper"
