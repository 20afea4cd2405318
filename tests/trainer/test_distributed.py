from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

import pytest
import torch

from densenet_trainer.distributed import (
    COLLECTIVE_RULES,
    MOVE,
    REDUCE,
    RULES_ENV,
    DistContext,
    UnsupportedCollective,
    all_reduce_sum,
    backend_for,
    check_module_collectives,
    cleanup,
    collective_rules,
    gather_union,
    import_torch_npu,
    ranks_from_env,
    resolve_device_type,
    setup_distributed,
)

from .conftest import free_port

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


# ---------------------------------------------------------------- the backends' dtype rules

HCCL = dataclasses.replace(
    setup_distributed("cpu", env={}), rules=collective_rules("gloo", {RULES_ENV: "hccl"})
)


def test_hccl_reduces_no_float64_and_says_what_it_takes() -> None:
    """What evaluation summed before (a float64 tensor through all_reduce) is refused with
    the rule's source, as torch_npu's checkSupportedDataType refuses it on an NPU."""
    with pytest.raises(UnsupportedCollective, match=r"hccl backend refuses reduce .* float64"):
        all_reduce_sum(torch.zeros(4, dtype=torch.float64), HCCL)
    with pytest.raises(UnsupportedCollective, match="checkSupportedDataType"):
        all_reduce_sum(torch.zeros(1, dtype=torch.complex64), HCCL)
    for dtype in (torch.int64, torch.int32, torch.float32, torch.bfloat16, torch.float16):
        all_reduce_sum(torch.ones(2, dtype=dtype), HCCL)


def test_hccl_moves_float64_and_nccl_reduces_it() -> None:
    rules = COLLECTIVE_RULES["hccl"]
    rules.check(torch.zeros(1, dtype=torch.float64), MOVE, "broadcast")  # a copy, no sum
    COLLECTIVE_RULES["nccl"].check(torch.zeros(1, dtype=torch.float64), REDUCE, "all_reduce")
    with pytest.raises(UnsupportedCollective, match="nccl"):
        COLLECTIVE_RULES["nccl"].check(torch.zeros(1, dtype=torch.int16), REDUCE, "all_reduce")


def test_each_backend_has_its_rules_and_an_unknown_override_is_refused() -> None:
    assert collective_rules("hccl", {}).backend == "hccl"
    assert collective_rules("gloo", {}).backend == "gloo"
    assert collective_rules("gloo", {RULES_ENV: "hccl"}).backend == "hccl"
    with pytest.raises(ValueError, match="DENSENET_COLLECTIVE_RULES='mpi'"):
        collective_rules("gloo", {RULES_ENV: "mpi"})


def test_a_model_ddp_could_not_synchronize_is_refused_before_the_first_step() -> None:
    model = torch.nn.Linear(2, 2)
    check_module_collectives(model, HCCL)
    with pytest.raises(UnsupportedCollective, match="gradient all-reduce of weight"):
        check_module_collectives(model.double(), HCCL)


def _two_ranks(rank: int, port: int, results: Any) -> None:
    env = {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), RULES_ENV: "hccl"}  # fmt: skip
    os.environ.update(env)  # init_method env:// reads the master from os.environ
    ctx = setup_distributed("cpu", env=env)
    try:
        counts = all_reduce_sum(torch.tensor([rank + 1, 10], dtype=torch.int64), ctx)
        refused = ""
        try:
            all_reduce_sum(torch.ones(1, dtype=torch.float64), ctx)
        except UnsupportedCollective as error:
            refused = str(error)
        union = gather_union({f"rank{rank}"}, ctx)
        results.put((rank, counts.tolist(), ctx.control_group is not None, refused, union))
    finally:
        cleanup(ctx)


def test_two_gloo_ranks_under_hccls_rules_reduce_counts_and_refuse_float64() -> None:
    """Real collectives between two processes: int64 counts add up; float64 is refused on
    every rank before any rank sends (so none waits for a partner that gave up); the control
    group an NPU job has exists beside the default one."""
    context = torch.multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [context.Process(target=_two_ranks, args=(r, port, results)) for r in range(2)]
    for process in processes:
        process.start()
    outcomes = sorted(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    for rank, counts, has_control_group, refused, union in outcomes:
        assert counts == [3, 20], rank
        assert has_control_group
        assert "float64" in refused
        assert union == {"rank0", "rank1"}
