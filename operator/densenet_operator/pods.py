"""The worker pods: one per replica, each running `densenet-train launch` on its devices."""

from __future__ import annotations

from typing import Any

from densenet_contract import (
    HCCL_ENV,
    RANK_TABLE_DIR,
    RANK_TABLE_FILE,
    TRAINER_COMMAND,
    TRAINER_CONTAINER,
    Env,
)
from densenet_contract.schema import trainer_flags
from densenet_operator import naming, overrides
from densenet_operator.ascend import products
from densenet_operator.podresources import container_resources
from densenet_operator.podtemplate import ASCEND_HOST_PATHS, SHM_PATH
from densenet_operator.settings import RunAs
from densenet_operator.spec import Job, TrainingSpec

VOLCANO_SCHEDULER = "volcano"
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"


def trainer_args(spec: TrainingSpec, job_name: str) -> list[str]:
    """The job as `densenet-train` flags: model, device, the recipe (each recipe field names
    its flag in densenet_contract.recipe), checkpoints with resume, data, the user's extras."""
    args = ["--arch", spec.model, "--device", spec.device_kind.torch_device]
    # A restarted gang continues from the newest checkpoint.
    args += [
        "--checkpoint-dir",
        f"{spec.checkpoint.path.rstrip('/')}/{job_name}",
        "--resume",
        "auto",
    ]
    args += trainer_flags(spec.recipe)
    args += ["--synthetic"] if spec.data.synthetic else ["--data", str(spec.data.path)]
    return args + list(spec.recipe.extra_args)


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def trainer_env(job: Job, index: int) -> list[dict[str, Any]]:
    """The environment of docs/contract.md: identity, and torchrun's topology (PET_*)."""
    spec = job.spec
    env: list[dict[str, Any]] = [
        {"name": Env.JOB_NAME, "value": job.ref.name},
        _field_env(Env.JOB_NAMESPACE, "metadata.namespace"),
        _field_env(Env.POD_NAME, "metadata.name"),
        _field_env(Env.POD_IP, "status.podIP"),
        {"name": Env.NNODES, "value": str(spec.replicas)},
        {"name": Env.NODE_RANK, "value": str(index)},
        {"name": Env.NPROC_PER_NODE, "value": str(spec.devices_per_replica)},
        {"name": Env.MASTER_ADDR, "value": naming.master_address(job.ref.name)},
        {"name": Env.MASTER_PORT, "value": str(spec.network.master_port)},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if spec.uses_rank_table:
        env += _ascend_env(spec, index)
    # The user's variables come last so that they win.
    return env + [dict(var) for var in spec.env]


def _ascend_env(spec: TrainingSpec, index: int) -> list[dict[str, Any]]:
    """What HCCL, torch_npu and Huawei's device plugin read in an Ascend container."""
    logical = products.logical_super_pod(index, spec.super_pod_block, spec.devices_per_replica)
    env = [
        {"name": Env.RANK_TABLE_FILE, "value": RANK_TABLE_FILE},
        _field_env(Env.HCCL_IF_IP, "status.podIP"),
        *({"name": name, "value": value} for name, value in HCCL_ENV.items()),
        # ascend-operator sets it on every NPU job: the replica's logical super pod ("0"
        # outside A3 super pods).
        {"name": Env.HCCL_LOGIC_SUPERPOD_ID,
         "value": str(logical if spec.product.super_pod else 0)},
    ]  # fmt: skip
    if spec.scheduling.scheduler_name == VOLCANO_SCHEDULER:
        # Under Volcano the device plugin finds the pod's chips through this variable.
        annotation = products.VOLCANO_DEVICES_ANNOTATION
        env.append(_field_env(Env.ASCEND_VISIBLE_DEVICES, f"metadata.annotations['{annotation}']"))
    return env


def _volumes_and_mounts(spec: TrainingSpec, job_name: str) -> tuple[list[dict], list[dict]]:
    volumes: list[dict[str, Any]] = [
        {
            "name": "rank-table",
            "configMap": {"name": naming.rank_table_configmap_name(job_name)},
        },
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "rank-table", "mountPath": RANK_TABLE_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": SHM_PATH},
    ]
    if spec.device_type == "ascend":
        for name, path in ASCEND_HOST_PATHS.items():
            volumes.append({"name": name, "hostPath": {"path": path}})
            mounts.append({"name": name, "mountPath": path, "readOnly": name != "npu-log"})
    if not spec.data.synthetic and spec.data.volume:
        volumes.append({**spec.data.volume, "name": "data"})
        mounts.append({"name": "data", "mountPath": spec.data.path, "readOnly": True})
    checkpoint_source = spec.checkpoint.volume or {"emptyDir": {}}
    volumes.append({**checkpoint_source, "name": "checkpoints"})
    mounts.append({"name": "checkpoints", "mountPath": spec.checkpoint.path})
    return volumes, mounts


def _rendezvous_port(spec: TrainingSpec) -> dict[str, Any]:
    port = {"name": "dist", "containerPort": spec.network.master_port}
    if spec.pod_template.spec.host_network:
        # The node's port: the scheduler then never puts two such pods on one node.
        port["hostPort"] = spec.network.master_port
    return port


def _ascend_metadata(job: Job, index: int) -> tuple[dict[str, str], dict[str, str]]:
    """Labels and annotations Huawei's stack reads on an Ascend pod."""
    spec = job.spec
    if spec.device.type != "ascend":
        return {}, {}
    labels = {products.RING_CONTROLLER_LABEL: spec.product.ring_controller}
    annotations = {products.RANK_INDEX_ANNOTATION: str(index)}  # as ascend-operator writes it
    return labels, annotations


def _node_selector(spec: TrainingSpec) -> dict[str, str]:
    """The user's selector; on Ascend, the product's accelerator-type unless the user set one."""
    selector = dict(spec.scheduling.node_selector)
    if spec.device.type == "ascend" and spec.product.accelerator_type:
        selector.setdefault(products.ACCELERATOR_TYPE_LABEL, spec.product.accelerator_type)
    return selector


def build_pod(job: Job, index: int, gang: int = 0, run_as: RunAs | None = None) -> dict[str, Any]:
    """The pod of replica `index` in gang `gang` (the restart count it was created under);
    `run_as`: the nodes' HwHiAiUser, whom Ascend pods run as (default 1000:1000)."""
    spec = job.spec
    name = naming.pod_name(job.ref.name, index)
    volumes, mounts = _volumes_and_mounts(spec, job.ref.name)
    ascend_labels, annotations = _ascend_metadata(job, index)
    metadata = naming.child_metadata(
        job.ref,
        name,
        {
            naming.LABEL_REPLICA_TYPE: naming.WORKER,
            naming.LABEL_REPLICA_INDEX: str(index),
            naming.LABEL_GANG: str(gang),
            **ascend_labels,
        },
    )
    pod_spec: dict[str, Any] = {
        # The operator restarts the whole gang; a kubelet restarting one rank would hang DDP.
        "restartPolicy": "Never",
        # The trainer's graceful stop: finish the step, write a checkpoint, exit 75.
        "terminationGracePeriodSeconds": spec.run_policy.termination_grace_period_seconds,
        "hostname": name,
        "subdomain": naming.service_name(job.ref.name),
        "serviceAccountName": naming.service_account_name(job.ref.name),
        "containers": [
            {
                "name": TRAINER_CONTAINER,
                "image": str(spec.image),
                "imagePullPolicy": spec.image_pull_policy,
                "command": list(TRAINER_COMMAND),
                "args": trainer_args(spec, job.ref.name),
                "env": trainer_env(job, index),
                "ports": [_rendezvous_port(spec)],
                "resources": container_resources(spec),
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }
    scheduling = spec.scheduling
    if selector := _node_selector(spec):
        pod_spec["nodeSelector"] = selector
    if scheduling.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in scheduling.tolerations]
    if scheduling.affinity:
        pod_spec["affinity"] = scheduling.affinity
    if scheduling.scheduler_name:
        pod_spec["schedulerName"] = scheduling.scheduler_name
    if scheduling.priority_class_name:
        pod_spec["priorityClassName"] = scheduling.priority_class_name
    if scheduling.scheduler_name == VOLCANO_SCHEDULER:
        annotations[VOLCANO_GROUP_ANNOTATION] = naming.pod_group_name(job.ref.name)
    if annotations:
        metadata["annotations"] = annotations
    # The user's podTemplate, by the merge rule of overrides.py.
    overrides.apply_metadata(metadata, spec)
    overrides.apply_pod_spec(pod_spec, spec, run_as)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
