"""What an Ascend pod adds to the operator's worker pod (pods.py merges it):

- the product's `accelerator-type` node selector (unless the user set one), the
  `ring-controller.atlas` label Huawei's samples set, and `hccl/rankIndex` as ascend-operator
  writes it;
- what HCCL, torch_npu and Huawei's device plugin read in the container: RANK_TABLE_FILE,
  HCCL_IF_IP, the HCCL_* defaults, HCCL_LOGIC_SUPERPOD_ID, and ASCEND_VISIBLE_DEVICES when the
  scheduler chose the chips (Volcano's Ascend plugin writes them into an annotation);
- the driver, its add-ons and the NPU log directory, mounted from the node;
- the pod's security context: the nodes' HwHiAiUser, and no container context.

Ascend pods mount the NPU driver from the host (hostPath /usr/local/Ascend/driver, add-ons,
/var/log/npu), which only Pod Security Admission's `privileged` level admits, so they get no
container context. They run as the nodes' HwHiAiUser (the operator's setting, 1000:1000 as
Huawei documents it): Huawei's runtime hands the container /dev/davinci* owned by that user and
group, and the driver's files are readable by them only. The group is also a supplemental
group, so that a podTemplate that changes runAsGroup keeps the devices. `spec.podTemplate` may
override any key (docs/security.md).
"""

from __future__ import annotations

from typing import Any

from densenet_contract import HCCL_ENV, RANK_TABLE_FILE, Env
from densenet_operator.ascend import products
from densenet_operator.podadditions import PodAdditions, field_env
from densenet_operator.settings import RunAs
from densenet_operator.spec import Job, TrainingSpec


def additions(
    job: Job, index: int, run_as: RunAs | None = None, *, scheduler_chooses_devices: bool = False
) -> PodAdditions:
    """What replica `index` of an Ascend job adds; `run_as`: the nodes' HwHiAiUser (default
    1000:1000); `scheduler_chooses_devices`: the gang scheduler picks the chips (Volcano)."""
    spec = job.spec
    volumes, mounts = host_volumes()
    selector = {}
    if spec.product.accelerator_type:
        selector[products.ACCELERATOR_TYPE_LABEL] = spec.product.accelerator_type
    return PodAdditions(
        labels={products.RING_CONTROLLER_LABEL: spec.product.ring_controller},
        annotations={products.RANK_INDEX_ANNOTATION: str(index)},  # as ascend-operator writes it
        env=tuple(container_env(spec, index, scheduler_chooses_devices)),
        volumes=volumes,
        mounts=mounts,
        node_selector=selector,
        pod_security_context=pod_security_context(run_as or RunAs()),
        container_security_context={},
    )


def container_env(
    spec: TrainingSpec, index: int, scheduler_chooses_devices: bool = False
) -> list[dict[str, Any]]:
    """What HCCL, torch_npu and Huawei's device plugin read in an Ascend container."""
    logical = products.logical_super_pod(index, spec.super_pod_block, spec.devices_per_replica)
    env = [
        {"name": Env.RANK_TABLE_FILE, "value": RANK_TABLE_FILE},
        field_env(Env.HCCL_IF_IP, "status.podIP"),
        *({"name": name, "value": value} for name, value in HCCL_ENV.items()),
        # ascend-operator sets it on every NPU job: the replica's logical super pod ("0"
        # outside A3 super pods).
        {"name": Env.HCCL_LOGIC_SUPERPOD_ID,
         "value": str(logical if spec.product.super_pod else 0)},
    ]  # fmt: skip
    if scheduler_chooses_devices:
        # The device plugin then finds the pod's chips through this variable.
        annotation = products.SCHEDULED_DEVICES_ANNOTATION
        env.append(field_env(Env.ASCEND_VISIBLE_DEVICES, f"metadata.annotations['{annotation}']"))
    return env


def host_volumes() -> tuple[tuple[dict[str, Any], ...], tuple[dict[str, Any], ...]]:
    """The driver, its add-ons and the NPU logs from the node (only the logs writable)."""
    volumes = tuple({"name": name, "hostPath": {"path": path}}
                    for name, path in products.HOST_PATHS.items())  # fmt: skip
    mounts = tuple({"name": name, "mountPath": path, "readOnly": name != "npu-log"}
                   for name, path in products.HOST_PATHS.items())  # fmt: skip
    return volumes, mounts


def pod_security_context(run_as: RunAs) -> dict[str, Any]:
    """HwHiAiUser's ids: the devices' owner, and the group a checkpoint volume is given."""
    context: dict[str, Any] = {
        "runAsUser": run_as.uid,
        "runAsGroup": run_as.gid,
        "supplementalGroups": [run_as.gid],
        "fsGroup": run_as.gid,
        # A large dataset volume is chowned once, not at every gang restart.
        "fsGroupChangePolicy": "OnRootMismatch",
    }
    if run_as.uid != 0:  # a cluster whose HwHiAiUser is root cannot ask for non-root
        context["runAsNonRoot"] = True
    return context
