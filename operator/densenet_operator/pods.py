"""The worker pods: one per replica, each running `densenet-train launch` on its devices.

Device- and scheduler-neutral: what the job's device adds (ascend/pod.py; cpu and cuda add only
their resource, podresources.py) and what its gang backend adds (gang.py, backends.py) arrive as
PodAdditions (podadditions.py), merged here in that order.
"""

from __future__ import annotations

from typing import Any

from densenet_contract import RANK_TABLE_DIR, TRAINER_COMMAND, TRAINER_CONTAINER, Env
from densenet_contract.schema import trainer_flags
from densenet_operator import backends, naming, overrides
from densenet_operator.ascend import pod as ascend_pod
from densenet_operator.gang import GangBackend
from densenet_operator.podadditions import PodAdditions, field_env
from densenet_operator.podresources import container_resources
from densenet_operator.podtemplate import SHM_PATH
from densenet_operator.settings import RunAs
from densenet_operator.spec import Job, TrainingSpec


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


def trainer_env(
    job: Job, index: int, added: tuple[dict[str, Any], ...] = ()
) -> list[dict[str, Any]]:
    """The environment of docs/contract.md: identity, torchrun's topology (PET_*), then what
    the device and the gang backend add (`added`), then spec.env."""
    spec = job.spec
    env: list[dict[str, Any]] = [
        {"name": Env.JOB_NAME, "value": job.ref.name},
        field_env(Env.JOB_NAMESPACE, "metadata.namespace"),
        field_env(Env.POD_NAME, "metadata.name"),
        field_env(Env.POD_IP, "status.podIP"),
        {"name": Env.NNODES, "value": str(spec.replicas)},
        {"name": Env.NODE_RANK, "value": str(index)},
        {"name": Env.NPROC_PER_NODE, "value": str(spec.devices_per_replica)},
        {"name": Env.MASTER_ADDR, "value": naming.master_address(job.ref.name)},
        {"name": Env.MASTER_PORT, "value": str(spec.network.master_port)},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        *added,
    ]
    # The user's variables come last so that they win.
    return env + [dict(var) for var in spec.env]


def _volumes_and_mounts(
    spec: TrainingSpec, job_name: str, device: PodAdditions
) -> tuple[list[dict], list[dict]]:
    # Every pod mounts the job's rank-table ConfigMap, which every job has; off Ascend no
    # RANK_TABLE_FILE points at it (its status is "not required").
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
    volumes += map(dict, device.volumes)
    mounts += map(dict, device.mounts)
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


def device_additions(job: Job, index: int, run_as: RunAs | None, gang: GangBackend) -> PodAdditions:
    """What the job's device adds: Ascend's (ascend/pod.py); cpu and cuda add only their
    resource (podresources.py)."""
    if job.spec.device_type == "ascend":
        chooses = gang.chooses_devices
        return ascend_pod.additions(job, index, run_as, scheduler_chooses_devices=chooses)
    return PodAdditions()


def _node_selector(spec: TrainingSpec, parts: tuple[PodAdditions, ...]) -> dict[str, str]:
    """The user's selector, and what the device and the gang add where the user set nothing."""
    selector = dict(spec.scheduling.node_selector)
    for part in parts:
        for key, value in part.node_selector.items():
            selector.setdefault(key, value)
    return selector


def _metadata(
    job: Job, name: str, index: int, gang: int, parts: tuple[PodAdditions, ...]
) -> dict[str, Any]:
    labels = {
        naming.LABEL_REPLICA_TYPE: naming.WORKER,
        naming.LABEL_REPLICA_INDEX: str(index),
        naming.LABEL_GANG: str(gang),
    }
    annotations: dict[str, str] = {}
    for part in parts:
        labels.update(part.labels)
        annotations.update(part.annotations)
    metadata = naming.child_metadata(job.ref, name, labels)
    if annotations:
        metadata["annotations"] = annotations
    # The user's podTemplate, by the merge rule of overrides.py.
    overrides.apply_metadata(metadata, job.spec)
    return metadata


def _scheduling(
    pod_spec: dict[str, Any], spec: TrainingSpec, parts: tuple[PodAdditions, ...]
) -> None:
    scheduling = spec.scheduling
    if selector := _node_selector(spec, parts):
        pod_spec["nodeSelector"] = selector
    if scheduling.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in scheduling.tolerations]
    if scheduling.affinity:
        pod_spec["affinity"] = scheduling.affinity
    if scheduler := next((p.scheduler_name for p in parts if p.scheduler_name), None):
        pod_spec["schedulerName"] = scheduler
    if group := next((p.scheduling_group for p in parts if p.scheduling_group), None):
        pod_spec["schedulingGroup"] = {"podGroupName": group}
    if scheduling.priority_class_name:
        pod_spec["priorityClassName"] = scheduling.priority_class_name


def build_pod(job: Job, index: int, gang: int = 0, run_as: RunAs | None = None) -> dict[str, Any]:
    """The pod of replica `index` in gang `gang` (the restart count it was created under);
    `run_as`: the nodes' HwHiAiUser, whom Ascend pods run as (default 1000:1000).

    Device- and scheduler-neutral: the job's device and its gang backend (backends.py) add
    their labels, annotations, env, volumes, node selector, scheduler and security context."""
    spec = job.spec
    backend = backends.backend_for(job)
    device = device_additions(job, index, run_as, backend)
    parts = (device, backend.pod_additions(job, index, gang))
    name = backends.pod_name(job, index, gang)
    volumes, mounts = _volumes_and_mounts(spec, job.ref.name, device)
    pod_spec: dict[str, Any] = {
        # The operator restarts the whole gang; a kubelet restarting one rank would hang DDP.
        "restartPolicy": "Never",
        # The trainer's graceful stop: finish the step, write a checkpoint, exit 75.
        "terminationGracePeriodSeconds": spec.run_policy.termination_grace_period_seconds,
        # The DNS name peers use (MASTER_ADDR), stable whatever the pod is called.
        "hostname": naming.pod_hostname(job.ref.name, index),
        "subdomain": naming.service_name(job.ref.name),
        "serviceAccountName": naming.service_account_name(job.ref.name),
        "containers": [
            {
                "name": TRAINER_CONTAINER,
                "image": str(spec.image),
                "imagePullPolicy": spec.image_pull_policy,
                "command": list(TRAINER_COMMAND),
                "args": trainer_args(spec, job.ref.name),
                "env": trainer_env(job, index, tuple(e for p in parts for e in p.env)),
                "ports": [_rendezvous_port(spec)],
                "resources": container_resources(spec),
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }
    _scheduling(pod_spec, spec, parts)
    metadata = _metadata(job, name, index, gang, parts)
    overrides.apply_pod_spec(pod_spec, spec, device)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
