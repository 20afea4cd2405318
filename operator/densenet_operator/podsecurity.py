"""The default security context of trainer pods.

cpu and cuda pods meet Pod Security Admission's `restricted` level as they are: non-root as
uid/gid 1000 (the trainer image's user), fsGroup 1000 (so that a checkpoint volume is
writable), no privilege escalation, every capability dropped, seccomp RuntimeDefault. GPUs
reach the container through the NVIDIA runtime's device injection, which needs none of these.

Ascend pods mount the NPU driver from the host (hostPath /usr/local/Ascend/driver, add-ons,
/var/log/npu), which only the `privileged` level admits, so they get no container context.
They run as the nodes' HwHiAiUser (the operator's setting, 1000:1000 as Huawei documents it):
Huawei's runtime hands the container /dev/davinci* owned by that user and group, and the
driver's files are readable by them only. The group is also a supplemental group, so that a
podTemplate that changes runAsGroup keeps the devices. `spec.podTemplate` may override any key
(docs/security.md).
"""

from __future__ import annotations

from typing import Any

from densenet_operator.settings import RunAs
from densenet_operator.spec import TrainingSpec

TRAINER_UID = 1000  # docker/trainer.Dockerfile: USER 1000:1000 by default
SECCOMP_DEFAULT = {"type": "RuntimeDefault"}


def default_pod_security_context(
    spec: TrainingSpec, ascend_run_as: RunAs | None = None
) -> dict[str, Any]:
    if spec.device_type == "ascend":
        return ascend_pod_security_context(ascend_run_as or RunAs())
    return {
        "runAsNonRoot": True,
        "runAsUser": TRAINER_UID,
        "runAsGroup": TRAINER_UID,
        "fsGroup": TRAINER_UID,
        "seccompProfile": dict(SECCOMP_DEFAULT),
    }


def ascend_pod_security_context(run_as: RunAs) -> dict[str, Any]:
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


def default_container_security_context(spec: TrainingSpec) -> dict[str, Any]:
    if spec.device_type == "ascend":
        return {}
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": dict(SECCOMP_DEFAULT),
    }
