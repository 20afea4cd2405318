"""One training epoch, one evaluation pass, and the pure pieces they are built from."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from densenet_trainer.data import Batch
from densenet_trainer.distributed import DistContext, all_reduce_sum, synchronize

logger = logging.getLogger("densenet_trainer")

# Steps at the start of each epoch left out of FPS: loader-worker start-up, allocator growth
# and kernel selection make them slow in a way that says nothing about steady-state speed.
FPS_WARMUP_STEPS = 5


# ---------------------------------------------------------------- learning rate schedule


def lr_factor(
    step: int,
    *,
    steps_per_epoch: int,
    epochs: int,
    schedule: str,
    warmup_epochs: float = 0.0,
    step_size: int = 30,
    gamma: float = 0.1,
) -> float:
    """Multiplier of the peak lr before optimizer step ``step`` (0-based).

    Linear warm-up from 1/warmup_steps to 1, then either a step decay by ``gamma`` every
    ``step_size`` epochs (the seeds' 30 x 0.1) or a cosine to 0 at the end of ``epochs``.
    """
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "step":
        return gamma ** (step // (step_size * steps_per_epoch))
    if schedule == "cosine":
        decay_steps = max(1, epochs * steps_per_epoch - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule {schedule!r}")


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    steps_per_epoch: int,
    epochs: int,
    schedule: str,
    warmup_epochs: float,
    step_size: int,
    gamma: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler (warm-up needs finer than per-epoch granularity)."""

    def factor(step: int) -> float:
        return lr_factor(
            step,
            steps_per_epoch=steps_per_epoch,
            epochs=epochs,
            schedule=schedule,
            warmup_epochs=warmup_epochs,
            step_size=step_size,
            gamma=gamma,
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def seek_lr_scheduler(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Put the scheduler (and the optimizer's lr) at optimizer step ``step``."""
    scheduler.last_epoch = step
    lrs = [
        base_lr * lmbda(step)
        for base_lr, lmbda in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    ]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs  # type: ignore[attr-defined]  # what get_last_lr() returns


# ---------------------------------------------------------------- mixed precision


@dataclass(frozen=True)
class AmpSettings:
    enabled: bool
    device_type: str
    dtype: torch.dtype | None = None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    @property
    def needs_grad_scaler(self) -> bool:
        # bf16 has fp32's exponent range; only fp16 gradients underflow without scaling.
        return self.enabled and self.dtype == torch.float16


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "npu":
        is_supported = getattr(torch.npu, "is_bf16_supported", None)  # type: ignore[attr-defined]
        return bool(is_supported()) if is_supported is not None else False
    return True  # cpu autocast is bf16-native


def amp_settings(enabled: bool, requested_dtype: str, device: torch.device) -> AmpSettings:
    if not enabled:
        return AmpSettings(enabled=False, device_type=device.type)
    if requested_dtype == "bf16" or (requested_dtype == "auto" and bf16_supported(device)):
        dtype = torch.bfloat16
    else:
        dtype = torch.float16
    return AmpSettings(enabled=True, device_type=device.type, dtype=dtype)


def build_grad_scaler(amp: AmpSettings) -> torch.amp.GradScaler:
    """torch's dynamic GradScaler; on npu torch_npu's own subclass.

    torch_npu's (npu/amp/grad_scaler.py) clears the device's float-status register before
    the first scaled step on chips that do not produce inf/nan (910), reads overflow from it,
    and all-reduces the overflow flag over the ranks, so every rank skips the same steps.
    torch's class does neither: with fp16 on 910 the ranks' weights could silently drift apart.
    """
    if amp.device_type == "npu":
        from torch_npu.npu.amp import GradScaler as NpuGradScaler  # type: ignore[import-not-found]

        scaler: torch.amp.GradScaler = NpuGradScaler(enabled=amp.needs_grad_scaler)
        return scaler
    return torch.amp.GradScaler(amp.device_type, enabled=amp.needs_grad_scaler)


# ---------------------------------------------------------------- accuracy


def topk_correct(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...]) -> torch.Tensor:
    """Number of samples whose target is among the k highest logits, for each k (a tensor)."""
    maxk = min(max(topk), output.shape[1])
    _, pred = output.topk(maxk, dim=1, largest=True, sorted=True)
    hits = pred.eq(target.view(-1, 1))  # [batch, maxk]
    return torch.stack([hits[:, : min(k, maxk)].any(dim=1).sum() for k in topk]).to(torch.int64)


@dataclass(frozen=True)
class EvalResult:
    acc1: float
    acc5: float
    loss: float
    samples: int
    failed_images: frozenset[str] = frozenset()


def eval_result_from_sums(counts: torch.Tensor, loss_sum: torch.Tensor) -> EvalResult:
    """Turn all-reduced counts [correct1, correct5, samples] and the loss sum into
    percentages and a mean."""
    correct1, correct5, samples = (int(v) for v in counts.tolist())
    loss_total = float(loss_sum)
    if samples == 0:
        return EvalResult(acc1=0.0, acc5=0.0, loss=float("nan"), samples=0)
    return EvalResult(
        acc1=100.0 * correct1 / samples,
        acc5=100.0 * correct5 / samples,
        loss=loss_total / samples,
        samples=samples,
    )


def evaluate(
    model: nn.Module,
    criterion: nn.Module,
    data_loader: Iterable[Batch],
    ctx: DistContext,
    amp: AmpSettings,
    channels_last: bool = False,
) -> EvalResult:
    """Acc@1 / Acc@5 over the whole validation set, each sample counted once over all ranks.

    Each rank counts its correct predictions and its real samples (int64) and sums its loss
    (float32: HCCL reduces no float64); two all_reduces add them up. ``model`` should be the
    unwrapped module: ranks may run different numbers of batches (the val sampler is
    unpadded), and a DDP forward could wait on the others.
    """
    model.eval()
    counts = torch.zeros(3, dtype=torch.int64, device=ctx.device)
    loss_sum = torch.zeros((), dtype=torch.float32, device=ctx.device)
    failed: set[str] = set()
    with torch.inference_mode():
        for images, targets, failed_paths in data_loader:
            failed.update(failed_paths)
            if images.shape[0] == 0:
                continue
            images, targets = to_device(images, targets, ctx.device, channels_last)
            with amp.autocast():
                output = model(images)
            output = output.float()
            # criterion averages over the batch; weight it back to a sum for exact means.
            loss = criterion(output, targets)
            counts[:2] += topk_correct(output, targets, (1, 5))
            counts[2] += images.shape[0]
            loss_sum += loss.float() * images.shape[0]
    result = eval_result_from_sums(all_reduce_sum(counts, ctx), all_reduce_sum(loss_sum, ctx))
    return EvalResult(
        acc1=result.acc1,
        acc5=result.acc5,
        loss=result.loss,
        samples=result.samples,
        failed_images=frozenset(failed),
    )


# ---------------------------------------------------------------- training


@dataclass
class ThroughputMeter:
    """Images and time since a start point; FPS over all ranks = local rate x world size.

    Every rank runs the same batch size in lockstep (DDP), so the local rate times the world
    size is the global rate, without a collective per log line (the seeds measure it so).
    """

    world_size: int
    start: float = field(default_factory=time.perf_counter)
    images: int = 0
    data_wait: float = 0.0

    def add(self, images: int, data_wait: float) -> None:
        self.images += images
        self.data_wait += data_wait

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def fps(self) -> float:
        elapsed = self.elapsed()
        return self.images * self.world_size / elapsed if elapsed > 0 else 0.0

    def data_wait_share(self) -> float:
        elapsed = self.elapsed()
        return min(1.0, self.data_wait / elapsed) if elapsed > 0 else 0.0


@dataclass
class TrainEpochResult:
    steps: int
    global_step: int
    loss: float
    lr: float
    fps: float
    data_wait_share: float
    images: int  # images this rank trained after the warm-up steps (0: fps is a raw rate)
    reached_max_steps: bool
    failed_images: set[str] = field(default_factory=set)
    stopped: bool = False  # on_step ended the epoch early (a stop on request)


def _progress_bar(total: int | None, enabled: bool, description: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=description, file=sys.stderr, leave=False, dynamic_ncols=True)


def to_device(
    images: torch.Tensor, targets: torch.Tensor, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on the device (asynchronously from pinned memory), in the model's memory format."""
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(device, non_blocking=True)


class EpochProgress:
    """The bookkeeping of one training epoch: losses, FPS meters and the interval log lines.

    The FPS of the epoch leaves out its first ``FPS_WARMUP_STEPS`` steps; the interval
    meter restarts at each log line and at the end of the warm-up. Losses are summed on the
    device and read (a device sync) only at log time.
    """

    def __init__(
        self,
        ctx: DistContext,
        epoch: int,
        steps_in_epoch: int | None,
        on_log: Callable[[dict[str, float | int]], None] | None,
    ):
        self.ctx = ctx
        self.epoch = epoch
        self.on_log = on_log
        self.fps_warmup = FPS_WARMUP_STEPS
        if steps_in_epoch is not None:
            self.fps_warmup = min(FPS_WARMUP_STEPS, steps_in_epoch // 2)
        self.whole_epoch = ThroughputMeter(ctx.world_size)  # the fallback for very short epochs
        self.measured = ThroughputMeter(ctx.world_size)  # restarted after the warm-up steps
        self.interval = ThroughputMeter(ctx.world_size)
        # float32 on the device: NPUs have no float64 on their AI Cores (an AI-CPU fallback
        # per step), and an epoch's sum of losses needs no more.
        self.interval_loss = torch.zeros((), dtype=torch.float32, device=ctx.device)
        self.interval_steps = 0
        self.epoch_loss = torch.zeros((), dtype=torch.float32, device=ctx.device)
        self.last_loss = float("nan")
        self.steps = 0
        self.failed: set[str] = set()

    def add(self, loss: torch.Tensor, images: int, data_wait: float, failed: list[str]) -> None:
        """Count one optimizer step of ``images`` images."""
        self.steps += 1
        detached = loss.detach().float()
        self.interval_loss += detached
        self.epoch_loss += detached
        self.interval_steps += 1
        for meter in (self.measured, self.whole_epoch, self.interval):
            meter.add(images, data_wait)
        self.failed.update(failed)

    def step_done(self, global_step: int, lr: float, print_freq: int) -> None:
        """Log the interval every ``print_freq`` global steps; end the FPS warm-up on time."""
        if global_step % print_freq == 0:
            self.log(global_step, lr)
        if self.steps == self.fps_warmup:
            # Start measuring here. A log line that fell inside the warm-up (above) showed
            # that interval's raw rate; the epoch's FPS leaves these steps out.
            synchronize(self.ctx.device)
            self.measured = ThroughputMeter(self.ctx.world_size)
            self.interval = ThroughputMeter(self.ctx.world_size)

    def log(self, global_step: int, lr: float) -> None:
        self.last_loss = float(self.interval_loss.item()) / self.interval_steps  # syncs
        metrics: dict[str, float | int] = {
            "step": global_step,
            "fps": self.interval.fps(),
            "dataWaitShare": self.interval.data_wait_share(),
            "loss": self.last_loss,
            "lr": lr,
        }
        if self.ctx.is_main:
            logger.info(
                "step: %d epoch: %d FPS: %.1f loss: %.4f lr: %.6f data-wait: %.1f%%",
                global_step,
                self.epoch + 1,
                metrics["fps"],
                self.last_loss,
                lr,
                100.0 * metrics["dataWaitShare"],
            )
        if self.on_log is not None:
            self.on_log(metrics)
        self.interval = ThroughputMeter(self.ctx.world_size)
        self.interval_loss.zero_()
        self.interval_steps = 0

    def result(
        self, global_step: int, lr: float, reached_max_steps: bool, stopped: bool = False
    ) -> TrainEpochResult:
        synchronize(self.ctx.device)
        mean_loss = float(self.epoch_loss.item()) / self.steps if self.steps else self.last_loss
        # An epoch that ended within its warm-up has no steady-state measurement; report the
        # raw rate rather than none.
        measured = self.measured if self.measured.images else self.whole_epoch
        return TrainEpochResult(
            steps=self.steps,
            global_step=global_step,
            loss=mean_loss,
            lr=lr,
            fps=measured.fps(),
            data_wait_share=measured.data_wait_share(),
            images=self.measured.images,
            reached_max_steps=reached_max_steps,
            failed_images=self.failed,
            stopped=stopped,
        )


def train_step(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    targets: torch.Tensor,
    amp: AmpSettings,
) -> torch.Tensor:
    """One optimizer step (and one lr schedule step); returns the loss, still on the device."""
    with amp.autocast():
        output = model(images)
        loss = criterion(output, targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    lr_scheduler.step()
    return loss


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    data_loader: Iterable[Batch],
    *,
    ctx: DistContext,
    epoch: int,
    global_step: int,
    amp: AmpSettings,
    channels_last: bool = False,
    print_freq: int = 10,
    max_train_steps: int | None = None,
    on_log: Callable[[dict[str, float | int]], None] | None = None,
    progress_bar: bool = False,
    on_step: Callable[[int, torch.Tensor], bool] | None = None,
) -> TrainEpochResult:
    """Train ``model`` for one pass over ``data_loader`` (or until ``max_train_steps``).

    ``epoch`` is 0-based; log lines show it 1-based. ``on_log`` receives each logged
    interval's metrics (the progress reporter's feed) and must not block. ``on_step`` is
    called after every optimizer step with the global step and its loss (on the device);
    returning True ends the epoch there (a stop on request).
    """
    model.train()
    steps_in_epoch = len(data_loader) if isinstance(data_loader, Sized) else None
    progress = EpochProgress(ctx, epoch, steps_in_epoch, on_log)
    bar = _progress_bar(steps_in_epoch, progress_bar and ctx.is_main, f"epoch {epoch + 1}")
    reached_max_steps = stopped = False
    batches = iter(data_loader)
    while not (reached_max_steps or stopped):
        wait_start = time.perf_counter()
        try:
            images, targets, failed_paths = next(batches)
        except StopIteration:
            break
        data_wait = time.perf_counter() - wait_start
        images, targets = to_device(images, targets, ctx.device, channels_last)
        loss = train_step(model, criterion, optimizer, lr_scheduler, scaler, images, targets, amp)
        global_step += 1
        progress.add(loss, int(images.shape[0]), data_wait, failed_paths)
        if bar is not None:
            bar.update(1)
        progress.step_done(global_step, optimizer.param_groups[0]["lr"], print_freq)
        reached_max_steps = max_train_steps is not None and global_step >= max_train_steps
        stopped = on_step is not None and on_step(global_step, loss)
    if bar is not None:
        bar.close()
    lr = optimizer.param_groups[0]["lr"]
    return progress.result(global_step, lr, reached_max_steps, stopped)
