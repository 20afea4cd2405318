"""The DenseNetTraining spec, parsed once into a typed, immutable model.

The CRD schema (crds/) carries the defaults and the server-side validation; the API server
applies them before the operator sees a resource. The defaults below repeat the schema's so
that a body read without server-side defaulting (a unit test, a dry run) parses the same;
tests/operator/test_spec.py checks both against the real API server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

GROUP = "training.densenet.dev"
VERSION = "v1alpha1"
PLURAL = "densenettrainings"
KIND = "DenseNetTraining"
API_VERSION = f"{GROUP}/{VERSION}"

DeviceType = Literal["ascend", "cuda", "cpu"]
RankTableFormat = Literal["1.0", "0.1"]

DEFAULT_RESOURCE_NAMES: dict[str, str | None] = {
    "ascend": "huawei.com/Ascend910",
    "cuda": "nvidia.com/gpu",
    "cpu": None,
}
# The trainer's --device for each device type.
TRAINER_DEVICES = {"ascend": "npu", "cuda": "cuda", "cpu": "cpu"}
ASCEND_DEVICES_PER_REPLICA = (1, 2, 4, 8)
MODELS = ("densenet121", "densenet161", "densenet169", "densenet201")


class SpecError(ValueError):
    """A spec the operator cannot act on (the CRD schema refuses most of these earlier)."""


@dataclass(frozen=True)
class LrSchedule:
    type: Literal["step", "cosine"] = "step"
    step_size: int = 30
    gamma: float = 0.1


@dataclass(frozen=True)
class Recipe:
    epochs: int = 90
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: LrSchedule = field(default_factory=LrSchedule)
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    mixed_precision: bool = True
    mode: str = "train_and_evaluate"
    max_steps: int | None = None
    workers: int = 8
    print_freq: int = 10
    image_size: int = 224
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Data:
    synthetic: bool = False
    path: str | None = None
    volume: dict[str, Any] | None = None


@dataclass(frozen=True)
class Checkpoint:
    path: str = "/checkpoints"
    volume: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunPolicy:
    backoff_limit: int = 3
    restart_policy: Literal["ExitCode", "OnFailure", "Never"] = "ExitCode"
    retryable_exit_codes: tuple[int, ...] = ()
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = None
    clean_pod_policy: Literal["All", "Running", "None"] = "Running"
    suspend: bool = False


@dataclass(frozen=True)
class Scheduling:
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] | None = None
    scheduler_name: str | None = None
    queue: str | None = None
    priority_class_name: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobRef:
    """Who the job is: what owner references and labels need."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class TrainingSpec:
    model: str
    replicas: int
    devices_per_replica: int
    device_type: DeviceType
    resource_name: str | None
    image: str
    image_pull_policy: str
    data: Data
    recipe: Recipe
    checkpoint: Checkpoint
    rank_table_format: RankTableFormat
    run_policy: RunPolicy
    scheduling: Scheduling
    env: tuple[dict[str, Any], ...] = ()

    @property
    def world_size(self) -> int:
        return self.replicas * self.devices_per_replica

    @property
    def uses_rank_table(self) -> bool:
        """HCCL reads the rank table; NCCL and gloo rendezvous through MASTER_ADDR."""
        return self.device_type == "ascend"


@dataclass(frozen=True)
class Job:
    """A DenseNetTraining as the operator sees it: identity, parsed spec, generation."""

    ref: JobRef
    spec: TrainingSpec
    generation: int = 0


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def parse_spec(spec: dict[str, Any], *, default_image: str) -> TrainingSpec:
    """Parses a DenseNetTraining spec (as served, i.e. already defaulted by the schema)."""
    device = spec.get("device") or {}
    device_type = device.get("type", "ascend")
    if device_type not in DEFAULT_RESOURCE_NAMES:
        raise SpecError(f"device.type {device_type!r} is not one of ascend, cuda, cpu")
    model = spec.get("model", "densenet161")
    if model not in MODELS:
        raise SpecError(f"model {model!r} is not one of {', '.join(MODELS)}")
    replicas = int(spec.get("replicas", 1))
    devices_per_replica = int(spec.get("devicesPerReplica", 8))
    if replicas < 1 or devices_per_replica < 1:
        raise SpecError("replicas and devicesPerReplica must be at least 1")
    if device_type == "ascend" and devices_per_replica not in ASCEND_DEVICES_PER_REPLICA:
        raise SpecError("devicesPerReplica must be 1, 2, 4 or 8 for Ascend 910")

    data = spec.get("data") or {}
    if not data.get("synthetic", False) and not data.get("path"):
        raise SpecError("data.path is required unless data.synthetic is true")

    recipe = spec.get("recipe") or {}
    schedule = recipe.get("lrSchedule") or {}
    checkpoint = spec.get("checkpoint") or {}
    run_policy = spec.get("runPolicy") or {}
    scheduling = spec.get("scheduling") or {}
    return TrainingSpec(
        model=model,
        replicas=replicas,
        devices_per_replica=devices_per_replica,
        device_type=device_type,
        resource_name=device.get("resourceName") or DEFAULT_RESOURCE_NAMES[device_type],
        image=spec.get("image") or default_image,
        image_pull_policy=spec.get("imagePullPolicy", "IfNotPresent"),
        data=Data(
            synthetic=bool(data.get("synthetic", False)),
            path=data.get("path"),
            volume=data.get("volume"),
        ),
        recipe=Recipe(
            epochs=int(recipe.get("epochs", 90)),
            batch_size=int(recipe.get("batchSize", 128)),
            lr=float(recipe.get("lr", 0.1)),
            momentum=float(recipe.get("momentum", 0.9)),
            weight_decay=float(recipe.get("weightDecay", 1e-4)),
            lr_schedule=LrSchedule(
                type=schedule.get("type", "step"),
                step_size=int(schedule.get("stepSize", 30)),
                gamma=float(schedule.get("gamma", 0.1)),
            ),
            warmup_epochs=int(recipe.get("warmupEpochs", 0)),
            label_smoothing=float(recipe.get("labelSmoothing", 0.0)),
            # Unset: on for NPUs and GPUs, off for CPUs (bf16 autocast is ~11x slower there).
            mixed_precision=bool(recipe.get("mixedPrecision", device_type != "cpu")),
            mode=recipe.get("mode", "train_and_evaluate"),
            max_steps=_int_or_none(recipe.get("maxSteps")),
            workers=int(recipe.get("workers", 8)),
            print_freq=int(recipe.get("printFreq", 10)),
            image_size=int(recipe.get("imageSize", 224)),
            extra_args=tuple(recipe.get("extraArgs") or ()),
        ),
        checkpoint=Checkpoint(
            path=checkpoint.get("path", "/checkpoints"),
            volume=checkpoint.get("volume"),
        ),
        rank_table_format=str((spec.get("rankTable") or {}).get("format", "1.0")),  # type: ignore[arg-type]
        run_policy=RunPolicy(
            backoff_limit=int(run_policy.get("backoffLimit", 3)),
            restart_policy=run_policy.get("restartPolicy", "ExitCode"),
            retryable_exit_codes=tuple(run_policy.get("retryableExitCodes") or ()),
            active_deadline_seconds=_int_or_none(run_policy.get("activeDeadlineSeconds")),
            ttl_seconds_after_finished=_int_or_none(run_policy.get("ttlSecondsAfterFinished")),
            clean_pod_policy=run_policy.get("cleanPodPolicy", "Running"),
            suspend=bool(run_policy.get("suspend", False)),
        ),
        scheduling=Scheduling(
            node_selector=dict(scheduling.get("nodeSelector") or {}),
            tolerations=tuple(scheduling.get("tolerations") or ()),
            affinity=scheduling.get("affinity"),
            scheduler_name=scheduling.get("schedulerName"),
            queue=scheduling.get("queue"),
            priority_class_name=scheduling.get("priorityClassName"),
            resources=dict(scheduling.get("resources") or {}),
        ),
        env=tuple(spec.get("env") or ()),
    )


def parse_job(body: dict[str, Any], *, default_image: str) -> Job:
    meta = body["metadata"]
    return Job(
        ref=JobRef(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"]),
        spec=parse_spec(body.get("spec") or {}, default_image=default_image),
        generation=int(meta.get("generation", 0)),
    )
