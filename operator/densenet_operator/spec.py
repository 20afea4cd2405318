"""The DenseNetTraining spec: one typed, immutable model that is also the CRD's schema.

Every field, default, bound, enum and validation message is written here once (the recipe's
in densenet_contract.recipe, which the trainer shares). `densenet_operator.crd` generates the
CRD's OpenAPI schema and CEL rules from these classes into crds/ and the chart's copy, and
`parse_spec` applies the same defaults and checks to a body the API server never saw.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from densenet_contract import DEVICE_KINDS, DeviceKind, DeviceType, ModelName
from densenet_contract.recipe import Recipe
from densenet_contract.schema import Rule, SpecError, parse, spec_field

__all__ = ["Job", "JobRef", "SpecError", "TrainingSpec", "parse_job", "parse_spec"]

ASCEND_DEVICES_PER_REPLICA = (1, 2, 4, 8)
MAX_WORLD_SIZE = 16384
RESOURCE_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
FREE_FORM = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
# A volume source; `name` is declared only so that a CEL rule can refuse it.
VOLUME_SOURCE = {**FREE_FORM, "properties": {"name": {"type": "string"}}}
QUANTITIES = {
    "type": "object",
    "additionalProperties": {"anyOf": [{"type": "integer"}, {"type": "string"}],
                             "x-kubernetes-int-or-string": True},
}  # fmt: skip


def _immutable(field: str, why: str) -> str:
    return f"{field} is immutable: {why}"


def _unnamed_volume(field: str) -> tuple[Rule, ...]:
    """A volume source has no name of its own: the operator names it (a user's name could
    collide with the pod's own volumes, e.g. rank-table, and fail every pod create)."""
    return (
        Rule(
            "!has(self.name)",
            f"{field} is a volume source such as {{persistentVolumeClaim: {{claimName: ...}}}}, "
            "without a name: the operator names the volume",
            lambda volume: volume is None or "name" not in volume,
        ),
    )


@dataclass(frozen=True)
class Device:
    type: DeviceType = spec_field(
        "ascend",
        description="ascend (torch_npu, HCCL), cuda (NCCL) or cpu (gloo).",
        immutable="device.type is immutable",
    )
    resource_name: str | None = spec_field(
        None,
        max_length=253,
        pattern=RESOURCE_NAME_PATTERN,
        description="Extended resource each pod requests devicesPerReplica of. Defaults to "
        "huawei.com/Ascend910 for ascend and nvidia.com/gpu for cuda; cpu requests none.",
    )


@dataclass(frozen=True)
class Data:
    synthetic: bool = spec_field(False)
    path: str | None = spec_field(
        None, pattern="^/", description="Directory in the container holding train/ and val/."
    )
    volume: dict[str, Any] | None = spec_field(
        None,
        schema=VOLUME_SOURCE,
        rules=_unnamed_volume("data.volume"),
        description="Any Kubernetes volume source (persistentVolumeClaim, nfs, hostPath, ...), "
        "mounted read-only at path.",
    )

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.synthetic || has(self.path)",
            "data.path is required unless data.synthetic is true",
            lambda data: data.synthetic or bool(data.path),
        ),
    )


@dataclass(frozen=True)
class Checkpoint:
    path: str = spec_field(
        "/checkpoints",
        pattern="^/",
        description="Directory for checkpoints; each job writes under <path>/<job name>.",
    )
    volume: dict[str, Any] | None = spec_field(
        None,
        schema=VOLUME_SOURCE,
        rules=_unnamed_volume("checkpoint.volume"),
        description="Any Kubernetes volume source for checkpoints (a PVC, so that restarts "
        "resume). Without one, an emptyDir is used and checkpoints die with the pod.",
    )


RankTableFormat = Literal["1.0", "0.1"]


@dataclass(frozen=True)
class RankTable:
    format: RankTableFormat = spec_field(
        "1.0", description='"1.0" (server_list, the default) or the legacy "0.1" (group_list).'
    )


@dataclass(frozen=True)
class RunPolicy:
    backoff_limit: int = spec_field(
        3, minimum=0, maximum=1000, description="Gang restarts before the job is Failed."
    )
    restart_policy: Literal["ExitCode", "OnFailure", "Never"] = spec_field(
        "ExitCode",
        description="ExitCode: restart the gang on retryable exits (signals, 128+), fail at "
        "once on permanent ones (1-127); OnFailure: restart on any failure; Never: fail on "
        "any failure.",
    )
    retryable_exit_codes: tuple[int, ...] = spec_field(
        (),
        schema={"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 255}},
        description="Exit codes in 1-127 to treat as retryable under ExitCode, e.g. a "
        "communication-error code of your script.",
    )
    active_deadline_seconds: int | None = spec_field(
        None, minimum=1, description="Fail the job when it has run this long."
    )
    ttl_seconds_after_finished: int | None = spec_field(
        None, minimum=0, description="Delete the job this long after it finished."
    )
    clean_pod_policy: Literal["All", "Running", "None"] = spec_field(
        "Running",
        description="Pods deleted when the job finishes: All, Running (only those still "
        "running) or None.",
    )
    suspend: bool = spec_field(
        False, description="true deletes the pods and keeps the job; false brings the gang back."
    )


@dataclass(frozen=True)
class Scheduling:
    node_selector: dict[str, str] = spec_field({})
    tolerations: tuple[dict[str, Any], ...] = spec_field(
        (), schema={"type": "array", "items": FREE_FORM}
    )
    affinity: dict[str, Any] | None = spec_field(None, schema=FREE_FORM)
    scheduler_name: str | None = spec_field(None, max_length=253)
    queue: str | None = spec_field(
        None, max_length=253, description="Volcano queue when schedulerName is volcano."
    )
    priority_class_name: str | None = spec_field(None, max_length=253)
    resources: dict[str, Any] = spec_field(
        {},
        schema={"type": "object", "properties": {"requests": QUANTITIES, "limits": QUANTITIES}},
        description="cpu/memory requests and limits of the trainer container; the device "
        "resource is added by the operator.",
    )


ENV_VAR_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["name"],
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {"name": {"type": "string", "minLength": 1}},
    },
}


@dataclass(frozen=True)
class TrainingSpec:
    model: ModelName = spec_field(
        description="The torchvision DenseNet to train.",
        immutable=_immutable("model", "create a new DenseNetTraining to train another model"),
    )
    data: Data = spec_field(description="Where the ImageFolder (train/, val/) lives, or synthetic data.")  # fmt: skip
    replicas: int = spec_field(
        1,
        minimum=1,
        maximum=4096,
        description="Pods (servers) in the job; each runs devicesPerReplica ranks.",
        immutable=_immutable("replicas", "the rank table and the world size depend on it"),
    )
    devices_per_replica: int = spec_field(
        8,
        minimum=1,
        maximum=64,
        description="Devices (ranks) per pod. Ascend 910 takes 1, 2, 4 or 8.",
        immutable=_immutable("devicesPerReplica", "the rank table and the world size depend on it"),
    )
    device: Device = spec_field(Device)
    image: str | None = spec_field(
        None,
        min_length=1,
        description="Trainer image. Defaults to the operator's configured trainer image.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = spec_field("IfNotPresent")
    recipe: Recipe = spec_field(
        Recipe,
        description="The training recipe; defaults are the DenseNet-161 seed's (SGD 0.1, "
        "momentum 0.9, wd 1e-4, step 30 x 0.1).",
    )
    checkpoint: Checkpoint = spec_field(Checkpoint)
    rank_table: RankTable = spec_field(RankTable)
    run_policy: RunPolicy = spec_field(RunPolicy)
    scheduling: Scheduling = spec_field(Scheduling)
    env: tuple[dict[str, Any], ...] = spec_field(
        (), schema=ENV_VAR_SCHEMA, description="Extra environment variables for the trainer container."
    )  # fmt: skip

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.device.type != 'ascend' || self.devicesPerReplica in [1, 2, 4, 8]",
            "devicesPerReplica must be 1, 2, 4 or 8 for Ascend 910: a server has 8 chips in "
            "two HCCS rings of 4",
            lambda spec: (
                spec.device.type != "ascend"
                or spec.devices_per_replica in ASCEND_DEVICES_PER_REPLICA
            ),
            field_path=".devicesPerReplica",
        ),
        Rule(
            f"self.replicas * self.devicesPerReplica <= {MAX_WORLD_SIZE}",
            f"replicas x devicesPerReplica (the world size) must be at most {MAX_WORLD_SIZE}",
            lambda spec: spec.world_size <= MAX_WORLD_SIZE,
            field_path=".replicas",
        ),
    )

    @property
    def world_size(self) -> int:
        return self.replicas * self.devices_per_replica

    @property
    def device_kind(self) -> DeviceKind:
        return DEVICE_KINDS[self.device.type]

    @property
    def device_type(self) -> str:
        return self.device.type

    @property
    def resource_name(self) -> str | None:
        return self.device.resource_name or self.device_kind.resource_name

    @property
    def uses_rank_table(self) -> bool:
        """HCCL reads the rank table; NCCL and gloo rendezvous through MASTER_ADDR."""
        return self.device_kind.uses_rank_table

    @property
    def rank_table_format(self) -> str:
        return self.rank_table.format


@dataclass(frozen=True)
class JobRef:
    """Who the job is: what owner references and labels need."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class Job:
    """A DenseNetTraining as the operator sees it: identity, parsed spec, generation."""

    ref: JobRef
    spec: TrainingSpec
    generation: int = 0


def parse_spec(body: dict[str, Any], *, default_image: str) -> TrainingSpec:
    """A DenseNetTraining spec (as served, or not yet defaulted) as a TrainingSpec, with the
    two defaults only the operator knows: its trainer image, and mixed precision by device."""
    spec: TrainingSpec = parse(TrainingSpec, body, "spec")
    recipe = spec.recipe
    if recipe.mixed_precision is None:
        # On for NPUs and GPUs, off for CPUs (bf16 autocast is ~11x slower there).
        recipe = dataclasses.replace(recipe, mixed_precision=spec.device.type != "cpu")
    return dataclasses.replace(spec, image=spec.image or default_image, recipe=recipe)


def parse_job(body: dict[str, Any], *, default_image: str) -> Job:
    meta = body["metadata"]
    return Job(
        ref=JobRef(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"]),
        spec=parse_spec(body.get("spec") or {}, default_image=default_image),
        generation=int(meta.get("generation", 0)),
    )
