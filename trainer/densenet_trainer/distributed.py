"""Process-group setup for one process per device (torchrun's env:// convention).

Setup returns a :class:`DistContext` value instead of mutating module globals, so every
function that needs the rank or the device receives it explicitly.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist

from densenet_contract import BACKEND_BY_TORCH_DEVICE

logger = logging.getLogger("densenet_trainer")


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    # The group of the small host-side collectives (stop agreement, RNG states): gloo on CPU
    # tensors, so that asking never waits for the device. None: the default group.
    control_group: Any = field(default=None, compare=False, repr=False)

    @property
    def distributed(self) -> bool:
        """Whether a process group is initialized (more than one rank)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def backend_for(device_type: str) -> str:
    """The collective backend of a device type: npu -> hccl, cuda -> nccl, cpu -> gloo."""
    try:
        return BACKEND_BY_TORCH_DEVICE[device_type]
    except KeyError:
        raise ValueError(
            f"unknown device type {device_type!r}; expected one of {sorted(BACKEND_BY_TORCH_DEVICE)}"
        ) from None


def import_torch_npu() -> ModuleType:
    """Import torch_npu (it registers the 'npu' device with torch), or explain what is missing."""
    try:
        return importlib.import_module("torch_npu")
    except ImportError as exc:
        raise RuntimeError(
            "--device npu needs the torch-npu package matching this torch "
            f"({torch.__version__}) and an installed CANN toolkit "
            "(pip install 'densenet-operator[npu]' in an Ascend image); importing it failed: "
            f"{exc}"
        ) from exc


def npu_available() -> bool:
    """True when torch_npu is installed and sees at least one NPU; never raises."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    try:
        import_torch_npu()
        return bool(torch.npu.is_available())  # type: ignore[attr-defined]
    except Exception:  # a broken CANN install must not stop auto-detection of cuda/cpu
        return False


def resolve_device_type(requested: str) -> str:
    """Map --device (auto/npu/cuda/cpu) to the device type this process will use."""
    if requested == "auto":
        if npu_available():
            return "npu"
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    if requested == "npu":
        import_torch_npu()
        if not torch.npu.is_available():  # type: ignore[attr-defined]
            raise RuntimeError("--device npu: torch_npu is installed but sees no NPU")
        return "npu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: torch sees no CUDA device")
        return "cuda"
    if requested == "cpu":
        return "cpu"
    raise ValueError(f"unknown --device {requested!r}")


@dataclass(frozen=True)
class EnvRanks:
    rank: int
    world_size: int
    local_rank: int


def ranks_from_env(env: Mapping[str, str]) -> EnvRanks:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them; a lone process is rank 0 of 1."""
    world_size = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local_rank = int(env.get("LOCAL_RANK", str(rank)))
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"inconsistent RANK={rank} WORLD_SIZE={world_size}")
    return EnvRanks(rank=rank, world_size=world_size, local_rank=local_rank)


def _set_current_device(device_type: str, local_rank: int) -> torch.device:
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if device_type == "npu":
        torch.npu.set_device(local_rank)  # type: ignore[attr-defined]
        return torch.device("npu", local_rank)
    return torch.device("cpu")


def setup_distributed(requested_device: str, env: Mapping[str, str] | None = None) -> DistContext:
    """Pick the device, bind this process to its local device, and join the process group."""
    ranks = ranks_from_env(os.environ if env is None else env)
    device_type = resolve_device_type(requested_device)
    backend = backend_for(device_type)
    device = _set_current_device(device_type, ranks.local_rank)
    if ranks.world_size > 1 and not dist.is_initialized():
        kwargs: dict[str, Any] = {}
        if device_type == "cuda":
            # Binding the group to the device lets NCCL connect eagerly instead of guessing.
            kwargs["device_id"] = device
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=ranks.rank,
            world_size=ranks.world_size,
            **kwargs,
        )
    return DistContext(
        rank=ranks.rank,
        world_size=ranks.world_size,
        local_rank=ranks.local_rank,
        device=device,
        backend=backend,
        control_group=new_control_group(backend) if ranks.world_size > 1 else None,
    )


def new_control_group(backend: str) -> Any:
    """A gloo group beside an nccl/hccl one (gloo jobs use their default group).

    A tiny all_reduce on it costs about 0.3 ms on two CPU ranks (0.1 % of a DenseNet-121
    step there), and none of it is device time.
    """
    if backend == "gloo":
        return None
    try:
        return dist.new_group(backend="gloo")
    except Exception as exc:  # then the default group, with a device sync per question
        logger.warning("no gloo group for control messages (%s): using the %s group", exc, backend)
        return None


def _control_device(ctx: DistContext) -> torch.device:
    return torch.device("cpu") if ctx.control_group is not None else ctx.device


def agree_max(flags: Sequence[int], ctx: DistContext) -> list[int]:
    """The element-wise maximum of small integer flags over all ranks (every rank must ask)."""
    tensor = torch.tensor(list(flags), dtype=torch.int64, device=_control_device(ctx))
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=ctx.control_group)
    return [int(value) for value in tensor.tolist()]


def barrier(ctx: DistContext) -> None:
    """Wait until every rank arrives (on the control group: no device work involved)."""
    if ctx.distributed:
        agree_max([0], ctx)


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` (picklable, small), in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj, group=ctx.control_group)
    return gathered


def cleanup(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over all ranks (a copy on the device; the identity for one process)."""
    reduced = values.detach().clone().to(ctx.device)
    if ctx.distributed:
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced


def all_reduce_max(value: float, ctx: DistContext) -> float:
    tensor = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def broadcast_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running stats) to every rank.

    DDP broadcasts buffers at the start of each forward, and then every rank updates its
    running stats with its own batch; after the last step they differ slightly. Syncing
    them makes every rank evaluate exactly the model rank 0 saves.
    """
    if ctx.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def gather_union(items: set[str], ctx: DistContext) -> set[str]:
    """Union of a set of strings over all ranks (small sets only: it pickles them)."""
    if not ctx.distributed:
        return set(items)
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, sorted(items))
    return {item for part in gathered for item in part}


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so host-side clocks measure finished steps."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize(device)  # type: ignore[attr-defined]
