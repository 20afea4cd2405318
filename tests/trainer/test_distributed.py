from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from densenet_trainer.distributed import (
    DistContext,
    all_reduce_sum,
    backend_for,
    gather_union,
    import_torch_npu,
    ranks_from_env,
    resolve_device_type,
    setup_distributed,
)

HAS_TORCH_NPU = importlib.util.find_spec("torch_npu") is not None


@pytest.mark.parametrize(
    ("device_type", "backend"), [("npu", "hccl"), ("cuda", "nccl"), ("cpu", "gloo")]
)
def test_backend_follows_the_device_type(device_type: str, backend: str) -> None:
    assert backend_for(device_type) == backend


def test_unknown_device_type_has_no_backend() -> None:
    with pytest.raises(ValueError, match="unknown device type 'xpu'"):
        backend_for("xpu")


def test_ranks_come_from_torchrun_env() -> None:
    ranks = ranks_from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (ranks.rank, ranks.world_size, ranks.local_rank) == (5, 8, 1)
    lone = ranks_from_env({})
    assert (lone.rank, lone.world_size, lone.local_rank) == (0, 1, 0)
    with pytest.raises(ValueError):
        ranks_from_env({"RANK": "2", "WORLD_SIZE": "2"})


@pytest.mark.skipif(HAS_TORCH_NPU, reason="torch_npu is installed here")
def test_npu_without_torch_npu_says_what_is_missing() -> None:
    with pytest.raises(RuntimeError, match="torch-npu package"):
        import_torch_npu()
    with pytest.raises(RuntimeError, match="CANN"):
        resolve_device_type("npu")


@pytest.mark.skipif(torch.cuda.is_available() or HAS_TORCH_NPU, reason="an accelerator is here")
def test_auto_falls_back_to_cpu_and_cuda_is_refused_without_a_gpu() -> None:
    assert resolve_device_type("auto") == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_device_type("cuda")


def test_single_process_setup_returns_a_cpu_context_without_a_process_group() -> None:
    ctx = setup_distributed("cpu", env={})
    assert ctx == DistContext(
        rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo"
    )
    assert ctx.is_main and not ctx.distributed
    assert not torch.distributed.is_initialized()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.rank = 1  # type: ignore[misc]
    values = torch.tensor([1.0, 2.0])
    assert torch.equal(all_reduce_sum(values, ctx), values)
    assert gather_union({"a"}, ctx) == {"a"}
