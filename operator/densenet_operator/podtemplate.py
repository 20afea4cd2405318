"""What a job may add to its pods (`spec.podTemplate`, `spec.imagePullSecrets`) and its network
settings (`spec.network`): the typed model, its bounds, and the rules that refuse overrides
that cannot work.

The operator's pod owns some names and paths outright: its volumes, the trainer container, the
mount points of the rank table, shared memory, data, checkpoints and the Ascend driver, and the
variables that carry the job's topology. An override that would take one of them is refused by
the API server (CEL) with a message saying whose it is; `overrides.py` merges what is left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from densenet_contract import GROUP, MASTER_PORT, RANK_TABLE_DIR, TRAINER_CONTAINER, Env
from densenet_contract.schema import Rule, spec_field
from densenet_operator.ascend import products as ascend

MAX_LABELS = 32
MAX_VOLUMES = 16
MAX_CONTAINERS = 8
MAX_PORTS = 16
DNS_LABEL = {"type": "string", "minLength": 1, "maxLength": 63,
             "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}  # fmt: skip
PATH = {"type": "string", "minLength": 1, "maxLength": 1024, "pattern": "^/"}
# The operator's volumes (pods.py) and where it mounts them in the trainer container.
OPERATOR_VOLUMES = ("rank-table", "dshm", *ascend.HOST_PATHS, "data", "checkpoints")
SHM_PATH = "/dev/shm"
FIXED_MOUNT_PATHS = (RANK_TABLE_DIR, SHM_PATH, *ascend.HOST_PATHS.values())
# Variables of the job's identity, topology and rank table: set by the operator, never the user.
RESERVED_ENV = (
    Env.JOB_NAME, Env.JOB_NAMESPACE, Env.POD_NAME, Env.POD_IP, Env.NNODES, Env.NODE_RANK,
    Env.NPROC_PER_NODE, Env.MASTER_ADDR, Env.MASTER_PORT, *ascend.CONTAINER_ENV,
)  # fmt: skip
# The job's labels (naming.py): the operator finds its pods by them.
RESERVED_LABEL_PREFIX = f"{GROUP}/"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"


def _cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _named_list(item: dict[str, Any], max_items: int) -> dict[str, Any]:
    """A list of objects keyed by name: the API server refuses a duplicate name itself."""
    return {"type": "array", "maxItems": max_items, "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"], "items": item}  # fmt: skip


def _object(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """An object of Kubernetes' own shape: the fields a rule needs declared, the rest kept."""
    return {"type": "object", "required": required, "x-kubernetes-preserve-unknown-fields": True,
            "properties": properties}  # fmt: skip


FREE_FORM = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
SECURITY_CONTEXT = {**FREE_FORM, "properties": {"privileged": {"type": "boolean"}}}
PORT = _object(["containerPort"], {"containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
                                   "hostPort": {"type": "integer", "minimum": 1, "maximum": 65535}})  # fmt: skip
CONTAINER = _object(["name", "image"], {
    "name": DNS_LABEL,
    "image": {"type": "string", "minLength": 1, "maxLength": 1024},
    # In initContainers, Always makes a native sidecar; sidecars get it from the operator.
    "restartPolicy": {"type": "string", "enum": ["Always"]},
    "ports": {"type": "array", "maxItems": MAX_PORTS, "items": PORT},
    "securityContext": SECURITY_CONTEXT,
})  # fmt: skip
VOLUME = _object(["name"], {"name": DNS_LABEL})
VOLUME_MOUNT = _object(["name", "mountPath"], {"name": DNS_LABEL, "mountPath": PATH})
LOCAL_NAME = _object(["name"], {"name": {"type": "string", "minLength": 1, "maxLength": 253}})


def _string_map(max_value: int) -> dict[str, Any]:
    return {"type": "object", "maxProperties": MAX_LABELS,
            "additionalProperties": {"type": "string", "maxLength": max_value}}  # fmt: skip


def _ports(container: dict[str, Any]) -> list[dict[str, Any]]:
    return list(container.get("ports") or ())


def env_rule(field: str) -> Rule:
    return Rule(
        f"self.all(e, !(e.name in {_cel_list(RESERVED_ENV)}))",
        f"{field} may not set {', '.join(RESERVED_ENV)}: the operator sets them (the job's "
        "identity, topology and rank table)",
        lambda env: all(var.get("name") not in RESERVED_ENV for var in env),
    )


def pull_secrets_field() -> Any:
    return spec_field(
        (),
        schema=_named_list(LOCAL_NAME, MAX_CONTAINERS),
        description="Secrets (in the job's namespace) to pull the trainer's and the sidecars' "
        "images with, as a pod's imagePullSecrets: [{name: regcred}].",
    )


@dataclass(frozen=True)
class PodMetadata:
    labels: dict[str, str] = spec_field(
        {},
        schema=_string_map(63),
        rules=(
            Rule(
                f"self.all(k, !k.startsWith('{RESERVED_LABEL_PREFIX}') && k != '{MANAGED_BY_LABEL}')",
                f"podTemplate.metadata.labels may not use {RESERVED_LABEL_PREFIX}* or "
                f"{MANAGED_BY_LABEL}: the operator finds the job's pods by them",
                lambda labels: all(
                    not k.startswith(RESERVED_LABEL_PREFIX) and k != MANAGED_BY_LABEL
                    for k in labels
                ),
            ),
        ),
        description="Labels added to every pod (e.g. Kueue's queue, cost centres); the job's "
        "own labels win.",
    )
    annotations: dict[str, str] = spec_field(
        {},
        schema=_string_map(4096),
        description="Annotations added to every pod (e.g. sidecar.istio.io/inject); the "
        "operator's own win.",
    )


def _names(containers: tuple[dict[str, Any], ...]) -> set[str]:
    return {str(c.get("name")) for c in containers}


POD_RULES = (
    Rule(
        "!has(self.restartPolicy)",
        "podTemplate.spec.restartPolicy is the operator's: every pod is Never, and the operator "
        "restarts the whole gang (a kubelet restarting one rank would hang the others)",
        lambda pod: pod.restart_policy is None,
        field_path=".restartPolicy",
    ),
    Rule(
        f"!has(self.volumes) || self.volumes.all(v, !(v.name in {_cel_list(OPERATOR_VOLUMES)}))",
        f"podTemplate.spec.volumes may not be named {', '.join(OPERATOR_VOLUMES)}: those are "
        "the operator's volumes",
        lambda pod: not {v.get("name") for v in pod.volumes} & set(OPERATOR_VOLUMES),
        field_path=".volumes",
    ),
    Rule(
        f"(!has(self.sidecars) || self.sidecars.all(c, c.name != '{TRAINER_CONTAINER}')) && "
        f"(!has(self.initContainers) || self.initContainers.all(c, c.name != '{TRAINER_CONTAINER}'))",
        f"a sidecar or init container may not be named {TRAINER_CONTAINER}: that is the "
        "operator's trainer container",
        lambda pod: TRAINER_CONTAINER not in _names(pod.sidecars) | _names(pod.init_containers),
    ),
    Rule(
        "!has(self.sidecars) || !has(self.initContainers) || "
        "self.sidecars.all(s, !self.initContainers.exists(i, i.name == s.name))",
        "a sidecar and an init container may not share a name: both become init containers",
        lambda pod: not _names(pod.sidecars) & _names(pod.init_containers),
    ),
    Rule(
        "!has(self.hostNetwork) || !self.hostNetwork || ("
        + " && ".join(
            f"(!has(self.{cs}) || self.{cs}.all(c, !has(c.ports) || "
            "c.ports.all(p, !has(p.hostPort) || p.hostPort == p.containerPort)))"
            for cs in ("sidecars", "initContainers")
        )
        + ")",
        "with hostNetwork a container's port is the host's: hostPort must equal containerPort "
        "(or be left out)",
        lambda pod: (
            not pod.host_network
            or all(
                p.get("hostPort") in (None, p.get("containerPort"))
                for c in (*pod.sidecars, *pod.init_containers)
                for p in _ports(c)
            )
        ),
    ),
)


@dataclass(frozen=True)
class PodOverrides:
    host_network: bool = spec_field(
        False,
        description="Run the pods in the host's network namespace (common on Ascend clusters). "
        "The pod IP is then the node's: the rank table and MASTER_ADDR follow it, dnsPolicy "
        "becomes ClusterFirstWithHostNet, the rendezvous port (network.masterPort) is a host "
        "port, so the scheduler puts one pod of the job on a node.",
    )
    host_ipc: bool = spec_field(False, key="hostIPC", description="Share the host's IPC namespace.")
    runtime_class_name: str | None = spec_field(
        None, max_length=253, pattern="^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="The RuntimeClass of the pods (e.g. an NPU or GPU container runtime).",
    )  # fmt: skip
    security_context: dict[str, Any] | None = spec_field(
        None,
        schema=FREE_FORM,
        description="The pod's securityContext, merged key by key over the operator's default "
        "(docs/security.md).",
    )
    volumes: tuple[dict[str, Any], ...] = spec_field(
        (),
        schema=_named_list(VOLUME, MAX_VOLUMES),
        description="Extra volumes (any Kubernetes volume); mount them in the trainer with "
        "podTemplate.trainer.volumeMounts, or in your sidecars.",
    )
    init_containers: tuple[dict[str, Any], ...] = spec_field(
        (),
        schema=_named_list(CONTAINER, MAX_CONTAINERS),
        description="Init containers, run before the trainer (restartPolicy Always makes one a "
        "native sidecar).",
    )
    sidecars: tuple[dict[str, Any], ...] = spec_field(
        (),
        schema=_named_list(CONTAINER, MAX_CONTAINERS),
        description="Containers beside the trainer, run as native sidecars (init containers "
        "with restartPolicy Always, Kubernetes 1.29+): they start before it and are stopped "
        "when it ends, so the pod still completes.",
    )
    restart_policy: str | None = spec_field(
        None, max_length=16, description="Refused: the operator's (every pod is Never)."
    )

    RULES: ClassVar[tuple[Rule, ...]] = POD_RULES


@dataclass(frozen=True)
class TrainerOverrides:
    security_context: dict[str, Any] | None = spec_field(
        None,
        schema=SECURITY_CONTEXT,
        description="The trainer container's securityContext, merged key by key over the "
        "operator's default.",
    )
    volume_mounts: tuple[dict[str, Any], ...] = spec_field(
        (),
        schema={"type": "array", "maxItems": MAX_VOLUMES, "items": VOLUME_MOUNT},
        description="Mounts of podTemplate.spec.volumes in the trainer container.",
    )
    env_from: tuple[dict[str, Any], ...] = spec_field(
        (),
        schema={"type": "array", "maxItems": MAX_CONTAINERS, "items": FREE_FORM},
        description="Variables from ConfigMaps and Secrets ({configMapRef: {name}} or "
        "{secretRef: {name}}); the operator's variables and spec.env win over them.",
    )


@dataclass(frozen=True)
class PodTemplate:
    metadata: PodMetadata = spec_field(PodMetadata)
    spec: PodOverrides = spec_field(PodOverrides)
    trainer: TrainerOverrides = spec_field(TrainerOverrides)

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.trainer) || !has(self.trainer.volumeMounts) || "
            "self.trainer.volumeMounts.all(m, has(self.spec) && has(self.spec.volumes) && "
            "self.spec.volumes.exists(v, v.name == m.name))",
            "podTemplate.trainer.volumeMounts may mount only volumes of podTemplate.spec.volumes",
            lambda template: (
                {m.get("name") for m in template.trainer.volume_mounts}
                <= {v.get("name") for v in template.spec.volumes}
            ),
        ),
    )


@dataclass(frozen=True)
class NetworkPolicySettings:
    enabled: bool = spec_field(
        True,
        description="Make a NetworkPolicy for the job's pods: its ranks reach each other on "
        "every port; other ingress only as `ingress` allows.",
    )
    ingress: tuple[dict[str, Any], ...] = spec_field(
        (),
        schema={"type": "array", "maxItems": MAX_PORTS, "items": FREE_FORM},
        description="More ingress rules (NetworkPolicyIngressRule: from, ports).",
    )
    egress: tuple[dict[str, Any], ...] | None = spec_field(
        None,
        schema={"type": "array", "maxItems": MAX_PORTS, "items": FREE_FORM},
        description="Unset: egress is open. Set (even to []): egress is limited to the job's "
        "ranks, cluster DNS and these rules (NetworkPolicyEgressRule); allow the API server "
        "(the trainer reports progress) and your storage.",
    )


@dataclass(frozen=True)
class Network:
    master_port: int = spec_field(
        MASTER_PORT,
        minimum=1024,
        maximum=65535,
        description="torchrun's rendezvous port (PET_MASTER_PORT) and the Service's. With "
        "hostNetwork it is a port of the node: pick one free on your hosts.",
    )
    policy: NetworkPolicySettings = spec_field(NetworkPolicySettings)


def _mount_path_free(path: str, spec: Any) -> bool:
    taken = {*FIXED_MOUNT_PATHS, spec.checkpoint.path, spec.data.path}
    return path not in taken and not path.startswith(RANK_TABLE_DIR + "/")


def _container_ports(spec: Any) -> list[int]:
    pod = spec.pod_template.spec
    containers = (*pod.sidecars, *pod.init_containers)
    return [int(p.get("containerPort", 0)) for c in containers for p in _ports(c)]


_MOUNTS = "self.podTemplate.trainer.volumeMounts"
_CONTAINERS = ("self.podTemplate.spec.sidecars", "self.podTemplate.spec.initContainers")
# Rules over the whole spec (self: the spec): they compare overrides with other fields.
OVERRIDE_RULES = (
    Rule(
        f"!has({_MOUNTS}) || {_MOUNTS}.all(m, !(m.mountPath in {_cel_list(FIXED_MOUNT_PATHS)}) "
        f"&& !m.mountPath.startsWith('{RANK_TABLE_DIR}/') && m.mountPath != self.checkpoint.path "
        "&& !(has(self.data.path) && m.mountPath == self.data.path))",
        "podTemplate.trainer.volumeMounts may not mount at the operator's paths: the rank table, "
        f"{SHM_PATH}, the Ascend driver, data.path or checkpoint.path",
        lambda spec: all(
            _mount_path_free(m.get("mountPath", ""), spec)
            for m in spec.pod_template.trainer.volume_mounts
        ),
        field_path=".podTemplate.trainer.volumeMounts",
    ),
    Rule(
        " && ".join(
            f"(!has({cs}) || {cs}.all(c, !has(c.ports) || "
            "c.ports.all(p, p.containerPort != self.network.masterPort)))"
            for cs in _CONTAINERS
        ),
        "a sidecar or init container may not use network.masterPort: the trainer's rendezvous "
        "listens there, in the same network namespace",
        lambda spec: spec.network.master_port not in _container_ports(spec),
        field_path=".podTemplate.spec",
    ),
)
