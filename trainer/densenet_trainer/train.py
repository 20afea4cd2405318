"""Training entry point (what torchrun runs on every rank): ``python -m densenet_trainer.train``.

Laid out like torchvision's classification reference: ``main`` builds the run, engine.py's
``train_one_epoch`` and ``evaluate`` do the work. Everything the epochs advance lives in one
:class:`TrainingState`, which is also what a checkpoint saves and a resume restores.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from densenet_contract import EXIT_STOPPED_ON_REQUEST
from densenet_trainer.checkpoint import (
    BEST_MODEL_NAME,
    capture_rng_state,
    checkpoint_name,
    extract_state_dict,
    load_checkpoint,
    load_latest_checkpoint,
    load_pretrained,
    plain_args,
    prune_checkpoints,
    restore_rng_state,
    save_atomic,
)
from densenet_trainer.control import LossLog, StepControl
from densenet_trainer.data import SyntheticBatches, build_train_loader, build_val_loader
from densenet_trainer.distributed import (
    RULES_ENV,
    DistContext,
    barrier,
    broadcast_buffers,
    check_module_collectives,
    cleanup,
    gather_objects,
    gather_union,
    setup_distributed,
)
from densenet_trainer.engine import (
    AmpSettings,
    EvalResult,
    TrainEpochResult,
    amp_settings,
    build_grad_scaler,
    build_lr_scheduler,
    evaluate,
    seek_lr_scheduler,
    train_one_epoch,
)
from densenet_trainer.flags import NOTICES, compile_refusal, parse_args
from densenet_trainer.fused_dense import fused_densenet
from densenet_trainer.progress import (
    CHECKPOINTING,
    EVALUATING,
    STARTING,
    STOPPING,
    TRAINING,
    Activity,
    NullReporter,
    Reporter,
    progress_fields,
    reporter_from_env,
)
from densenet_trainer.runtime import describe_runtime
from densenet_trainer.stopping import (
    CheckpointTriggers,
    StopRequest,
    remove_stale_temp_files,
    write_stop_marker,
)

logger = logging.getLogger("densenet_trainer")

STATUS_CLOSE_TIMEOUT = 10.0
# Temporary files of checkpoint writes older than this are left over from a killed writer.
STALE_TEMP_SECONDS = 300.0
SYNTHETIC_NUM_CLASSES = 1000
# What a checkpoint holds beyond the weights, only to continue training (model_best.pth,
# meant for evaluation and fine-tuning, leaves it out).
RESUME_ONLY_KEYS = ("optimizer", "lr_scheduler", "scaler", "sampler", "rng")


def configure_logging(rank: int) -> None:
    """Rank 0 logs progress; the other ranks only warnings, tagged with their rank."""
    tag = "" if rank == 0 else f"[rank {rank}] "
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {tag}%(message)s"))
    logger.handlers.clear()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False


def build_model(arch: str, num_classes: int, fused_dense: bool = False) -> nn.Module:
    """torchvision's ``arch``, or with --fused-dense its fused form (same state dict, same
    seeded weights, same results: fused_dense.py)."""
    if fused_dense:
        return fused_densenet(arch, num_classes)
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
    batch_size: int = 0

    def start_epoch(self, epoch: int, step_in_epoch: int) -> None:
        """The next pass over the training data is epoch ``epoch`` after ``step_in_epoch``
        steps of it: the samples those steps trained are skipped, not loaded."""
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(epoch, position=step_in_epoch * self.batch_size)
        elif isinstance(self.train_loader, SyntheticBatches):
            self.train_loader.position = step_in_epoch

    def sampler_state(self, epoch: int, step_in_epoch: int) -> dict[str, int] | None:
        if self.train_sampler is None:
            return None
        return {
            "seed": self.train_sampler.seed,
            "epoch": epoch,
            "position": step_in_epoch * self.batch_size,
            "num_replicas": self.train_sampler.num_replicas,
            "batch_size": self.batch_size,
        }


def build_data(args: argparse.Namespace, ctx: DistContext, channels_last: bool) -> Data:
    trains = args.mode != "evaluate"
    evaluates = args.mode in ("evaluate", "train_and_evaluate")
    if args.synthetic:
        return synthetic_data(args, ctx, channels_last, trains, evaluates)
    data = Data(batch_size=args.batch_size)
    class_lists = []
    if trains:
        data.train_loader, train_set, data.train_sampler = build_train_loader(
            args.data,
            args.image_size,
            args.batch_size,
            args.loader_workers,
            ctx,
            args.seed,
            args.min_crop_scale,
        )
        class_lists.append(train_set.classes)
    if evaluates:
        data.val_loader, val_set = build_val_loader(
            args.data, args.image_size, args.batch_size, args.loader_workers, ctx
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


def synthetic_data(
    args: argparse.Namespace, ctx: DistContext, channels_last: bool, trains: bool, evaluates: bool
) -> Data:
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
        val_loader=batches(max(1, args.synthetic_steps // 10), 1_000_003) if evaluates else None,
        num_classes=num_classes,
        batch_size=args.batch_size,
    )


@dataclass
class TrainingState:
    """What the epochs advance: the model and its optimizer, schedule and grad scaler, the
    counters, the best accuracy, plus the data and how steps run. A checkpoint is this state
    (:meth:`checkpoint`); a resume restores it (:meth:`restore`)."""

    model: nn.Module  # what the steps run: DDP-wrapped and/or compiled under torchrun
    model_without_ddp: nn.Module  # the plain module: evaluation and state_dicts
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    data: Data
    amp: AmpSettings
    channels_last: bool
    steps_per_epoch: int
    epochs_completed: int = 0  # also the 0-based index of the next epoch
    global_step: int = 0
    best_acc1: float | None = None
    step_in_epoch: int = 0  # optimizer steps done of epoch `epochs_completed`
    saved_step: int | None = None  # global step of the newest checkpoint

    def checkpoint(self, args: argparse.Namespace, evaluation: EvalResult | None) -> dict[str, Any]:
        """The checkpoint of this state; without RESUME_ONLY_KEYS it is model_best.pth.
        save() adds each rank's random generators ("rng"), "world_size" and "reason"."""
        return {
            "model": self.model_without_ddp.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epochs_completed - 1,  # index of the last completed epoch
            "epochs_completed": self.epochs_completed,
            "step": self.global_step,
            "step_in_epoch": self.step_in_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "sampler": self.data.sampler_state(self.epochs_completed, self.step_in_epoch),
            "best_acc1": self.best_acc1,
            "acc1": evaluation.acc1 if evaluation else None,
            "acc5": evaluation.acc5 if evaluation else None,
            "arch": args.arch,
            "num_classes": self.data.num_classes,
            "classes": self.data.classes,
            "args": plain_args({k: v for k, v in vars(args).items() if k != NOTICES}),
        }

    def restore(self, checkpoint: dict[str, Any], ctx: DistContext) -> None:
        """Continue where ``checkpoint`` (one with RESUME_ONLY_KEYS) ended: at its very step
        when it can (:func:`exact_resume_refusal`), else at the start of its epoch."""
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if self.scaler.is_enabled() and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.epochs_completed = int(checkpoint["epoch"]) + 1
        self.best_acc1 = checkpoint.get("best_acc1")
        self.saved_step = checkpoint.get("step")
        refusal = exact_resume_refusal(checkpoint, self, ctx)
        if refusal is None:
            self.global_step = int(checkpoint["step"])
            self.step_in_epoch = int(checkpoint["step_in_epoch"])
            restore_rng_state(checkpoint["rng"][ctx.rank], ctx.device.type)
            return
        if checkpoint.get("step_in_epoch"):
            logger.warning(
                "cannot continue epoch %d at its step %d (%s): it restarts from its beginning",
                self.epochs_completed + 1,
                checkpoint["step_in_epoch"] + 1,
                refusal,
            )
        self.step_in_epoch = 0
        self.global_step = self.epochs_completed * self.steps_per_epoch
        # An epoch cut short restarts from its beginning; realigning the schedule to the
        # epoch boundary also keeps it right if the world size (steps/epoch) changed.
        seek_lr_scheduler(self.lr_scheduler, self.global_step)


def exact_resume_refusal(
    checkpoint: dict[str, Any], state: TrainingState, ctx: DistContext
) -> str | None:
    """Why ``checkpoint`` cannot continue at its exact step here (None: it can)."""
    if "step_in_epoch" not in checkpoint or "rng" not in checkpoint:
        return "a checkpoint without the position in its epoch"
    if checkpoint.get("world_size") != ctx.world_size or len(checkpoint["rng"]) != ctx.world_size:
        return f"saved by {checkpoint.get('world_size')} ranks, now {ctx.world_size}"
    if checkpoint.get("steps_per_epoch") != state.steps_per_epoch:
        return (
            f"{checkpoint.get('steps_per_epoch')} steps per epoch then, {state.steps_per_epoch} now"
        )
    saved, now = checkpoint.get("sampler"), state.data.sampler_state(0, 0)
    if saved is not None and now is not None:
        for key in ("seed", "batch_size"):
            if saved.get(key) != now[key]:
                return f"data {key} {saved.get(key)} then, {now[key]} now"
    return None


def configure(args: argparse.Namespace, ctx: DistContext) -> tuple[AmpSettings, bool]:
    """Seeds and backend switches; returns the autocast settings and channels_last."""
    if args.compile and (refusal := compile_refusal(ctx.device.type)):
        raise ValueError(refusal)  # --device auto picked a device --compile cannot run on
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
        "compile %s, sgd %s, fused dense blocks %s",
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
        "on" if args.fused_dense else "off",
    )
    return amp, channels_last


def build_state(
    args: argparse.Namespace, ctx: DistContext, amp: AmpSettings, channels_last: bool
) -> TrainingState:
    """Data, model (on the device, not yet wrapped), optimizer, lr schedule, grad scaler."""
    data = build_data(args, ctx, channels_last)
    model = build_model(args.arch, data.num_classes, args.fused_dense)
    if args.pretrained:
        fresh = load_pretrained(model, args.pretrained)
        logger.info("initialized from %s (left fresh: %s)", args.pretrained, fresh or "none")
    model.to(ctx.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
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
    return TrainingState(
        model=model,
        model_without_ddp=model,
        criterion=nn.CrossEntropyLoss(label_smoothing=args.label_smoothing),
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        scaler=build_grad_scaler(amp),
        data=data,
        amp=amp,
        channels_last=channels_last,
        steps_per_epoch=steps_per_epoch,
    )


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


def resume(args: argparse.Namespace, ctx: DistContext, state: TrainingState) -> None:
    """Load --resume into ``state``: the weights, and to train on, the rest of the state."""
    if args.mode == "performance":
        if args.resume:
            logger.info("performance mode: ignoring --resume (it neither loads nor saves)")
        return
    found = find_resume_checkpoint(args)
    if found is None:
        if args.mode == "evaluate" and not args.pretrained:
            raise ValueError(
                "--mode evaluate needs a checkpoint (--resume) or --pretrained weights"
            )
        return
    path, checkpoint = found
    state.model_without_ddp.load_state_dict(extract_state_dict(checkpoint))
    if args.mode == "evaluate":
        completed = checkpoint.get("epochs_completed", "?")
        logger.info("loaded %s (epochs completed: %s)", path, completed)
        return
    if "optimizer" in checkpoint:
        state.restore(checkpoint, ctx)
    within = ""
    if state.step_in_epoch:
        within = (
            f" at its step {state.step_in_epoch + 1} of {state.steps_per_epoch} "
            f"(global step {state.global_step + 1})"
        )
    logger.info(
        "resumed from %s: %d epochs completed, continuing at epoch %d%s",
        path,
        state.epochs_completed,
        state.epochs_completed + 1,
        within,
    )


def wrap_model(args: argparse.Namespace, ctx: DistContext, state: TrainingState) -> None:
    """DDP under torchrun, then torch.compile with --compile; state dicts stay unwrapped."""
    if ctx.distributed:
        check_module_collectives(state.model_without_ddp, ctx)
        device_ids = [ctx.local_rank] if ctx.device.type in ("cuda", "npu") else None
        state.model = DistributedDataParallel(state.model_without_ddp, device_ids=device_ids)
    if args.compile:
        # Compiling the DDP wrapper lets dynamo split the graph at DDP's bucket boundaries,
        # so gradient all-reduces still overlap the backward pass. Evaluation runs the
        # unwrapped eager model.
        state.model = compile_model(state.model, args.compile_mode)


def format_eval(result: EvalResult) -> str:
    return f"Acc@1: {result.acc1:.3f} Acc@5: {result.acc5:.3f}"


def log_failed_images(paths: set[str], when: str) -> None:
    if paths:
        shown = ", ".join(sorted(paths)[:10])
        more = f" and {len(paths) - 10} more" if len(paths) > 10 else ""
        logger.warning(
            "%s: skipped %d images that failed to decode: %s%s", when, len(paths), shown, more
        )


def collect_failed_images(
    seen: set[str], local: Iterable[str], ctx: DistContext, when: str
) -> None:
    """Add the images any rank failed to decode to ``seen``, logging the new ones."""
    new = gather_union(set(local), ctx) - seen
    seen |= new
    log_failed_images(new, when)


def evaluate_state(ctx: DistContext, state: TrainingState) -> EvalResult:
    """engine.evaluate on the unwrapped model (ranks may run different numbers of batches)."""
    return evaluate(
        state.model_without_ddp,
        state.criterion,
        state.data.val_loader,
        ctx,
        state.amp,
        state.channels_last,
    )


def evaluate_only(ctx: DistContext, state: TrainingState, reporter: Reporter) -> int:
    """--mode evaluate: one pass over val/ with the loaded weights."""
    result = evaluate_state(ctx, state)
    failed = gather_union(set(result.failed_images), ctx)
    logger.info(
        "evaluate: %s loss: %.4f samples: %d", format_eval(result), result.loss, result.samples
    )
    log_failed_images(failed, "evaluate")
    reporter.update({"acc1": result.acc1, "acc5": result.acc5}, force=True)
    return 0


# ---------------------------------------------------------------- the epochs


@dataclass
class Loop:
    """A training run's moving parts besides its state: where it reports, how the ranks
    agree between steps, and the optional loss log."""

    args: argparse.Namespace
    ctx: DistContext
    state: TrainingState
    reporter: Reporter
    activity: Activity
    control: StepControl
    loss_log: LossLog
    last_checkpoint: Path | None = None


def progress_of(loop: Loop, step: int, fps: float | None) -> dict[str, Any]:
    """progress and etaSeconds for status.training: the planned steps are the epochs' (or
    --max-train-steps, when fewer), at batch x world size images a step."""
    args, state = loop.args, loop.state
    planned = args.epochs * state.steps_per_epoch
    if args.max_train_steps is not None:
        planned = min(planned, args.max_train_steps)
    return progress_fields(step, planned, fps, args.batch_size * loop.ctx.world_size)


def writes_checkpoints(args: argparse.Namespace) -> bool:
    return args.mode != "performance" and args.checkpoint_dir is not None


def train_epoch(loop: Loop, epoch: int) -> TrainEpochResult:
    """engine.train_one_epoch on the state, from its position in ``epoch`` on; advances the
    step and epoch counters. A stop on request leaves the epoch open (even after its last
    step: a resumed run then evaluates and checkpoints it)."""
    state = loop.state
    state.data.start_epoch(epoch, state.step_in_epoch)

    def report_interval(metrics: dict[str, float | int]) -> None:
        progress = progress_of(loop, int(metrics["step"]), float(metrics.get("fps") or 0))
        loop.reporter.update({**metrics, "epoch": epoch, **progress})

    def on_step(global_step: int, loss: torch.Tensor) -> bool:
        return after_step(loop, epoch, global_step, loss)

    result = train_one_epoch(
        state.model,
        state.criterion,
        state.optimizer,
        state.lr_scheduler,
        state.scaler,
        state.data.train_loader,
        ctx=loop.ctx,
        epoch=epoch,
        global_step=state.global_step,
        amp=state.amp,
        channels_last=state.channels_last,
        print_freq=loop.args.print_freq,
        max_train_steps=loop.args.max_train_steps,
        on_log=report_interval,
        progress_bar=sys.stderr.isatty(),
        on_step=on_step,
    )
    result.stopped = result.stopped and not result.reached_max_steps  # done beats stopped
    state.global_step = result.global_step
    if state.step_in_epoch >= state.steps_per_epoch and not result.stopped:
        state.epochs_completed = epoch + 1
        state.step_in_epoch = 0
    return result


def after_step(loop: Loop, epoch: int, global_step: int, loss: torch.Tensor) -> bool:
    """Between two steps, on every rank: count the step, log its loss, and do what all
    ranks agree on (a periodic checkpoint); True: stop here."""
    state = loop.state
    state.global_step = global_step
    state.step_in_epoch += 1
    loop.loss_log.write(global_step, epoch, loss, state.optimizer.param_groups[0]["lr"])
    loop.activity.set(TRAINING)
    decision = loop.control.decide(global_step)
    max_steps = loop.args.max_train_steps
    ends_epoch = state.step_in_epoch >= state.steps_per_epoch or (
        max_steps is not None and global_step >= max_steps
    )
    # The end of an epoch saves anyway (after its evaluation), and so does a stop.
    if decision.checkpoint and not decision.stop and not ends_epoch:
        if writes_checkpoints(loop.args):
            loop.activity.set(CHECKPOINTING)
        path = save(loop, None, "periodic")
        if path is not None:
            loop.reporter.update({"checkpoint": str(path), "step": global_step}, force=True)
    return decision.stop


def evaluate_epoch(
    ctx: DistContext, state: TrainingState, failed_images: set[str], epoch: int
) -> EvalResult:
    """Evaluate the model every rank now holds (rank 0's BatchNorm statistics)."""
    broadcast_buffers(state.model_without_ddp, ctx)
    evaluation = evaluate_state(ctx, state)
    collect_failed_images(
        failed_images, evaluation.failed_images, ctx, f"epoch {epoch + 1} evaluation"
    )
    return evaluation


def save(loop: Loop, evaluation: EvalResult | None, reason: str) -> Path | None:
    """On every rank (it gathers the ranks' random generators): track the best Acc@1; rank 0
    writes the checkpoint (and model_best.pth when this evaluation is the best so far) into
    --checkpoint-dir. ``reason``: epoch, max-train-steps, periodic or stop. Returns the
    checkpoint's path."""
    args, ctx, state = loop.args, loop.ctx, loop.state
    is_best = evaluation is not None and (
        state.best_acc1 is None or evaluation.acc1 > state.best_acc1
    )
    if evaluation is not None and is_best:
        state.best_acc1 = evaluation.acc1
    state.saved_step = state.global_step
    loop.control.triggers.saved()
    if not writes_checkpoints(args):
        return None
    rng = gather_objects(capture_rng_state(ctx.device.type), ctx)
    if not ctx.is_main:
        return None
    directory = Path(args.checkpoint_dir)
    checkpoint = {
        **state.checkpoint(args, evaluation),
        "rng": rng,
        "world_size": ctx.world_size,
        "reason": reason,
    }
    if evaluation is not None and is_best:
        best = {key: value for key, value in checkpoint.items() if key not in RESUME_ONLY_KEYS}
        path = save_atomic(best, directory / BEST_MODEL_NAME)
        logger.info("new best Acc@1 %.3f: saved %s", evaluation.acc1, path)
    path = save_atomic(
        checkpoint, directory / checkpoint_name(state.epochs_completed, state.global_step)
    )
    prune_checkpoints(directory, args.keep_checkpoints)
    logger.info("saved checkpoint %s (%s)", path, reason)
    loop.last_checkpoint = path
    return path


def stop_on_request(loop: Loop) -> int:
    """Every rank, after the step all agreed on: rank 0 saves (unless the newest checkpoint
    is of this very step), everyone waits for it, and the run ends with
    EXIT_STOPPED_ON_REQUEST."""
    state = loop.state
    loop.activity.set(STOPPING, {"step": state.global_step})
    if state.saved_step != state.global_step and state.global_step > 0:
        save(loop, None, "stop")
    barrier(loop.ctx)  # no rank leaves before the checkpoint is complete
    stop = loop.control.stop
    stop.stopped_at = state.global_step
    stop.checkpoint = str(loop.last_checkpoint) if loop.last_checkpoint else None
    logger.info(
        "stopped on request after step %d (epoch %d, %d of its %d steps done); "
        "work since the checkpoint: %d steps; checkpoint: %s; exit %d",
        state.global_step,
        state.epochs_completed + 1,
        state.step_in_epoch,
        state.steps_per_epoch,
        state.global_step - (state.saved_step or 0),
        stop.checkpoint or "none (no --checkpoint-dir, or performance mode)",
        EXIT_STOPPED_ON_REQUEST,
    )
    if stop.checkpoint:
        loop.reporter.update({"checkpoint": stop.checkpoint, "step": state.global_step}, force=True)
    return EXIT_STOPPED_ON_REQUEST


def log_epoch(
    args: argparse.Namespace,
    state: TrainingState,
    epoch: int,
    result: TrainEpochResult,
    evaluation: EvalResult | None,
) -> None:
    parts = [f"epoch: {epoch + 1}"]
    if evaluation is not None:
        parts.append(f"{format_eval(evaluation)} best Acc@1: {state.best_acc1:.3f}")
    parts.append(
        f"loss: {result.loss:.4f} FPS: {result.fps:.1f} "
        f"data-wait: {100 * result.data_wait_share:.1f}%"
    )
    if state.epochs_completed <= epoch:
        parts.append(f"(stopped at --max-train-steps {args.max_train_steps})")
    logger.info(" ".join(parts))


def epoch_status(
    state: TrainingState,
    result: TrainEpochResult,
    evaluation: EvalResult | None,
    checkpoint_path: Path | None,
) -> dict[str, Any]:
    """status.training at the end of an epoch."""
    status: dict[str, Any] = {
        "epoch": state.epochs_completed,
        "step": state.global_step,
        "loss": result.loss,
        "lr": result.lr,
    }
    if result.images:
        status.update(fps=result.fps, dataWaitShare=result.data_wait_share)
    if evaluation is not None:
        status.update(acc1=evaluation.acc1, acc5=evaluation.acc5, bestAcc1=state.best_acc1)
    if checkpoint_path is not None:
        status["checkpoint"] = str(checkpoint_path)
    return status


def log_summary(
    args: argparse.Namespace,
    ctx: DistContext,
    state: TrainingState,
    measured: list[TrainEpochResult],
) -> None:
    """Mean FPS and data-wait share over the epochs that had a steady-state measurement."""
    if not measured:
        return
    fps = sum(result.fps for result in measured) / len(measured)
    wait = sum(result.data_wait_share for result in measured) / len(measured)
    logger.info(
        "%s: FPS: %.1f data-wait: %.1f%% (%s, world size %d, batch %d per device, %d px, %d steps)",
        "performance" if args.mode == "performance" else "training done",
        fps,
        100 * wait,
        args.arch,
        ctx.world_size,
        args.batch_size,
        args.image_size,
        state.global_step,
    )


def finish_epoch(loop: Loop, epoch: int, result: TrainEpochResult, failed_images: set[str]) -> None:
    """Evaluate (train_and_evaluate), save, log and report the end of ``epoch``."""
    args, ctx, state = loop.args, loop.ctx, loop.state
    evaluation = None
    if args.mode == "train_and_evaluate":
        loop.activity.set(EVALUATING)
        evaluation = evaluate_epoch(ctx, state, failed_images, epoch)
    if writes_checkpoints(args):
        loop.activity.set(CHECKPOINTING)
    reason = "epoch" if state.epochs_completed > epoch else "max-train-steps"
    checkpoint_path = save(loop, evaluation, reason)
    log_epoch(args, state, epoch, result, evaluation)
    status = epoch_status(state, result, evaluation, checkpoint_path)
    status.update(progress_of(loop, state.global_step, result.fps if result.images else None))
    loop.reporter.update(status, force=True)


def train(loop: Loop) -> int:
    """Epochs from the state's position to --epochs (or to --max-train-steps); 0 when done,
    EXIT_STOPPED_ON_REQUEST after a graceful stop."""
    args, ctx, state = loop.args, loop.ctx, loop.state
    failed_images: set[str] = set()
    measured: list[TrainEpochResult] = []
    loop.reporter.update(
        {"totalEpochs": args.epochs, "epoch": state.epochs_completed, "step": state.global_step}
    )
    for epoch in range(state.epochs_completed, args.epochs):
        if args.max_train_steps is not None and state.global_step >= args.max_train_steps:
            break
        # A request that came during start-up, evaluation or a save stops before the epoch.
        if loop.control.decide(state.global_step, after_step=False).stop:
            return stop_on_request(loop)
        result = train_epoch(loop, epoch)
        if result.images:
            measured.append(result)
        collect_failed_images(failed_images, result.failed_images, ctx, f"epoch {epoch + 1}")
        if result.stopped:
            return stop_on_request(loop)
        finish_epoch(loop, epoch, result, failed_images)
        if result.reached_max_steps:
            break
    log_summary(args, ctx, state, measured)
    log_failed_images(failed_images, "total")
    return 0


# ---------------------------------------------------------------- entry points


def run(args: argparse.Namespace, reporter: Reporter | None = None) -> int:
    """Train or evaluate as ``args`` say; ``reporter`` replaces the progress reporter from the
    environment (bench/trainer_bench.py records each epoch's FPS through it). Returns the
    exit code: 0, or EXIT_STOPPED_ON_REQUEST after a graceful stop (SIGTERM, SIGINT)."""
    ctx = setup_distributed(args.device)
    configure_logging(ctx.rank)
    for notice in getattr(args, NOTICES, ()):
        logger.info("%s", notice)
    if ctx.rules.backend != ctx.backend:
        logger.info(
            "collectives held to %s's dtype rules on the %s backend (%s)",
            ctx.rules.backend, ctx.backend, RULES_ENV,
        )  # fmt: skip
    active: Reporter = NullReporter()
    stop = StopRequest()
    try:
        if reporter is not None:
            active = reporter
        else:
            active = reporter_from_env(ctx.is_main, args.status_interval)
        code = _run(args, ctx, active, stop)
    finally:
        active.close(STATUS_CLOSE_TIMEOUT)
        cleanup(ctx)
    if code == EXIT_STOPPED_ON_REQUEST:  # the process group is gone: tell the launcher
        write_stop_marker(os.environ, stop.stopped_at or 0, stop.checkpoint)
    return code


def _run(args: argparse.Namespace, ctx: DistContext, reporter: Reporter, stop: StopRequest) -> int:
    activity = Activity(reporter)
    runtime = describe_runtime(ctx.device.type)
    logger.info("runtime: %s", runtime)
    activity.set(STARTING, {"runtime": runtime})
    amp, channels_last = configure(args, ctx)
    state = build_state(args, ctx, amp, channels_last)
    resume(args, ctx, state)
    if args.mode == "evaluate":
        activity.set(EVALUATING)
        return evaluate_only(ctx, state, reporter)
    wrap_model(args, ctx, state)
    if ctx.is_main and writes_checkpoints(args):
        remove_stale_temp_files(args.checkpoint_dir, older_than=STALE_TEMP_SECONDS)
    triggers = CheckpointTriggers(args.checkpoint_every_steps, args.checkpoint_every_minutes)
    control = StepControl(ctx, stop, triggers)
    loop = Loop(args, ctx, state, reporter, activity, control, LossLog(args.loss_log, ctx.is_main))
    try:
        # From here on SIGTERM/SIGINT ask for a graceful stop; before, nothing was trained.
        with stop.installed():
            return train(loop)
    finally:
        loop.loss_log.close()


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
