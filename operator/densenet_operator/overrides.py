"""The merge rule: `spec.podTemplate` and `spec.imagePullSecrets` onto the operator's pod.

- Labels and annotations: the user's are added; the operator's win on a shared key (the job's
  labels find its pods; the Ascend and Volcano annotations are read by their schedulers).
- securityContext (pod and trainer container): the user's keys win over the operator's default
  (podsecurity.py, or the device's: ascend/pod.py), key by key.
- Volumes, init containers, volume mounts, envFrom: the user's are appended after the
  operator's; names and mount paths that would collide are refused by the API server
  (podtemplate.py). Sidecars are appended to the init containers with restartPolicy Always.
- hostNetwork, hostIPC, runtimeClassName, imagePullSecrets: the user's.
- hostNetwork sets dnsPolicy ClusterFirstWithHostNet, so that MASTER_ADDR (a cluster DNS name)
  still resolves; the rendezvous port becomes a host port.
- Never changed: restartPolicy (Never), the trainer's command, args, env, ports and device
  request, the rank-table volume and its mount, hostname and subdomain, the ServiceAccount,
  the grace period, owner references. The user's `envFrom` cannot shadow the operator's `env`
  (Kubernetes: an `env` entry wins over `envFrom`), and `spec.env` may not set its variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from densenet_contract import TRAINER_CONTAINER
from densenet_operator.podadditions import PodAdditions
from densenet_operator.podsecurity import (
    default_container_security_context,
    default_pod_security_context,
)
from densenet_operator.spec import TrainingSpec


def _merged(default: Mapping[str, Any], user: dict[str, Any] | None) -> dict[str, Any]:
    return {**default, **(user or {})}


def sidecar(container: dict[str, Any]) -> dict[str, Any]:
    """A sidecar as a native sidecar: an init container the kubelet keeps running beside the
    main containers and stops when they end (a plain container would keep the pod Running)."""
    return {**container, "restartPolicy": "Always"}


def apply_metadata(metadata: dict[str, Any], spec: TrainingSpec) -> None:
    template = spec.pod_template.metadata
    metadata["labels"] = {**template.labels, **metadata.get("labels", {})}
    annotations = {**template.annotations, **metadata.get("annotations", {})}
    if annotations:
        metadata["annotations"] = annotations


def apply_pod_spec(pod_spec: dict[str, Any], spec: TrainingSpec, device: PodAdditions) -> None:
    """`device`: the device's additions, whose security contexts replace the defaults."""
    overrides = spec.pod_template.spec
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s["name"]} for s in spec.image_pull_secrets]
    if overrides.host_network:
        pod_spec["hostNetwork"] = True
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    if overrides.host_ipc:
        pod_spec["hostIPC"] = True
    if overrides.runtime_class_name:
        pod_spec["runtimeClassName"] = overrides.runtime_class_name
    default = device.pod_security_context
    if default is None:
        default = default_pod_security_context()
    security = _merged(default, overrides.security_context)
    if security:
        pod_spec["securityContext"] = security
    pod_spec["volumes"] = [*pod_spec.get("volumes", ()), *map(dict, overrides.volumes)]
    init = [*map(dict, overrides.init_containers), *map(sidecar, overrides.sidecars)]
    if init:
        pod_spec["initContainers"] = init
    trainer = next(c for c in pod_spec["containers"] if c["name"] == TRAINER_CONTAINER)
    apply_trainer(trainer, spec, device)


def apply_trainer(container: dict[str, Any], spec: TrainingSpec, device: PodAdditions) -> None:
    overrides = spec.pod_template.trainer
    default = device.container_security_context
    if default is None:
        default = default_container_security_context()
    security = _merged(default, overrides.security_context)
    if security:
        container["securityContext"] = security
    container["volumeMounts"] = [*container.get("volumeMounts", ()),
                                 *map(dict, overrides.volume_mounts)]  # fmt: skip
    if overrides.env_from:
        container["envFrom"] = [dict(source) for source in overrides.env_from]
