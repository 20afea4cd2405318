"""Process-group setup for one process per device (torchrun's env:// convention), and the
trainer's collectives.

Setup returns a :class:`DistContext` value instead of mutating module globals, so every
function that needs the rank or the device receives it explicitly.

Every collective the trainer calls itself goes through this module, which first checks the
tensor's dtype against the rules of the backend that will carry it (:class:`DtypeRules`). The
HCCL rules are a stand-in for torch_npu's own checks, so that the CPU test suite, running real
gloo collectives with ``DENSENET_COLLECTIVE_RULES=hccl``, refuses what an NPU job would crash
on (a float64 all_reduce, for one) with the same verdict and a clearer message.
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


# Which rule set to enforce instead of the job's own backend's: "hccl" on a gloo job checks on
# CPU what an NPU job would refuse.
RULES_ENV = "DENSENET_COLLECTIVE_RULES"

REDUCE, MOVE = "reduce", "move"  # collectives that add values up; those that only copy them


class UnsupportedCollective(TypeError):
    """A collective the backend of its group would refuse for its dtype."""


@dataclass(frozen=True)
class DtypeRules:
    """The dtypes one backend's process group accepts, by kind of collective.

    None: no rule of ours; the backend's own checks apply as they are.
    """

    backend: str
    reduce: frozenset[torch.dtype] | None
    move: frozenset[torch.dtype] | None
    source: str

    def check(self, tensor: torch.Tensor, kind: str, what: str) -> None:
        allowed = self.reduce if kind == REDUCE else self.move
        if allowed is None or tensor.dtype in allowed:
            return
        names = ", ".join(sorted(str(dtype).removeprefix("torch.") for dtype in allowed))
        raise UnsupportedCollective(
            f"{what}: the {self.backend} backend refuses {kind} collectives on "
            f"{str(tensor.dtype).removeprefix('torch.')} tensors (it takes {names}; "
            f"{self.source}). Keep counts in int64 and sums in float32."
        )


_HCCL_REDUCE = frozenset(
    {torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.float32,
     torch.bfloat16, torch.uint8, torch.bool}
)  # fmt: skip
_NCCL = frozenset(
    {torch.int8, torch.uint8, torch.int32, torch.int64, torch.float16, torch.float32,
     torch.float64, torch.bfloat16, torch.bool}
)  # fmt: skip
COLLECTIVE_RULES: dict[str, DtypeRules] = {
    # torch_npu ProcessGroupHCCL.cpp checkSupportedDataType, the same on every release branch
    # from v2.5.1 to v2.9.0 and master (float64 and uint64 only on Ascend 950): the reductions
    # (allreduce, reduce, reduce_scatter) take int8/16/32/64, fp16, fp32 and bf16; uint8 and
    # bool are cast to int32 first. HCCLUtils.cpp kScalarTypeToHcclDataType, which broadcast
    # and allgather go through, maps float64 too.
    "hccl": DtypeRules(
        "hccl",
        reduce=_HCCL_REDUCE,
        move=_HCCL_REDUCE | {torch.float64},
        source="torch_npu ProcessGroupHCCL.cpp checkSupportedDataType, HCCLUtils.cpp",
    ),
    # torch's ProcessGroupNCCL maps int8, uint8, int32, int64, fp16, fp32, fp64, bf16 and bool
    # (no int16) for every collective.
    "nccl": DtypeRules("nccl", reduce=_NCCL, move=_NCCL, source="torch ProcessGroupNCCL's map"),
    "gloo": DtypeRules("gloo", reduce=None, move=None, source="gloo checks its own"),
}


def collective_rules(backend: str, env: Mapping[str, str] | None = None) -> DtypeRules:
    """The rules the job's collectives are checked against: its backend's, or those that
    ``DENSENET_COLLECTIVE_RULES`` names."""
    name = (os.environ if env is None else env).get(RULES_ENV) or backend
    try:
        return COLLECTIVE_RULES[name]
    except KeyError:
        raise ValueError(
            f"{RULES_ENV}={name!r}: expected one of {sorted(COLLECTIVE_RULES)}"
        ) from None


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
    # What the default group's backend accepts (the job's backend's rules unless overridden).
    rules: DtypeRules = field(default=COLLECTIVE_RULES["gloo"], compare=False, repr=False)

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
    env = os.environ if env is None else env
    ranks = ranks_from_env(env)
    device_type = resolve_device_type(requested_device)
    backend = backend_for(device_type)
    rules = collective_rules(backend, env)
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
        control_group=new_control_group(rules.backend) if ranks.world_size > 1 else None,
        rules=rules,
    )


def new_control_group(backend: str) -> Any:
    """A gloo group beside an nccl/hccl one (gloo jobs use their default group). ``backend``
    is the one whose rules the default group follows: a gloo job checked against HCCL's
    rules gets the control group an NPU job has, so the same collectives take the same
    groups.

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


def _rules_of(group: Any, ctx: DistContext) -> DtypeRules:
    return COLLECTIVE_RULES["gloo"] if group is not None else ctx.rules


def _all_reduce(tensor: torch.Tensor, op: Any, ctx: DistContext, group: Any = None) -> None:
    _rules_of(group, ctx).check(tensor, REDUCE, "all_reduce")
    dist.all_reduce(tensor, op=op, group=group)


def agree_max(flags: Sequence[int], ctx: DistContext) -> list[int]:
    """The element-wise maximum of small integer flags over all ranks (every rank must ask)."""
    tensor = torch.tensor(list(flags), dtype=torch.int64, device=_control_device(ctx))
    if ctx.distributed:
        _all_reduce(tensor, dist.ReduceOp.MAX, ctx, ctx.control_group)
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
    """Sum a tensor over all ranks (a copy on the device; the identity for one process).

    Its dtype must be one the job's backend reduces, even for one process: a job that runs
    on one NPU must not break on two."""
    ctx.rules.check(values, REDUCE, "all_reduce_sum")
    reduced = values.detach().clone().to(ctx.device)
    if ctx.distributed:
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced


def check_module_collectives(module: torch.nn.Module, ctx: DistContext) -> None:
    """Refuse a model whose gradients DDP could not all-reduce (its parameters' dtypes) or
    whose buffers it could not broadcast, before the first step rather than at it."""
    for name, parameter in module.named_parameters():
        ctx.rules.check(parameter, REDUCE, f"DDP's gradient all-reduce of {name}")
    for name, buffer in module.named_buffers():
        ctx.rules.check(buffer, MOVE, f"DDP's broadcast of buffer {name}")


def broadcast_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running stats) to every rank.

    DDP broadcasts buffers at the start of each forward, and then every rank updates its
    running stats with its own batch; after the last step they differ slightly. Syncing
    them makes every rank evaluate exactly the model rank 0 saves.
    """
    if ctx.distributed:
        for name, buffer in module.named_buffers():
            ctx.rules.check(buffer, MOVE, f"broadcast of buffer {name}")
            dist.broadcast(buffer.data, src=0)


def gather_union(items: set[str], ctx: DistContext) -> set[str]:
    """Union of a set of strings over all ranks (small sets only: it pickles them, on the
    control group: host work, no device copy)."""
    return {item for part in gather_objects(sorted(items), ctx) for item in part}


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so host-side clocks measure finished steps."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize(device)  # type: ignore[attr-defined]
