"""The DenseNetTraining spec: one typed, immutable model that is also the CRD's schema.

Every field, default, bound, enum and validation message is written here once (the recipe's
in densenet_contract.recipe, which the trainer shares). `densenet_operator.crd` generates the
CRD's OpenAPI schema and CEL rules from these classes into crds/ and the chart's copy, and
`parse_spec` applies the same defaults and checks to a body the API server never saw.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from densenet_contract import DEVICE_KINDS, DeviceKind, DeviceType, ModelName, cann
from densenet_contract.recipe import Recipe
from densenet_contract.schema import Rule, SpecError, parse, spec_field
from densenet_operator.ascend.products import PRODUCTS, Product, ProductName
from densenet_operator.ascend.rules import DEVICES_RULES, SUPER_POD_RULES
from densenet_operator.podtemplate import (
    OVERRIDE_RULES,
    RESERVED_ENV,
    Network,
    PodTemplate,
    env_rule,
    pull_secrets_field,
)
from densenet_operator.settings import TrainerDefaults

__all__ = ["Job", "JobRef", "ParsedJobs", "SpecError", "TrainingSpec", "parse_job", "parse_spec"]

MAX_WORLD_SIZE = 16384
# A graceful stop is one step, a checkpoint write and about 2 s of teardown. A DenseNet-161
# checkpoint (weights + SGD momentum, fp32) is 230.8 MB: 0.24 s to local disk here, about 8 s to
# slow shared storage (30 MB/s). Two minutes leave room for a slow first step or an evaluation,
# which a stop waits out.
DEFAULT_GRACE_SECONDS = 120
DEFAULT_PROGRESS_DEADLINE_SECONDS = 600
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


def _volume_source(field: str, description: str) -> Any:
    """An optional volume source. It carries no name of its own: the operator names it (a
    user's name could collide with the pod's own volumes, e.g. rank-table, and fail every
    pod create)."""
    unnamed = Rule(
        "!has(self.name)",
        f"{field} is a volume source such as {{persistentVolumeClaim: {{claimName: ...}}}}, "
        "without a name: the operator names the volume",
        lambda volume: volume is None or "name" not in volume,
    )
    return spec_field(None, schema=VOLUME_SOURCE, rules=(unnamed,), description=description)


@dataclass(frozen=True)
class AscendDevice:
    product: ProductName = spec_field(
        "910",
        description="The Ascend system: 910 (Atlas 800, 8 chips in two HCCS rings), 910b (Atlas "
        "800T A2, 8 chips), 910b-16 (16-chip A2 servers), a3 (Atlas 900 A3, 16 NPUs per node), "
        "a3-superpod (Atlas 900 A3 SuperPoD: rank table 1.2). Decides the node selector "
        "(accelerator-type), the devices a pod may take and the rank-table version.",
    )
    super_pod_block: int | None = spec_field(
        None,
        minimum=1,
        maximum=MAX_WORLD_SIZE,
        description="a3-superpod: NPUs per logical super pod (Volcano's sp-block). Default: the "
        "whole job in one.",
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
    ascend: AscendDevice = spec_field(AscendDevice)


@dataclass(frozen=True)
class Data:
    synthetic: bool = spec_field(False)
    path: str | None = spec_field(
        None, pattern="^/", description="Directory in the container holding train/ and val/."
    )
    volume: dict[str, Any] | None = _volume_source(
        "data.volume",
        "Any Kubernetes volume source (persistentVolumeClaim, nfs, hostPath, ...), mounted "
        "read-only at path.",
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
    volume: dict[str, Any] | None = _volume_source(
        "checkpoint.volume",
        "Any Kubernetes volume source for checkpoints (a PVC, so that restarts resume). "
        "Without one, an emptyDir is used and checkpoints die with the pod.",
    )


RankTableFormat = Literal["1.0", "1.2", "0.1"]


@dataclass(frozen=True)
class RankTable:
    format: RankTableFormat | None = spec_field(
        None,
        description='"1.0" (server_list), "1.2" (server_list with super pods: A3 SuperPoD) or '
        'the legacy "0.1" (group_list). Default: the product\'s, 1.2 on a3-superpod, else 1.0.',
    )
    host_ip: bool | None = spec_field(
        None,
        description="Write each server's host_ip (the node's IP) into the table, as "
        "ascend-operator does since MindCluster 7.2.RC1. HCCL before CANN "
        f'{cann.HOST_IP_SINCE_CANN} reads a valid host_ip as "the NICs are on the host": '
        "set false for a trainer image on an older CANN. Default: the operator's setting, "
        "from the CANN of the product's trainer image.",
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
    termination_grace_period_seconds: int = spec_field(
        DEFAULT_GRACE_SECONDS,
        minimum=0,
        maximum=3600,
        description="The pods' terminationGracePeriodSeconds: on SIGTERM (deletion, eviction, "
        "preemption, suspend, a gang restart) every rank finishes its step and rank 0 writes a "
        "checkpoint within it. The default leaves room for a DenseNet-161 checkpoint on slow "
        "shared storage.",
    )
    progress_deadline_seconds: int | None = spec_field(
        None,
        minimum=1,
        description="A Running job whose trainer reports no progress for this long while "
        "training is Stalled (condition and event). Default: from the measured step time, at "
        f"least {DEFAULT_PROGRESS_DEADLINE_SECONDS} s. Never while starting, evaluating or "
        "writing a checkpoint.",
    )
    on_stall: Literal["Report", "RestartAsDisruption", "RestartAsFailure"] = spec_field(
        "Report",
        description="What a stall does: Report only; restart the gang as a disruption (not "
        "counted against backoffLimit), or as a failure (counted).",
    )


GangMode = Literal["auto", "native", "volcano", "none"]


@dataclass(frozen=True)
class Scheduling:
    gang: GangMode = spec_field(
        "auto",
        description="How the pods start all together or not at all: native (Kubernetes "
        "1.37+ Workload and PodGroups, kube-scheduler's GangScheduling), volcano (a Volcano "
        "PodGroup; the pods go to the volcano scheduler, whatever schedulerName says) or none. auto: volcano when "
        "schedulerName is volcano, else native where the cluster serves scheduling.k8s.io/"
        "v1beta1 and the pods go to the default scheduler, else none.",
        immutable=_immutable("scheduling.gang", "the job's gang objects are made once"),
    )
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
    "maxItems": 128,
    "items": {
        "type": "object",
        "required": ["name"],
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 256}},
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
        description="Trainer image. Defaults to the operator's trainer image for the job: on "
        "ascend the one of the product's family (910, 910b or a3 kernels), else the cpu/cuda one.",
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
        (),
        schema=ENV_VAR_SCHEMA,
        rules=(env_rule("env"),),
        description="Extra environment variables for the trainer container (not those the "
        f"operator sets: {', '.join(RESERVED_ENV)}).",
    )
    image_pull_secrets: tuple[dict[str, Any], ...] = pull_secrets_field()
    pod_template: PodTemplate = spec_field(
        PodTemplate,
        description="Additions to every pod of the job (labels, annotations, security context, "
        "volumes, init containers, sidecars, host network...), merged onto the operator's pod: "
        "the operator's own fields win where changing them would break the job (README: Pod "
        "overrides).",
    )
    network: Network = spec_field(
        Network,
        description="The rendezvous port and the job's NetworkPolicy.",
        immutable="network is immutable: the job's Service and NetworkPolicy are made once",
    )

    RULES: ClassVar[tuple[Rule, ...]] = (
        *DEVICES_RULES,
        *SUPER_POD_RULES,
        *OVERRIDE_RULES,
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
    def product(self) -> Product:
        return PRODUCTS[self.device.ascend.product]

    @property
    def super_pod_block(self) -> int:
        """NPUs per logical super pod (A3 super pods): the whole job unless set."""
        return self.device.ascend.super_pod_block or self.world_size

    @property
    def rank_table_format(self) -> str:
        return self.rank_table.format or self.product.rank_table_version

    @property
    def rank_table_host_ip(self) -> bool:
        """Whether the rank table carries host_ip: spec.rankTable.hostIp, else the operator's
        default that parse_spec filled in (True when unparsed, as ascend-operator writes it)."""
        return self.rank_table.host_ip is not False


@dataclass(frozen=True)
class JobRef:
    """Who the job is: what owner references and labels need."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class Job:
    """A DenseNetTraining as the operator sees it: identity, parsed spec, generation, and its
    labels (a queue's label, e.g., makes it that queue's: backends.py)."""

    ref: JobRef
    spec: TrainingSpec
    generation: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)


def parse_spec(body: dict[str, Any], *, defaults: TrainerDefaults) -> TrainingSpec:
    """A DenseNetTraining spec (as served, or not yet defaulted) as a TrainingSpec, with the
    defaults only the operator knows: the trainer image and rank-table host_ip for the job's
    device and product, the gang backend `gang: auto` means on this cluster (`defaults`), and
    mixed precision by device."""
    spec: TrainingSpec = parse(TrainingSpec, body, "spec")
    recipe = spec.recipe
    if recipe.mixed_precision is None:
        # On for NPUs and GPUs, off for CPUs (bf16 autocast is ~11x slower there).
        recipe = dataclasses.replace(recipe, mixed_precision=spec.device.type != "cpu")
    product = spec.device.ascend.product
    image = spec.image or defaults.image_for(spec.device.type, product)
    scheduling = spec.scheduling
    if scheduling.gang == "auto":
        gang = defaults.auto_gangs.get(scheduling.scheduler_name, "none")
        scheduling = dataclasses.replace(scheduling, gang=gang)  # type: ignore[arg-type]
    rank_table = spec.rank_table
    if rank_table.host_ip is None:
        host_ip = defaults.rank_table_host_ip_for(product)
        rank_table = dataclasses.replace(rank_table, host_ip=host_ip)
    return dataclasses.replace(
        spec, image=image, recipe=recipe, rank_table=rank_table, scheduling=scheduling
    )


def parse_job(body: dict[str, Any], *, defaults: TrainerDefaults) -> Job:
    meta = body["metadata"]
    return Job(
        ref=JobRef(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"]),
        spec=parse_spec(body.get("spec") or {}, defaults=defaults),
        generation=int(meta.get("generation", 0)),
        labels=dict(meta.get("labels") or {}),
    )


@dataclass
class ParsedJobs:
    """parse_job once per spec: every pass over a job parses the same body again (a pod's
    event, a status write, a timer), and the parse was 7.6 % of the operator's CPU in a
    100-job wave. A job's Job is reused while its generation and its spec are what they were
    when parsed; the spec and the labels are compared as well as the generation because the
    API server applies a newly installed CRD's defaults on read without bumping the
    generation, and labels change without it.
    A spec the parse refuses is not kept: it raises again."""

    defaults: TrainerDefaults
    parsed: dict[str, tuple[int, dict[str, Any], Job]] = field(default_factory=dict)

    def parse(self, body: dict[str, Any]) -> Job:
        meta = body["metadata"]
        spec = body.get("spec") or {}
        generation = int(meta.get("generation", 0))
        kept = self.parsed.get(meta["uid"])
        labels = meta.get("labels") or {}
        if (
            kept is not None
            and kept[0] == generation
            and kept[1] == spec
            and kept[2].labels == labels
        ):
            return kept[2]
        job = parse_job(body, defaults=self.defaults)
        # A copy: the Job's dicts may be the body's, and kopf owns the body.
        self.parsed[job.ref.uid] = (generation, copy.deepcopy(spec), job)
        return job

    def forget(self, uid: str) -> None:
        self.parsed.pop(uid, None)
