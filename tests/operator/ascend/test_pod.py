"""What an Ascend pod adds (ascend/pod.py), and that pods.py merges all of it."""

from densenet_contract import RANK_TABLE_FILE, Env
from densenet_operator import pods
from densenet_operator.ascend import pod as ascend_pod
from densenet_operator.ascend import products
from densenet_operator.gang import NONE
from densenet_operator.podadditions import PodAdditions
from densenet_operator.settings import RunAs
from tests.operator.factories import make_job


def names(entries):
    return [entry["name"] for entry in entries]


def test_an_ascend_pod_adds_the_product_s_selector_label_annotation_mounts_and_user():
    job = make_job(replicas=2, device={"ascend": {"product": "910b"}})
    added = ascend_pod.additions(job, 1, RunAs(1001, 1002))
    assert added.node_selector == {"accelerator-type": "module-910b-8"}
    assert added.labels == {"ring-controller.atlas": "ascend-910b"}
    assert added.annotations == {"hccl/rankIndex": "1"}
    assert names(added.volumes) == names(added.mounts) == list(products.HOST_PATHS)
    assert {m["name"]: m["readOnly"] for m in added.mounts} == {
        "ascend-driver": True, "ascend-add-ons": True, "npu-log": False,
    }  # fmt: skip
    assert added.pod_security_context is not None
    assert added.pod_security_context["runAsUser"] == 1001
    assert added.pod_security_context["supplementalGroups"] == [1002]
    assert added.container_security_context == {}
    assert added.scheduler_name is None


def test_an_ascend_pod_s_env_is_what_hccl_and_the_device_plugin_read():
    job = make_job(replicas=2)
    env = {e["name"]: e for e in ascend_pod.additions(job, 0).env}
    assert env[Env.RANK_TABLE_FILE]["value"] == RANK_TABLE_FILE
    assert env[Env.HCCL_IF_IP]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env[Env.HCCL_LOGIC_SUPERPOD_ID]["value"] == "0"
    assert Env.ASCEND_VISIBLE_DEVICES not in env
    chosen = ascend_pod.additions(job, 0, scheduler_chooses_devices=True).env
    assert chosen[-1]["name"] == Env.ASCEND_VISIBLE_DEVICES


def test_pods_merge_every_addition_and_the_user_s_selector_wins():
    job = make_job(replicas=2, scheduling={"nodeSelector": {"accelerator-type": "mine"}})
    added = ascend_pod.additions(job, 1)
    pod = pods.build_pod(job, 1)
    spec, trainer = pod["spec"], pod["spec"]["containers"][0]
    assert spec["nodeSelector"] == {"accelerator-type": "mine"}
    assert added.labels.items() <= pod["metadata"]["labels"].items()
    assert added.annotations.items() <= pod["metadata"]["annotations"].items()
    assert [e for e in trainer["env"] if e in added.env] == list(added.env)
    assert all(v in spec["volumes"] for v in added.volumes)
    assert all(m in trainer["volumeMounts"] for m in added.mounts)
    assert spec["securityContext"] == added.pod_security_context
    assert "securityContext" not in trainer


def test_cpu_and_cuda_add_nothing_but_their_resource():
    for device in ("cpu", "cuda"):
        job = make_job(device={"type": device}, devicesPerReplica=1)
        assert pods.device_additions(job, 0, None, NONE) == PodAdditions()
        pod = pods.build_pod(job, 0)
        assert not any("ascend" in v["name"] or "npu" in v["name"] for v in pod["spec"]["volumes"])
        assert "nodeSelector" not in pod["spec"]
