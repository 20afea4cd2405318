"""How a kubelet ends a pod, for a cluster without kubelets (KWOK's fake nodes).

KWOK moves a scheduled pod to Running and then leaves it alone: nothing on a fake node ever
exits. A real kubelet, when a pod's containers have all terminated (restartPolicy Never), writes
the pod's status through the status subresource: phase Succeeded or Failed, conditions Ready and
ContainersReady False (reason PodCompleted / PodFailed), and for each container
`state.terminated` with its exit code, a reason (Completed, Error, OOMKilled...) and its start
and finish times. `terminal_status` builds exactly that patch and `set_pod_phase` writes it.

It is the one place pod status is written as a kubelet would; its users:
- tests that end a pod (`Jobs.set_pod_phase`, tests/hack), playing the kubelet;
- `fakenodes.delete_node(gc_pods=True)`, playing kube-controller-manager's pod garbage
  collector, which fails the pods of a deleted node (with a DisruptionTarget condition).
Pods that must really run go to the real node (hack/realnode.py), whose kubelet is the real one.

Not emulated: container restarts (restartPolicy Always/OnFailure: restartCount stays as it
is), init containers, ephemeral containers, `lastState`, and the pod's `status.startTime`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, TypedDict, Unpack

from testsupport import TERMINAL_PHASES, Kubectl

# Termination of a process by a signal, as the container runtime reports it: 128 + signal.
SIGNAL_EXIT_BASE = 128


def exit_code_of(returncode: int) -> int:
    """A process's exit status as a container's exit code: killed by signal N -> 128 + N."""
    return SIGNAL_EXIT_BASE - returncode if returncode < 0 else returncode


class Ending(TypedDict, total=False):
    """How the pod ended (every key optional; see `terminal_status` for the defaults)."""

    exit_code: int | None  # every container's exit code
    container_reason: str | None  # the containers' `terminated.reason`
    reason: str | None  # the pod's status.reason
    message: str | None  # the pod's status.message
    condition: Mapping[str, str] | None  # a condition to add, e.g. DisruptionTarget


def _terminated_container(
    container: Mapping[str, Any], old: Mapping[str, Any], code: int, reason: str, now: str
) -> dict[str, Any]:
    started = ((old.get("state") or {}).get("running") or {}).get("startedAt", now)
    return {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": "",
        "ready": False,
        "started": False,
        "restartCount": old.get("restartCount", 0),
        "state": {
            "terminated": {
                "exitCode": code,
                "reason": reason,
                "startedAt": started,
                "finishedAt": now,
            }
        },
    }


def terminal_status(
    pod: Mapping[str, Any], phase: str, *, now: str | None = None, **ending: Unpack[Ending]
) -> dict[str, Any]:
    """The status a kubelet writes when the pod's containers have ended.

    Every container terminated with `exit_code` (default 0 for Succeeded, 1 for Failed) and
    `container_reason` (default Completed for 0, else Error); Ready and ContainersReady False;
    `condition` (e.g. DisruptionTarget) added; `reason` and `message` on the pod when given.
    """
    if phase not in TERMINAL_PHASES:
        raise ValueError(f"phase must be Succeeded or Failed, not {phase!r}")
    now = now or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    code = ending.get("exit_code")
    code = code if code is not None else (0 if phase == "Succeeded" else 1)
    why = ending.get("container_reason") or ("Completed" if code == 0 else "Error")
    condition = ending.get("condition")
    status = pod.get("status") or {}
    old = {c["name"]: c for c in status.get("containerStatuses") or []}
    replaced = ("Ready", "ContainersReady", (condition or {}).get("type"))
    conditions = [c for c in status.get("conditions") or [] if c["type"] not in replaced]
    pod_reason = "PodCompleted" if phase == "Succeeded" else "PodFailed"
    conditions += [
        {"type": t, "status": "False", "reason": pod_reason, "lastTransitionTime": now}
        for t in ("Ready", "ContainersReady")
    ]
    if condition:
        conditions.append({**condition, "lastTransitionTime": now})
    written: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "containerStatuses": [
            _terminated_container(c, old.get(c["name"], {}), code, why, now)
            for c in pod["spec"]["containers"]
        ],
    }
    if (reason := ending.get("reason")) is not None:
        written["reason"] = reason
    if (message := ending.get("message")) is not None:
        written["message"] = message
    return written


def set_pod_phase(
    kubectl: Kubectl,
    namespace: str,
    name: str,
    phase: str,
    *,
    check: bool = True,
    **ending: Unpack[Ending],
) -> dict[str, Any]:
    """Move a pod to a terminal phase as a kubelet would (see `terminal_status`).

    Reads the pod, then merge-patches its status subresource. Returns the pod as patched; with
    check=False, a pod that is gone (or a refused patch) returns {} instead of raising.
    """
    got = kubectl("get", "pod", name, "-n", namespace, "-o", "json", check=check)
    if got.returncode != 0:
        return {}
    status = terminal_status(json.loads(got.stdout), phase, **ending)
    proc = kubectl(
        "patch", "pod", name, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}), "-o", "json", check=check,
    )  # fmt: skip
    return json.loads(proc.stdout) if proc.returncode == 0 else {}
