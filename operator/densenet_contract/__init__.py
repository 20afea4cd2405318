"""The operator <-> trainer contract: what both sides must agree on, in one place.

Standard library only, so the operator image (no torch) and the trainer image (no kopf) both
import it. docs/contract.md is generated from this package (`python -m densenet_contract`),
and a test fails when the page and the package disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

# ---------------------------------------------------------------- the resource

GROUP = "training.densenet.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "DenseNetTraining"
PLURAL = "densenettrainings"
SINGULAR = "densenettraining"
SHORT_NAMES = ("dnt",)
CRD_NAME = f"{PLURAL}.{GROUP}"
MERGE_PATCH = "application/merge-patch+json"

ModelName = Literal["densenet121", "densenet161", "densenet169", "densenet201"]
MODELS: tuple[str, ...] = get_args(ModelName)

# ---------------------------------------------------------------- devices


@dataclass(frozen=True)
class DeviceKind:
    """One value of spec.device.type and what it means on each side."""

    type: str  # spec.device.type
    torch_device: str  # the trainer's --device and torch.device type
    backend: str  # torch.distributed backend
    resource_name: str | None  # extended resource a pod requests, None: no device resource
    uses_rank_table: bool  # HCCL reads RANK_TABLE_FILE; NCCL and gloo rendezvous via MASTER_ADDR


DEVICE_KINDS: dict[str, DeviceKind] = {
    kind.type: kind
    for kind in (
        DeviceKind("ascend", "npu", "hccl", "huawei.com/Ascend910", uses_rank_table=True),
        DeviceKind("cuda", "cuda", "nccl", "nvidia.com/gpu", uses_rank_table=False),
        DeviceKind("cpu", "cpu", "gloo", None, uses_rank_table=False),
    )
}
DeviceType = Literal["ascend", "cuda", "cpu"]
DEVICE_TYPES: tuple[str, ...] = get_args(DeviceType)
assert tuple(DEVICE_KINDS) == DEVICE_TYPES
BACKEND_BY_TORCH_DEVICE = {kind.torch_device: kind.backend for kind in DEVICE_KINDS.values()}
TORCH_DEVICES = tuple(BACKEND_BY_TORCH_DEVICE)

# ---------------------------------------------------------------- the pod

TRAINER_CONTAINER = "trainer"
TRAINER_COMMAND = ("densenet-train", "launch")
MASTER_PORT = 29500
RANK_TABLE_DIR = "/user/serverid/devindex/config"
RANK_TABLE_KEY = "hccl.json"
RANK_TABLE_FILE = f"{RANK_TABLE_DIR}/{RANK_TABLE_KEY}"
RANK_TABLE_INITIALIZING = "initializing"
RANK_TABLE_COMPLETED = "completed"
# Jobs on cuda or cpu rendezvous through MASTER_ADDR; their ConfigMap says so instead.
RANK_TABLE_NOT_REQUIRED = "not-required"


def rank_table_configmap(job: str) -> str:
    """The job's rank-table ConfigMap (ascend-operator's name): the operator writes it, the
    pods mount it and the launcher watches it."""
    return f"rings-config-{job}"


class Env:
    """Environment variables the operator sets in the trainer container."""

    JOB_NAME = "DENSENET_JOB_NAME"
    JOB_NAMESPACE = "DENSENET_JOB_NAMESPACE"
    POD_NAME = "POD_NAME"
    POD_IP = "POD_IP"
    # torchrun (torch.distributed.run) reads each of its options from PET_<OPTION>.
    NNODES = "PET_NNODES"
    NODE_RANK = "PET_NODE_RANK"
    NPROC_PER_NODE = "PET_NPROC_PER_NODE"
    MASTER_ADDR = "PET_MASTER_ADDR"
    MASTER_PORT = "PET_MASTER_PORT"
    RANK_TABLE_FILE = "RANK_TABLE_FILE"  # Ascend jobs only: the launcher waits for it
    HCCL_IF_IP = "HCCL_IF_IP"  # Ascend jobs only: the pod IP (downward API)
    HCCL_LOGIC_SUPERPOD_ID = "HCCL_LOGIC_SUPERPOD_ID"  # Ascend: the replica's logical super pod
    ASCEND_VISIBLE_DEVICES = "ASCEND_VISIBLE_DEVICES"  # Ascend under Volcano: its chips


# Fixed HCCL settings of Ascend jobs: no IP allow-list inside the job; torch_npu warns below
# a 300 s connect timeout, and large gangs need the margin.
HCCL_ENV = {"HCCL_WHITELIST_DISABLE": "1", "HCCL_CONNECT_TIMEOUT": "600"}

ENV_MEANINGS: dict[str, str] = {
    Env.JOB_NAME: "the job's name (the progress reporter patches this resource)",
    Env.JOB_NAMESPACE: "the job's namespace (downward API)",
    Env.POD_NAME: "the pod's name (downward API)",
    Env.POD_IP: "the pod's IP (downward API)",
    Env.NNODES: "torchrun --nnodes: the job's replicas",
    Env.NODE_RANK: "torchrun --node-rank: this pod's replica index",
    Env.NPROC_PER_NODE: "torchrun --nproc-per-node: devices per replica",
    Env.MASTER_ADDR: "torchrun --master-addr: `<job>-worker-0.<job>` (headless Service `<job>`)",
    Env.MASTER_PORT: f"torchrun --master-port: `spec.network.masterPort` (default {MASTER_PORT})",
    Env.RANK_TABLE_FILE: f"ascend only: `{RANK_TABLE_FILE}` (ConfigMap `rings-config-<job>`, "
    f"key `{RANK_TABLE_KEY}`); the launcher watches that ConfigMap through the API until "
    "the table is `completed` and lists the pod's IP, then points RANK_TABLE_FILE at a local "
    "copy for HCCL (the mounted file is the fallback)",
    Env.HCCL_IF_IP: "ascend only: the pod IP (downward API)",
    Env.HCCL_LOGIC_SUPERPOD_ID: "ascend only: the replica's logical super pod on A3 super pods "
    "(replicas fill blocks of `device.ascend.superPodBlock` NPUs), else `0`",
    Env.ASCEND_VISIBLE_DEVICES: "ascend under Volcano: the pod annotation `huawei.com/Ascend910` "
    "(downward API), where the device plugin finds the pod's chips",
    **{name: f"ascend only: `{value}`" for name, value in HCCL_ENV.items()},
}

# The trainer's exit code after a graceful stop (SIGTERM: it finished its step and saved a
# checkpoint): sysexits' EX_TEMPFAIL, "try again". The operator counts it as a disruption,
# never as a failure of the user's code.
EXIT_STOPPED_ON_REQUEST = 75

# ---------------------------------------------------------------- status.training


@dataclass(frozen=True)
class TrainingField:
    name: str
    type: type  # int, float or str
    meaning: str
    decimals: int | None = None  # floats: digits kept (kubectl shows 3650.2, not 17 digits)
    format: str | None = None  # OpenAPI format
    max_length: int | None = None  # strings: the API server refuses longer ones


TRAINING_FIELDS: dict[str, TrainingField] = {
    f.name: f
    for f in (
        TrainingField("epoch", int, "epochs completed (0 while the first runs)"),
        TrainingField("totalEpochs", int, "the recipe's epochs"),
        TrainingField("step", int, "global optimizer steps"),
        TrainingField("fps", float, "images/s over all ranks, after warm-up", decimals=1),
        TrainingField(
            "dataWaitShare", float, "share (0..1) of step time spent waiting for data", decimals=3
        ),
        TrainingField("loss", float, "last logged training loss", decimals=4),
        TrainingField("lr", float, "last logged learning rate"),
        TrainingField("acc1", float, "Acc@1 (%) of the last evaluation", decimals=2),
        TrainingField("acc5", float, "Acc@5 (%) of the last evaluation", decimals=2),
        TrainingField("bestAcc1", float, "best Acc@1 (%) so far", decimals=2),
        TrainingField("progress", float, "percent of the planned optimizer steps done", decimals=1),
        TrainingField("etaSeconds", int, "seconds left at the measured speed"),
        TrainingField("checkpoint", str, "path of the newest checkpoint", max_length=1024),
        TrainingField(
            "activity",
            str,
            "what rank 0 is doing: starting, training, evaluating, "
            "checkpointing or stopping (a hung-gang check waits out all but training)",
            max_length=32,
        ),
        TrainingField(
            "runtime",
            str,
            "what ran, said once at start-up: torch, torch_npu, CANN, HCCL and the SoC on npu; "
            "CUDA, cuDNN, the driver and the GPU on cuda",
            max_length=256,
        ),
        TrainingField(
            "updated", str, "time of the patch (RFC 3339)", format="date-time", max_length=64
        ),
    )
}
