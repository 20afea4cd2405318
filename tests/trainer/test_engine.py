from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DistributedSampler

from densenet_trainer.data import (
    SyntheticBatches,
    UnpaddedDistributedSampler,
    collate_skipping_failed,
)
from densenet_trainer.distributed import DistContext, setup_distributed
from densenet_trainer.engine import (
    AmpSettings,
    amp_settings,
    build_grad_scaler,
    build_lr_scheduler,
    eval_result_from_sums,
    evaluate,
    lr_factor,
    seek_lr_scheduler,
    topk_correct,
    train_one_epoch,
)

from .conftest import free_port

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")


# ------------------------------------------------------------------ lr schedule


def test_step_schedule_is_the_seeds_30_x_0_1() -> None:
    def factor(step: int) -> float:
        return lr_factor(step, steps_per_epoch=10, epochs=90, schedule="step")

    assert factor(0) == 1.0
    assert factor(299) == 1.0  # last step of epoch 30
    assert factor(300) == pytest.approx(0.1)
    assert factor(599) == pytest.approx(0.1)
    assert factor(600) == pytest.approx(0.01)
    assert factor(899) == pytest.approx(0.01)


def test_warmup_is_linear_then_hands_over() -> None:
    def factor(step: int, schedule: str) -> float:
        return lr_factor(step, steps_per_epoch=10, epochs=10, schedule=schedule, warmup_epochs=2)

    assert [factor(s, "step") for s in (0, 4, 9, 19)] == pytest.approx([0.05, 0.25, 0.5, 1.0])
    assert factor(20, "step") == 1.0
    assert factor(20, "cosine") == 1.0  # cosine starts at its peak right after warm-up
    assert factor(60, "cosine") == pytest.approx(0.5)  # halfway through the 80 decay steps


def test_cosine_anneals_to_zero_at_the_last_epoch() -> None:
    def factor(step: int) -> float:
        return lr_factor(step, steps_per_epoch=10, epochs=10, schedule="cosine")

    assert factor(0) == 1.0
    assert factor(25) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert factor(50) == pytest.approx(0.5)
    assert factor(100) == pytest.approx(0.0)
    assert factor(150) == pytest.approx(0.0)  # steps past the end stay at 0


def test_scheduler_drives_the_optimizer_lr_and_can_be_repositioned() -> None:
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.8, momentum=0.9)
    scheduler = build_lr_scheduler(
        optimizer,
        steps_per_epoch=4,
        epochs=3,
        schedule="step",
        warmup_epochs=1,
        step_size=2,
        gamma=0.1,
    )
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.2, 0.4, 0.6, 0.8, 0.8, 0.8, 0.8, 0.8, 0.08, 0.08, 0.08, 0.08])
    seek_lr_scheduler(scheduler, 4)  # back to the start of epoch 2
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.8)
    assert scheduler.get_last_lr() == pytest.approx([0.8])
    assert scheduler.last_epoch == 4


# ------------------------------------------------------------------ accuracy arithmetic


def test_topk_counts_hits_among_the_k_best_logits() -> None:
    output = torch.tensor(
        [
            [0.9, 0.8, 0.1, 0.0, 0.0, 0.0],  # target 0: top-1 hit
            [0.9, 0.8, 0.1, 0.0, 0.0, 0.0],  # target 1: top-5 only
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # target 0: rank 6, no hit
        ]
    )
    target = torch.tensor([0, 1, 0])
    counts = topk_correct(output, target, (1, 5))
    assert counts.dtype == torch.int64  # counts, which every backend reduces exactly
    assert counts.tolist() == [1, 2]


def test_topk_with_fewer_classes_than_k() -> None:
    output = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
    assert topk_correct(output, torch.tensor([0, 0]), (1, 5)).tolist() == [1, 2]


def test_percentages_come_from_summed_counts() -> None:
    # rank 0: 3 of 4 right, rank 1: 1 of 3 right -> 4 of 7, not the mean of 75% and 33%
    counts = torch.tensor([3, 4, 4]) + torch.tensor([1, 3, 3])
    loss_sum = torch.tensor(2.0) + torch.tensor(1.5)
    result = eval_result_from_sums(counts, loss_sum)
    assert result.samples == 7
    assert result.acc1 == pytest.approx(100 * 4 / 7)
    assert result.acc5 == pytest.approx(100.0)
    assert result.loss == pytest.approx(3.5 / 7)


class TensorImages(torch.utils.data.Dataset[tuple[torch.Tensor, int, tuple[str, ...]]]):
    """Items shaped like DecodeTolerantImageFolder's: (image, target, failed paths)."""

    def __init__(self, count: int, classes: int = 6):
        generator = torch.Generator().manual_seed(1)
        self.images = torch.randn(count, 3, 4, 4, generator=generator)
        self.targets = torch.randint(0, classes, (count,), generator=generator)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, tuple[str, ...]]:
        return self.images[index], int(self.targets[index]), ()


def fixed_model(classes: int = 6) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, classes))


def evaluate_shard(ctx: DistContext, count: int) -> dict[str, float]:
    dataset = TensorImages(count)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=2,
        sampler=UnpaddedDistributedSampler(len(dataset), ctx.rank, ctx.world_size),
        collate_fn=collate_skipping_failed,
    )
    result = evaluate(
        fixed_model(), nn.CrossEntropyLoss(), loader, ctx, amp_settings(False, "auto", ctx.device)
    )
    return {"acc1": result.acc1, "acc5": result.acc5, "loss": result.loss, "n": result.samples}


def _eval_worker(rank: int, world_size: int, port: int, count: int, out_dir: str) -> None:
    # init_process_group's env:// reads the master address from os.environ.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    env = {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank)}
    ctx = setup_distributed("cpu", env=env)
    try:
        result = evaluate_shard(ctx, count)
    finally:
        torch.distributed.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def test_distributed_accuracy_counts_each_sample_once(tmp_path: Path) -> None:
    count, world_size = 7, 2  # 2 ranks do not divide 7 val samples
    # A padded DistributedSampler would evaluate 8 samples, one of them twice.
    assert len(DistributedSampler(range(count), num_replicas=2, rank=0)) * world_size == 8
    mp.spawn(
        _eval_worker,
        args=(world_size, free_port(), count, str(tmp_path)),
        nprocs=world_size,
        join=True,
    )
    single = evaluate_shard(CPU, count)
    assert single["n"] == count
    for rank in range(world_size):
        reduced = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert reduced["n"] == count
        assert reduced["acc1"] == pytest.approx(single["acc1"])
        assert reduced["acc5"] == pytest.approx(single["acc5"])
        assert reduced["loss"] == pytest.approx(single["loss"])


# ------------------------------------------------------------------ training epoch


def tiny_model(classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )


def run_epoch(
    amp: bool,
    max_train_steps: int | None,
    caplog: pytest.LogCaptureFixture,
    progress_bar: bool = False,
):
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = build_lr_scheduler(
        optimizer,
        steps_per_epoch=12,
        epochs=1,
        schedule="cosine",
        warmup_epochs=0,
        step_size=30,
        gamma=0.1,
    )
    settings = amp_settings(amp, "auto", CPU.device)
    logged: list[dict[str, float | int]] = []
    batches = SyntheticBatches(8, 8, 4, steps=12, device=CPU.device)
    with caplog.at_level(logging.INFO, logger="densenet_trainer"):
        result = train_one_epoch(
            model,
            nn.CrossEntropyLoss(label_smoothing=0.1),
            optimizer,
            scheduler,
            build_grad_scaler(settings),
            batches,
            ctx=CPU,
            epoch=0,
            global_step=0,
            amp=settings,
            print_freq=4,
            max_train_steps=max_train_steps,
            on_log=logged.append,
            progress_bar=progress_bar,
        )
    return result, logged


def test_train_one_epoch_logs_in_the_seed_format(caplog: pytest.LogCaptureFixture) -> None:
    result, logged = run_epoch(amp=False, max_train_steps=None, caplog=caplog)
    assert (result.steps, result.global_step, result.reached_max_steps) == (12, 12, False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step:")]
    pattern = re.compile(r"step: (\d+) epoch: 1 FPS: [\d.]+ loss: [\d.]+ lr: [\d.]+ data-wait: ")
    assert [int(pattern.match(line)[1]) for line in lines] == [4, 8, 12]  # type: ignore[index]
    assert [entry["step"] for entry in logged] == [4, 8, 12]
    assert set(logged[0]) == {"step", "fps", "dataWaitShare", "loss", "lr"}
    assert result.fps > 0 and 0 <= result.data_wait_share <= 1
    assert result.images == 8 * (12 - 5)  # FPS leaves out the 5 warm-up steps
    assert math.isfinite(result.loss)


def test_max_train_steps_stops_mid_epoch(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    result, _ = run_epoch(amp=False, max_train_steps=7, caplog=caplog, progress_bar=True)
    assert (result.steps, result.global_step, result.reached_max_steps) == (7, 7, True)
    assert "epoch 1:" in capsys.readouterr().err  # the tqdm bar (when stderr is a terminal)


def test_bf16_autocast_trains_on_cpu_without_a_scaler(caplog: pytest.LogCaptureFixture) -> None:
    settings = amp_settings(True, "auto", CPU.device)
    assert settings.dtype == torch.bfloat16 and not settings.needs_grad_scaler
    assert not build_grad_scaler(settings).is_enabled()
    fp16 = amp_settings(True, "fp16", CPU.device)
    assert fp16.needs_grad_scaler and build_grad_scaler(fp16).is_enabled()
    result, _ = run_epoch(amp=True, max_train_steps=None, caplog=caplog)
    assert result.steps == 12 and math.isfinite(result.loss)


def test_off_npu_the_scaler_is_torchs_own() -> None:
    fp16 = amp_settings(True, "fp16", CPU.device)
    assert type(build_grad_scaler(fp16)) is torch.amp.GradScaler


@pytest.mark.skipif(
    importlib.util.find_spec("torch_npu") is None,
    reason="needs torch_npu (an Ascend image): its GradScaler subclass lives there",
)
def test_on_npu_the_scaler_is_torch_npus_which_syncs_overflow_across_ranks() -> None:
    from torch_npu.npu.amp import GradScaler as NpuGradScaler  # type: ignore[import-not-found]

    fp16 = AmpSettings(enabled=True, device_type="npu", dtype=torch.float16)
    assert isinstance(build_grad_scaler(fp16), NpuGradScaler)


def test_epoch_losses_accumulate_in_float32_on_the_device() -> None:
    """No float64 on the device per step: NPU AI Cores have none (an AI-CPU fallback)."""
    from densenet_trainer.engine import EpochProgress

    progress = EpochProgress(CPU, epoch=0, steps_in_epoch=4, on_log=None)
    progress.add(torch.tensor(2.5, dtype=torch.float32), images=8, data_wait=0.0, failed=[])
    progress.add(torch.tensor(1.5, dtype=torch.bfloat16), images=8, data_wait=0.0, failed=[])
    assert progress.epoch_loss.dtype == progress.interval_loss.dtype == torch.float32
    assert progress.result(2, 0.1, reached_max_steps=False).loss == pytest.approx(2.0)
