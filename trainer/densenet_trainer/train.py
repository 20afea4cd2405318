"""Training entry point (what torchrun runs on every rank): ``python -m densenet_trainer.train``."""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from densenet_trainer.checkpoint import (
    BEST_MODEL_NAME,
    checkpoint_name,
    extract_state_dict,
    load_checkpoint,
    load_latest_checkpoint,
    load_pretrained,
    plain_args,
    prune_checkpoints,
    save_atomic,
)
from densenet_trainer.cli import parse_args
from densenet_trainer.data import SyntheticBatches, build_train_loader, build_val_loader
from densenet_trainer.distributed import (
    DistContext,
    broadcast_buffers,
    cleanup,
    gather_union,
    setup_distributed,
)
from densenet_trainer.engine import (
    AmpSettings,
    EvalResult,
    amp_settings,
    build_grad_scaler,
    build_lr_scheduler,
    evaluate,
    seek_lr_scheduler,
    train_one_epoch,
)
from densenet_trainer.status import NullReporter, Reporter, reporter_from_env

logger = logging.getLogger("densenet_trainer")

STATUS_CLOSE_TIMEOUT = 10.0
SYNTHETIC_NUM_CLASSES = 1000


def configure_logging(rank: int) -> None:
    """Rank 0 logs progress; the other ranks only warnings, tagged with their rank."""
    tag = "" if rank == 0 else f"[rank {rank}] "
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {tag}%(message)s"))
    logger.handlers.clear()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False


def build_model(arch: str, num_classes: int) -> nn.Module:
    # weights=None: nothing is ever downloaded; --pretrained takes a local file instead.
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def parameter_groups(
    model: nn.Module, weight_decay: float, no_bn_bias_decay: bool
) -> list[dict[str, Any]]:
    if not no_bn_bias_decay:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    # BatchNorm weights/biases and conv/linear biases are the 1-d parameters.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def sgd_impl_kwargs(impl: str, device_type: str) -> dict[str, bool]:
    """torch.optim.SGD's ``fused``/``foreach`` arguments for --sgd-impl on a device type.

    auto: fused on cuda and cpu (docs/performance.md: on a cpu several times faster than
    the loop and foreach; on an H100 the same as foreach), torch's own default on npu.
    """
    if impl == "auto":
        impl = "fused" if device_type in ("cuda", "cpu") else "default"
    if impl == "fused":
        return {"fused": True}
    if impl == "foreach":
        return {"foreach": True}
    if impl == "loop":
        return {"foreach": False}
    if impl == "default":
        return {}
    raise ValueError(f"unknown SGD implementation {impl!r}")


def build_optimizer(
    model: nn.Module, args: argparse.Namespace, device: torch.device
) -> torch.optim.SGD:
    return torch.optim.SGD(
        parameter_groups(model, args.weight_decay, args.no_bn_bias_decay),
        lr=args.lr,
        momentum=args.momentum,
        **sgd_impl_kwargs(args.sgd_impl, device.type),
    )


def channels_last_default(device_type: str) -> bool:
    """Whether to use channels_last when --[no-]channels-last is not given: measured faster
    on cuda and cpu (docs/performance.md); off on npu, not measured there (torch_npu keeps
    its own internal layouts)."""
    return device_type in ("cuda", "cpu")


def compile_model(model: nn.Module, mode: str) -> nn.Module:
    """torch.compile ``model`` (DDP-wrapped or not); state_dicts stay with the unwrapped one."""
    return torch.compile(model, mode=None if mode == "default" else mode)  # type: ignore[return-value]


@dataclass
class Data:
    train_loader: Any = None
    train_sampler: Any = None
    val_loader: Any = None
    num_classes: int = 0
    classes: list[str] | None = None


def build_data(args: argparse.Namespace, ctx: DistContext, channels_last: bool) -> Data:
    trains = args.mode != "evaluate"
    evaluates = args.mode in ("evaluate", "train_and_evaluate")
    if args.synthetic:
        num_classes = args.num_classes or SYNTHETIC_NUM_CLASSES
        seed = (args.seed or 0) + ctx.rank

        def batches(steps: int, offset: int) -> SyntheticBatches:
            return SyntheticBatches(
                args.batch_size,
                args.image_size,
                num_classes,
                steps,
                ctx.device,
                channels_last=channels_last,
                seed=seed + offset,
            )

        return Data(
            train_loader=batches(args.synthetic_steps, 0) if trains else None,
            val_loader=batches(max(1, args.synthetic_steps // 10), 1_000_003)
            if evaluates
            else None,
            num_classes=num_classes,
        )

    data = Data()
    class_lists = []
    if trains:
        data.train_loader, train_set, data.train_sampler = build_train_loader(
            args.data,
            args.image_size,
            args.batch_size,
            args.workers,
            ctx,
            args.seed,
            args.min_crop_scale,
        )
        class_lists.append(train_set.classes)
    if evaluates:
        data.val_loader, val_set = build_val_loader(
            args.data, args.image_size, args.batch_size, args.workers, ctx
        )
        class_lists.append(val_set.classes)
    if any(classes != class_lists[0] for classes in class_lists):
        raise ValueError(f"{args.data}: train/ and val/ have different class directories")
    data.classes = class_lists[0]
    data.num_classes = len(data.classes)
    if args.num_classes is not None and args.num_classes != data.num_classes:
        raise ValueError(
            f"--num-classes {args.num_classes} but {args.data} has {data.num_classes} classes"
        )
    return data


def find_resume_checkpoint(args: argparse.Namespace) -> tuple[Path, dict[str, Any]] | None:
    if args.resume is None:
        return None
    if args.resume == "auto":
        found = load_latest_checkpoint(args.checkpoint_dir)
        if found is None:
            logger.info("no checkpoint in %s yet: starting from scratch", args.checkpoint_dir)
        return found
    path = Path(args.resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {path}: no such file")
    return path, load_checkpoint(path)


def format_eval(result: EvalResult) -> str:
    return f"Acc@1: {result.acc1:.3f} Acc@5: {result.acc5:.3f}"


def log_failed_images(paths: set[str], when: str) -> None:
    if paths:
        shown = ", ".join(sorted(paths)[:10])
        more = f" and {len(paths) - 10} more" if len(paths) > 10 else ""
        logger.warning(
            "%s: skipped %d images that failed to decode: %s%s", when, len(paths), shown, more
        )


def run(args: argparse.Namespace, reporter: Reporter | None = None) -> int:
    """Train or evaluate as ``args`` say; ``reporter`` replaces the status reporter from the
    environment (bench/trainer_bench.py records each epoch's FPS through it)."""
    ctx = setup_distributed(args.device)
    configure_logging(ctx.rank)
    active: Reporter = NullReporter()
    try:
        if reporter is not None:
            active = reporter
        else:
            active = reporter_from_env(ctx.is_main, args.status_interval)
        return _run(args, ctx, active)
    finally:
        active.close(STATUS_CLOSE_TIMEOUT)
        cleanup(ctx)


def _run(args: argparse.Namespace, ctx: DistContext, reporter: Reporter) -> int:
    if args.seed is not None:
        random.seed(args.seed)
        torch.manual_seed(args.seed)
    if ctx.device.type == "cuda":
        # Input shapes are fixed, so cuDNN's one-off autotuning per layer pays for itself.
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    amp = amp_settings(args.amp, args.amp_dtype, ctx.device)
    channels_last = (
        channels_last_default(ctx.device.type) if args.channels_last is None else args.channels_last
    )
    logger.info(
        "%s on %d x %s (backend %s), mode %s, batch %d per device, amp %s, channels_last %s, "
        "compile %s, sgd %s",
        args.arch,
        ctx.world_size,
        ctx.device.type,
        ctx.backend,
        args.mode,
        args.batch_size,
        amp.dtype if amp.enabled else "off",
        channels_last,
        args.compile_mode if args.compile else "off",
        args.sgd_impl,
    )

    data = build_data(args, ctx, channels_last)
    model = build_model(args.arch, data.num_classes)
    if args.pretrained:
        fresh = load_pretrained(model, args.pretrained)
        logger.info("initialized from %s (left fresh: %s)", args.pretrained, fresh or "none")
    model.to(ctx.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    optimizer = build_optimizer(model, args, ctx.device)
    steps_per_epoch = len(data.train_loader) if data.train_loader is not None else 1
    lr_scheduler = build_lr_scheduler(
        optimizer,
        steps_per_epoch=steps_per_epoch,
        epochs=args.epochs,
        schedule=args.lr_schedule,
        warmup_epochs=args.warmup_epochs,
        step_size=args.lr_step_size,
        gamma=args.lr_gamma,
    )
    scaler = build_grad_scaler(amp)

    start_epoch = 0
    best_acc1: float | None = None
    if args.mode == "performance":
        if args.resume:
            logger.info("performance mode: ignoring --resume (it neither loads nor saves)")
        resumed = None
    else:
        resumed = find_resume_checkpoint(args)
    if resumed is not None:
        path, checkpoint = resumed
        model.load_state_dict(extract_state_dict(checkpoint))
        if args.mode != "evaluate" and "optimizer" in checkpoint:
            optimizer.load_state_dict(checkpoint["optimizer"])
            lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
            if scaler.is_enabled() and checkpoint.get("scaler"):
                scaler.load_state_dict(checkpoint["scaler"])
            start_epoch = int(checkpoint["epoch"]) + 1
            best_acc1 = checkpoint.get("best_acc1")
            # An epoch cut short restarts from its beginning; realigning the schedule to the
            # epoch boundary also keeps it right if the world size (steps/epoch) changed.
            seek_lr_scheduler(lr_scheduler, start_epoch * steps_per_epoch)
        if args.mode == "evaluate":
            logger.info(
                "loaded %s (epochs completed: %s)", path, checkpoint.get("epochs_completed", "?")
            )
        else:
            logger.info(
                "resumed from %s: %d epochs completed, continuing at epoch %d",
                path,
                start_epoch,
                start_epoch + 1,
            )
    elif args.mode == "evaluate" and not args.pretrained:
        raise ValueError("--mode evaluate needs a checkpoint (--resume) or --pretrained weights")

    if args.mode == "evaluate":
        result = evaluate(model, criterion, data.val_loader, ctx, amp, channels_last)
        failed = gather_union(set(result.failed_images), ctx)
        logger.info(
            "evaluate: %s loss: %.4f samples: %d", format_eval(result), result.loss, result.samples
        )
        log_failed_images(failed, "evaluate")
        reporter.update({"acc1": result.acc1, "acc5": result.acc5}, force=True)
        return 0

    model_without_ddp = model
    if ctx.distributed:
        device_ids = [ctx.local_rank] if ctx.device.type in ("cuda", "npu") else None
        model = DistributedDataParallel(model, device_ids=device_ids)
    if args.compile:
        # Compiling the DDP wrapper lets dynamo split the graph at DDP's bucket boundaries,
        # so gradient all-reduces still overlap the backward pass. Evaluation runs the
        # unwrapped eager model.
        model = compile_model(model, args.compile_mode)

    return train(
        args,
        ctx,
        reporter,
        model=model,
        model_without_ddp=model_without_ddp,
        criterion=criterion,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        scaler=scaler,
        data=data,
        amp=amp,
        channels_last=channels_last,
        start_epoch=start_epoch,
        best_acc1=best_acc1,
        steps_per_epoch=steps_per_epoch,
    )


def train(
    args: argparse.Namespace,
    ctx: DistContext,
    reporter: Reporter,
    *,
    model: nn.Module,
    model_without_ddp: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler,
    data: Data,
    amp: AmpSettings,
    channels_last: bool,
    start_epoch: int,
    best_acc1: float | None,
    steps_per_epoch: int,
) -> int:
    evaluates = args.mode == "train_and_evaluate"
    saves = args.mode != "performance" and args.checkpoint_dir is not None
    global_step = start_epoch * steps_per_epoch
    failed_images: set[str] = set()
    fps_per_epoch: list[tuple[float, float]] = []
    reporter.update({"totalEpochs": args.epochs, "epoch": start_epoch, "step": global_step})

    for epoch in range(start_epoch, args.epochs):
        if args.max_train_steps is not None and global_step >= args.max_train_steps:
            break
        if data.train_sampler is not None:
            data.train_sampler.set_epoch(epoch)

        def report_interval(metrics: dict[str, float | int], epochs_done: int = epoch) -> None:
            reporter.update({**metrics, "epoch": epochs_done})

        result = train_one_epoch(
            model,
            criterion,
            optimizer,
            lr_scheduler,
            scaler,
            data.train_loader,
            ctx=ctx,
            epoch=epoch,
            global_step=global_step,
            amp=amp,
            channels_last=channels_last,
            print_freq=args.print_freq,
            max_train_steps=args.max_train_steps,
            on_log=report_interval,
            progress_bar=sys.stderr.isatty(),
        )
        global_step = result.global_step
        complete = result.steps >= steps_per_epoch
        epochs_done = epoch + 1 if complete else epoch
        if result.images:
            fps_per_epoch.append((result.fps, result.data_wait_share))
        new_failed = gather_union(result.failed_images, ctx) - failed_images
        failed_images |= new_failed
        log_failed_images(new_failed, f"epoch {epoch + 1}")

        evaluation: EvalResult | None = None
        if evaluates:
            broadcast_buffers(model_without_ddp, ctx)
            evaluation = evaluate(
                model_without_ddp, criterion, data.val_loader, ctx, amp, channels_last
            )
            new_failed = gather_union(set(evaluation.failed_images), ctx) - failed_images
            failed_images |= new_failed
            log_failed_images(new_failed, f"epoch {epoch + 1} evaluation")
            if best_acc1 is None or evaluation.acc1 > best_acc1:
                best_acc1 = evaluation.acc1
                if saves and ctx.is_main:
                    save_best(args, model_without_ddp, evaluation, epochs_done, data)

        checkpoint_path = None
        if saves and ctx.is_main:
            checkpoint_path = save_atomic(
                {
                    "model": model_without_ddp.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr_scheduler": lr_scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epochs_done - 1,  # index of the last completed epoch
                    "epochs_completed": epochs_done,
                    "step": global_step,
                    "best_acc1": best_acc1,
                    "acc1": evaluation.acc1 if evaluation else None,
                    "acc5": evaluation.acc5 if evaluation else None,
                    "arch": args.arch,
                    "num_classes": data.num_classes,
                    "classes": data.classes,
                    "args": plain_args(vars(args)),
                },
                Path(args.checkpoint_dir) / checkpoint_name(epochs_done, global_step),
            )
            prune_checkpoints(args.checkpoint_dir, args.keep_checkpoints)
            logger.info("saved checkpoint %s", checkpoint_path)

        if ctx.is_main:
            parts = [f"epoch: {epoch + 1}"]
            if evaluation is not None:
                parts.append(f"{format_eval(evaluation)} best Acc@1: {best_acc1:.3f}")
            parts.append(
                f"loss: {result.loss:.4f} FPS: {result.fps:.1f} "
                f"data-wait: {100 * result.data_wait_share:.1f}%"
            )
            if not complete:
                parts.append(f"(stopped at --max-train-steps {args.max_train_steps})")
            logger.info(" ".join(parts))
        status: dict[str, Any] = {
            "epoch": epochs_done,
            "step": global_step,
            "loss": result.loss,
            "lr": result.lr,
        }
        if result.images:
            status.update(fps=result.fps, dataWaitShare=result.data_wait_share)
        if evaluation is not None:
            status.update(acc1=evaluation.acc1, acc5=evaluation.acc5, bestAcc1=best_acc1)
        if checkpoint_path is not None:
            status["checkpoint"] = str(checkpoint_path)
        reporter.update(status, force=True)
        if result.reached_max_steps:
            break

    if fps_per_epoch and ctx.is_main:
        fps = sum(f for f, _ in fps_per_epoch) / len(fps_per_epoch)
        wait = sum(w for _, w in fps_per_epoch) / len(fps_per_epoch)
        logger.info(
            "%s: FPS: %.1f data-wait: %.1f%% (%s, world size %d, batch %d per device, %d px, %d steps)",
            "performance" if args.mode == "performance" else "training done",
            fps,
            100 * wait,
            args.arch,
            ctx.world_size,
            args.batch_size,
            args.image_size,
            global_step,
        )
    log_failed_images(failed_images, "total")
    return 0


def save_best(
    args: argparse.Namespace,
    model: nn.Module,
    evaluation: EvalResult,
    epochs_done: int,
    data: Data,
) -> None:
    path = save_atomic(
        {
            "model": model.state_dict(),
            "epoch": epochs_done - 1,
            "epochs_completed": epochs_done,
            "acc1": evaluation.acc1,
            "acc5": evaluation.acc5,
            "arch": args.arch,
            "num_classes": data.num_classes,
            "classes": data.classes,
            "args": plain_args(vars(args)),
        },
        Path(args.checkpoint_dir) / BEST_MODEL_NAME,
    )
    logger.info("new best Acc@1 %.3f: saved %s", evaluation.acc1, path)


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
