"""Command line of ``densenet-train``.

This module only builds the argument parser and dispatches: it imports neither torch nor
torch_npu, so ``densenet-train --help`` and ``densenet-train launch`` start fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

ARCHS = ("densenet121", "densenet161", "densenet169", "densenet201")
MODES = ("train", "evaluate", "train_and_evaluate", "performance")
DEVICES = ("auto", "npu", "cuda", "cpu")
LR_SCHEDULES = ("step", "cosine")
AMP_DTYPES = ("auto", "bf16", "fp16")
SGD_IMPLS = ("auto", "fused", "foreach", "loop")
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser(prog: str = "densenet-train") -> argparse.ArgumentParser:
    """The training flags: the seeds' names, plus what a pod needs."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Train or evaluate a torchvision DenseNet on an ImageFolder dataset (or synthetic data), "
            "as one process or one process per device under torchrun."
        ),
        epilog=(
            "Pod entrypoint: 'densenet-train launch [--rank-table-timeout S] [flags above]' waits for "
            "the Ascend rank table, then starts one process per local device with torchrun "
            "(see 'densenet-train launch --help')."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )

    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group()
    source.add_argument(
        "--data",
        metavar="PATH",
        help="dataset root holding the ImageFolder directories train/ and val/",
    )
    source.add_argument(
        "--synthetic",
        action="store_true",
        help="use random tensors generated on the device instead of a dataset (performance runs)",
    )
    data.add_argument(
        "--synthetic-steps",
        type=positive_int,
        default=100,
        metavar="N",
        help="optimizer steps per epoch with --synthetic (there is no dataset to define an epoch)",
    )
    data.add_argument(
        "-j",
        "--workers",
        type=non_negative_int,
        default=8,
        metavar="N",
        help="data loading worker processes per training process (0 loads in the main process)",
    )
    data.add_argument(
        "--image-size",
        type=positive_int,
        default=224,
        metavar="PX",
        help="training crop size; validation resizes to image_size*256/224 then center-crops",
    )
    data.add_argument(
        "--min-crop-scale",
        type=float,
        default=0.08,
        metavar="S",
        help="smallest area share of RandomResizedCrop (0.08 as in the seeds; small images "
        "such as 32 px digits train better with a milder crop, e.g. 0.35)",
    )
    data.add_argument(
        "--num-classes",
        type=positive_int,
        default=None,
        metavar="N",
        help="number of classes: taken from train/ of the ImageFolder when omitted, "
        "1000 with --synthetic",
    )

    model = parser.add_argument_group("model")
    model.add_argument("--arch", choices=ARCHS, default="densenet161", help="model architecture")
    model.add_argument(
        "--pretrained",
        metavar="PATH",
        default=None,
        help="initialize from a local weights file (a state_dict or a checkpoint of this trainer); "
        "nothing is downloaded; a classifier of another class count is left freshly initialized",
    )
    model.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use the channels_last memory format (default: on for cuda and cpu, where it "
        "measured faster; off for npu)",
    )
    model.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="torch.compile the model (the DDP-wrapped one under torchrun): fuses DenseNet's "
        "BatchNorm+ReLU+concat chains; the first steps pay a compile of a minute or more",
    )
    model.add_argument(
        "--compile-mode",
        choices=COMPILE_MODES,
        default="default",
        help="torch.compile mode of --compile ('max-autotune-no-cudagraphs' also benchmarks "
        "kernel choices: a much longer compile)",
    )

    optim = parser.add_argument_group("optimization")
    optim.add_argument(
        "--epochs", type=positive_int, default=90, metavar="N", help="total epochs to train"
    )
    optim.add_argument(
        "-b",
        "--batch-size",
        type=positive_int,
        default=128,
        metavar="N",
        help="images per device per step (the global batch is this times the world size)",
    )
    optim.add_argument(
        "--lr",
        type=non_negative_float,
        default=0.1,
        metavar="LR",
        help="peak learning rate of SGD (the seeds use 0.1 for 1 device at batch 128, "
        "0.8 for 8 devices)",
    )
    optim.add_argument("--momentum", type=float, default=0.9, metavar="M", help="SGD momentum")
    optim.add_argument(
        "--weight-decay",
        "--wd",
        dest="weight_decay",
        type=non_negative_float,
        default=1e-4,
        metavar="W",
        help="SGD weight decay",
    )
    optim.add_argument(
        "--no-bn-bias-decay",
        action="store_true",
        help="exclude BatchNorm parameters and biases from weight decay",
    )
    optim.add_argument(
        "--label-smoothing",
        type=non_negative_float,
        default=0.0,
        metavar="EPS",
        help="label smoothing of the cross-entropy loss (seed 002 uses 0.1)",
    )
    optim.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default="step",
        help="after warm-up: 'step' multiplies the lr by --lr-gamma every --lr-step-size epochs; "
        "'cosine' anneals it to 0 at --epochs",
    )
    optim.add_argument(
        "--lr-step-size",
        type=positive_int,
        default=30,
        metavar="EPOCHS",
        help="epochs between lr decays of the step schedule",
    )
    optim.add_argument(
        "--lr-gamma", type=float, default=0.1, metavar="G", help="decay factor of the step schedule"
    )
    optim.add_argument(
        "--warmup-epochs",
        type=non_negative_float,
        default=0.0,
        metavar="E",
        help="epochs of linear lr warm-up from lr/steps up to --lr (may be fractional)",
    )
    optim.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision with torch.autocast (bf16 where the device supports it, "
        "else fp16 with a GradScaler)",
    )
    optim.add_argument(
        "--sgd-impl",
        choices=SGD_IMPLS,
        default="auto",
        help="SGD implementation: one fused kernel (fused), a few multi-tensor kernels "
        "(foreach), or a loop over the parameters (loop); auto: fused on cuda and cpu, "
        "torch's own choice on npu",
    )
    optim.add_argument(
        "--amp-dtype",
        choices=AMP_DTYPES,
        default="auto",
        help="force the autocast dtype of --amp",
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--mode",
        choices=MODES,
        default="train_and_evaluate",
        help="train; evaluate (a checkpoint from --resume or --pretrained); train_and_evaluate "
        "(evaluate after every epoch); performance (train only, no evaluation or checkpoints, "
        "report FPS)",
    )
    run.add_argument(
        "--max-train-steps",
        type=positive_int,
        default=None,
        metavar="N",
        help="stop after N global optimizer steps (the lr schedule still spans --epochs)",
    )
    run.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto picks npu (when torch_npu is installed and sees a device), then cuda, then cpu",
    )
    run.add_argument(
        "--cudnn-benchmark",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let cuDNN time its algorithms for each layer's shapes once (cuda only)",
    )
    run.add_argument(
        "--seed", type=int, default=None, metavar="N", help="seed for weights, data order, augment"
    )
    run.add_argument(
        "--print-freq",
        type=positive_int,
        default=10,
        metavar="STEPS",
        help="log a 'step: N epoch: E FPS: F loss: L lr: R' line every this many steps",
    )

    ckpt = parser.add_argument_group("checkpoints")
    ckpt.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        default=None,
        help="write a checkpoint after every epoch and at the end, plus model_best.pth",
    )
    ckpt.add_argument(
        "--resume",
        metavar="PATH|auto",
        default=None,
        help="continue from a checkpoint file, or 'auto' for the newest one in --checkpoint-dir "
        "(starting fresh when there is none); training resumes at the next epoch",
    )
    ckpt.add_argument(
        "--keep-checkpoints",
        type=non_negative_int,
        default=3,
        metavar="N",
        help="keep the newest N epoch checkpoints (0 keeps all); model_best.pth is always kept",
    )

    status = parser.add_argument_group("status reporting")
    status.add_argument(
        "--status-interval",
        type=non_negative_float,
        default=10.0,
        metavar="SECONDS",
        help="at most one status.training patch per this many seconds (epoch ends and the final "
        "state are always sent); active when DENSENET_JOB_NAME and DENSENET_JOB_NAMESPACE are set",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.synthetic and args.data is None:
        parser.error("one of --data PATH or --synthetic is required")
    if args.resume == "auto" and args.checkpoint_dir is None:
        parser.error("--resume auto needs --checkpoint-dir")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``densenet-train``: training, or ``launch`` (the pod entrypoint)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "launch":
        from densenet_trainer.launch import main as launch_main

        return launch_main(argv[1:])
    args = parse_args(argv)
    from densenet_trainer.train import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
