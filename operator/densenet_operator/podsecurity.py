"""The default security context of trainer pods.

cpu and cuda pods meet Pod Security Admission's `restricted` level as they are: non-root as
uid/gid 1000 (the trainer image's user), fsGroup 1000 (so that a checkpoint volume is
writable), no privilege escalation, every capability dropped, seccomp RuntimeDefault. GPUs
reach the container through the NVIDIA runtime's device injection, which needs none of these.

A device whose pods need more says so in its PodAdditions (Ascend's: ascend/pod.py).
`spec.podTemplate` may override any key (docs/security.md).
"""

from __future__ import annotations

from typing import Any

TRAINER_UID = 1000  # docker/trainer.Dockerfile: USER 1000:1000 by default
SECCOMP_DEFAULT = {"type": "RuntimeDefault"}


def default_pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": TRAINER_UID,
        "runAsGroup": TRAINER_UID,
        "fsGroup": TRAINER_UID,
        "seccompProfile": dict(SECCOMP_DEFAULT),
    }


def default_container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": dict(SECCOMP_DEFAULT),
    }
