"""The worker pods: one per replica, each running `densenet-train launch` on its devices."""

from __future__ import annotations

from typing import Any

from densenet_operator import naming
from densenet_operator.spec import TRAINER_DEVICES, Job, TrainingSpec

ASCEND_HOST_PATHS = {
    "ascend-driver": "/usr/local/Ascend/driver",
    "ascend-add-ons": "/usr/local/Ascend/add-ons",
    "npu-log": "/var/log/npu",
}
VOLCANO_SCHEDULER = "volcano"
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"


def _flag(value: float) -> str:
    # repr keeps full precision without exponent surprises for typical values (1e-4 -> 0.0001).
    return format(value, "g") if isinstance(value, float) else str(value)


def trainer_args(spec: TrainingSpec, job_name: str) -> list[str]:
    """The recipe as `densenet-train` flags (see docs/contract.md)."""
    recipe = spec.recipe
    args = [
        "--arch",
        spec.model,
        "--device",
        TRAINER_DEVICES[spec.device_type],
        "--epochs",
        str(recipe.epochs),
        "--batch-size",
        str(recipe.batch_size),
        "--lr",
        _flag(recipe.lr),
        "--momentum",
        _flag(recipe.momentum),
        "--weight-decay",
        _flag(recipe.weight_decay),
        "--lr-schedule",
        recipe.lr_schedule.type,
        "--lr-step-size",
        str(recipe.lr_schedule.step_size),
        "--lr-gamma",
        _flag(recipe.lr_schedule.gamma),
        "--warmup-epochs",
        str(recipe.warmup_epochs),
        "--label-smoothing",
        _flag(recipe.label_smoothing),
        "--mode",
        recipe.mode,
        "--workers",
        str(recipe.workers),
        "--print-freq",
        str(recipe.print_freq),
        "--image-size",
        str(recipe.image_size),
        "--checkpoint-dir",
        f"{spec.checkpoint.path.rstrip('/')}/{job_name}",
    ]
    if recipe.mixed_precision:
        args.append("--amp")
    if recipe.max_steps is not None:
        args += ["--max-train-steps", str(recipe.max_steps)]
    if spec.data.synthetic:
        args.append("--synthetic")
    else:
        assert spec.data.path is not None  # parse_spec guarantees it
        args += ["--data", spec.data.path]
    return args + list(recipe.extra_args)


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def trainer_env(job: Job, index: int) -> list[dict[str, Any]]:
    spec = job.spec
    env: list[dict[str, Any]] = [
        {"name": "DENSENET_JOB_NAME", "value": job.ref.name},
        _field_env("DENSENET_JOB_NAMESPACE", "metadata.namespace"),
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_IP", "status.podIP"),
        {"name": "DEVICE_TYPE", "value": spec.device_type},
        {"name": "MASTER_ADDR", "value": naming.master_address(job.ref.name)},
        {"name": "MASTER_PORT", "value": str(naming.MASTER_PORT)},
        {"name": "NNODES", "value": str(spec.replicas)},
        {"name": "NODE_RANK", "value": str(index)},
        {"name": "NPROC_PER_NODE", "value": str(spec.devices_per_replica)},
        {"name": "WORLD_SIZE", "value": str(spec.world_size)},
        {"name": "RANK_TABLE_FILE", "value": naming.RANK_TABLE_FILE},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if spec.device_type == "ascend":
        env += [
            _field_env("HCCL_IF_IP", "status.podIP"),
            {"name": "HCCL_WHITELIST_DISABLE", "value": "1"},
            # torch_npu warns below 300 s; large gangs need the margin to connect.
            {"name": "HCCL_CONNECT_TIMEOUT", "value": "600"},
        ]
    # The user's variables come last so that they win.
    return env + [dict(var) for var in spec.env]


def _volumes_and_mounts(spec: TrainingSpec, job_name: str) -> tuple[list[dict], list[dict]]:
    volumes: list[dict[str, Any]] = [
        {
            "name": "rank-table",
            "configMap": {"name": naming.rank_table_configmap_name(job_name)},
        },
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "rank-table", "mountPath": naming.RANK_TABLE_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    if spec.device_type == "ascend":
        for name, path in ASCEND_HOST_PATHS.items():
            volumes.append({"name": name, "hostPath": {"path": path}})
            mounts.append({"name": name, "mountPath": path, "readOnly": name != "npu-log"})
    if not spec.data.synthetic and spec.data.volume:
        volumes.append({"name": "data", **spec.data.volume})
        mounts.append({"name": "data", "mountPath": spec.data.path, "readOnly": True})
    checkpoint_source = spec.checkpoint.volume or {"emptyDir": {}}
    volumes.append({"name": "checkpoints", **checkpoint_source})
    mounts.append({"name": "checkpoints", "mountPath": spec.checkpoint.path})
    return volumes, mounts


def _resources(spec: TrainingSpec) -> dict[str, Any]:
    requests = dict(spec.scheduling.resources.get("requests") or {})
    limits = dict(spec.scheduling.resources.get("limits") or {})
    if spec.resource_name:
        # Extended resources cannot be overcommitted: request and limit must be equal.
        requests[spec.resource_name] = str(spec.devices_per_replica)
        limits[spec.resource_name] = str(spec.devices_per_replica)
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


def pod_group_name(job_name: str) -> str:
    return job_name


def build_pod(job: Job, index: int, gang: int = 0) -> dict[str, Any]:
    """The pod of replica `index` in gang `gang` (the restart count it was created under)."""
    spec = job.spec
    name = naming.pod_name(job.ref.name, index)
    volumes, mounts = _volumes_and_mounts(spec, job.ref.name)
    metadata = naming.child_metadata(
        job.ref,
        name,
        {
            naming.LABEL_REPLICA_TYPE: "worker",
            naming.LABEL_REPLICA_INDEX: str(index),
            naming.LABEL_GANG: str(gang),
        },
    )
    pod_spec: dict[str, Any] = {
        # The operator restarts the whole gang; a kubelet restarting one rank would hang DDP.
        "restartPolicy": "Never",
        "hostname": name,
        "subdomain": naming.service_name(job.ref.name),
        "serviceAccountName": naming.service_account_name(job.ref.name),
        "containers": [
            {
                "name": naming.TRAINER_CONTAINER,
                "image": spec.image,
                "imagePullPolicy": spec.image_pull_policy,
                "command": ["densenet-train", "launch"],
                "args": trainer_args(spec, job.ref.name),
                "env": trainer_env(job, index),
                "ports": [{"name": "dist", "containerPort": naming.MASTER_PORT}],
                "resources": _resources(spec),
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }
    scheduling = spec.scheduling
    if scheduling.node_selector:
        pod_spec["nodeSelector"] = dict(scheduling.node_selector)
    if scheduling.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in scheduling.tolerations]
    if scheduling.affinity:
        pod_spec["affinity"] = scheduling.affinity
    if scheduling.scheduler_name:
        pod_spec["schedulerName"] = scheduling.scheduler_name
    if scheduling.priority_class_name:
        pod_spec["priorityClassName"] = scheduling.priority_class_name
    if scheduling.scheduler_name == VOLCANO_SCHEDULER:
        metadata["annotations"] = {VOLCANO_GROUP_ANNOTATION: pod_group_name(job.ref.name)}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
