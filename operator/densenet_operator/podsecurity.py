"""The default security context of trainer pods.

cpu and cuda pods meet Pod Security Admission's `restricted` level as they are: non-root as
uid/gid 1000 (the trainer image's user), fsGroup 1000 (so that a checkpoint volume is
writable), no privilege escalation, every capability dropped, seccomp RuntimeDefault. GPUs
reach the container through the NVIDIA runtime's device injection, which needs none of these.

Ascend pods get none by default: they mount the NPU driver from the host (hostPath
/usr/local/Ascend/driver, add-ons, /var/log/npu), which only the `privileged` level admits,
and Huawei's runtime hands the container /dev/davinci* owned by HwHiAiUser (uid/gid 1000 by
convention, the image's user). `spec.podTemplate` may add a context to either
(docs/security.md).
"""

from __future__ import annotations

from typing import Any

from densenet_operator.spec import TrainingSpec

TRAINER_UID = 1000  # docker/trainer.Dockerfile: USER 1000:1000
SECCOMP_DEFAULT = {"type": "RuntimeDefault"}


def default_pod_security_context(spec: TrainingSpec) -> dict[str, Any]:
    if spec.device_type == "ascend":
        return {}
    return {
        "runAsNonRoot": True,
        "runAsUser": TRAINER_UID,
        "runAsGroup": TRAINER_UID,
        "fsGroup": TRAINER_UID,
        "seccompProfile": dict(SECCOMP_DEFAULT),
    }


def default_container_security_context(spec: TrainingSpec) -> dict[str, Any]:
    if spec.device_type == "ascend":
        return {}
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": dict(SECCOMP_DEFAULT),
    }
