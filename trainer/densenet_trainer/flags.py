"""Every flag of ``densenet-train`` and ``densenet-train launch``, in one place.

The recipe flags take their defaults from the contract's ``Recipe`` (``densenet_contract.recipe
.DEFAULTS``), so the operator's defaults are the trainer's; models, modes, schedules and devices
come from the contract too. The seeds' own spellings (seed 000: Huawei ModelZoo's DenseNet-161
for PyTorch, seed 002: DenseNet-121 for TensorFlow) are accepted beside ours, so that their
command lines run unchanged: aliases where a flag means the same, a mapping where it means the
same in other words (apex ``--opt-level``, ``--multiprocessing-distributed``, ``--eval_dir``),
and a logged one-line notice for flags that mean nothing under torchrun.

Standard library only (no torch): ``densenet-train --help`` and ``launch`` start fast.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Any

from densenet_contract import BACKEND_BY_TORCH_DEVICE, MODELS, TORCH_DEVICES
from densenet_contract.recipe import DEFAULTS, LR_SCHEDULES, MODES

DEVICES = ("auto", *TORCH_DEVICES)
AMP_DTYPES = ("auto", "bf16", "fp16")
SGD_IMPLS = ("auto", "fused", "foreach", "loop")
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
APEX_OPT_LEVELS = ("O0", "O1", "O2", "O3")
DEFAULT_ARCH = "densenet161"  # seed 000's model (spec.model has no default: it is required)
SYNTHETIC_STEPS = 100
DEFAULT_RANK_TABLE_TIMEOUT = 300.0  # Huawei's script: 60 polls x 5 s
DEFAULT_RANK_TABLE_POLL_INTERVAL = 5.0
# torchrun's own default (30 s) could kill a rank that is still writing its checkpoint.
DEFAULT_STOP_TIMEOUT = 900
NOTICES = "seed_notices"  # the Namespace attribute holding the seed flags' notices

_BACKENDS = ", ".join(
    f"{backend} on {device}" for device, backend in BACKEND_BY_TORCH_DEVICE.items()
)
_TORCHRUN_RANKS = "torchrun starts one process per device and sets RANK, LOCAL_RANK, WORLD_SIZE"
_TORCHRUN_RENDEZVOUS = "torchrun's --master-addr/--master-port (PET_MASTER_ADDR/PORT) rendezvous"

# The seeds' flags that mean nothing under torchrun: {flag: (takes a value, why it is ignored)}.
IGNORED_SEED_FLAGS: dict[str, tuple[bool, str]] = {
    "--addr": (True, f"{_TORCHRUN_RENDEZVOUS} replaces it"),
    "--dist-url": (True, f"{_TORCHRUN_RENDEZVOUS} replaces it"),
    "--dist-backend": (True, f"the backend follows --device ({_BACKENDS})"),
    "--world-size": (True, _TORCHRUN_RANKS),
    "--rank": (True, _TORCHRUN_RANKS),
    "--rank_size": (True, f"{_TORCHRUN_RANKS} (--nproc-per-node, PET_NPROC_PER_NODE)"),
    "--group_size": (True, _TORCHRUN_RANKS),
    "--gpu": (True, f"{_TORCHRUN_RANKS}; each process uses device LOCAL_RANK"),
    "--npu": (True, f"{_TORCHRUN_RANKS}; each process uses device LOCAL_RANK"),
    "--device-list": (
        True,
        "each process uses device LOCAL_RANK; choose the devices with "
        "ASCEND_RT_VISIBLE_DEVICES (or CUDA_VISIBLE_DEVICES)",
    ),
    "--loss-scale": (
        True,
        "--amp uses bf16 where the device has it (no loss scaling needed), else fp16 with "
        "torch's dynamic GradScaler (apex's dynamic loss scale)",
    ),
    "--iterations_per_loop": (True, "a TensorFlow-on-NPU loop setting; PyTorch steps eagerly"),
    "--epochs_between_evals": (True, "train_and_evaluate evaluates after every epoch"),
    "--log_name": (True, "the log goes to stdout (the pod's log)"),
}


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


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_notice(namespace: argparse.Namespace, text: str) -> None:
    """Keep a line for rank 0 to log once logging is set up (a new tuple: never shared)."""
    setattr(namespace, NOTICES, (*getattr(namespace, NOTICES, ()), text))


class IgnoredSeedFlag(argparse.Action):
    """A flag of the seeds' scripts with no meaning here: accepted, noted, and ignored."""

    def __init__(self, option_strings: Sequence[str], dest: str, why: str, **kwargs: Any):
        super().__init__(option_strings, argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)
        self.why = why

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        given = option_string if self.nargs == 0 else f"{option_string} {values}"
        add_notice(namespace, f"ignoring the seed flag {given}: {self.why}")


# ---------------------------------------------------------------- the training flags


def build_parser(prog: str = "densenet-train") -> argparse.ArgumentParser:
    """The training flags: the seeds' names, plus what a pod needs."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Train or evaluate a torchvision DenseNet on an ImageFolder dataset (or synthetic "
            "data), as one process or one process per device under torchrun."
        ),
        epilog=(
            "Pod entrypoint: 'densenet-train launch [--rank-table-timeout S] [flags above]' waits "
            "for the Ascend rank table when RANK_TABLE_FILE is set, then starts one process per "
            "local device with torchrun (see 'densenet-train launch --help'). The seeds' "
            "spellings (--epoch, --max_epochs, --batch_size, --data_dir, ...) are accepted too."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    parser.set_defaults(**{NOTICES: ()})
    _add_data_flags(parser)
    _add_model_flags(parser)
    _add_optimization_flags(parser)
    _add_run_flags(parser)
    _add_checkpoint_flags(parser)
    _add_seed_flags(parser)
    return parser


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group()
    source.add_argument(
        "--data",
        "--data_dir",
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
        default=SYNTHETIC_STEPS,
        metavar="N",
        help="optimizer steps per epoch with --synthetic (there is no dataset to define an epoch)",
    )
    data.add_argument(
        "-j",
        "--workers",
        dest="loader_workers",
        type=non_negative_int,
        default=DEFAULTS.workers,
        metavar="N",
        help="loader workers: DataLoader processes per training process (0 loads in the "
        "training process itself)",
    )
    data.add_argument(
        "--image-size",
        "--image_size",
        type=positive_int,
        default=DEFAULTS.image_size,
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
        "--num_classes",
        type=positive_int,
        default=None,
        metavar="N",
        help="number of classes: taken from train/ of the ImageFolder when omitted, "
        "1000 with --synthetic",
    )


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--arch", choices=MODELS, default=DEFAULT_ARCH, help="model architecture")
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
        "--fused-dense",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="run the dense blocks fused (docs/performance.md): each feature map's batch "
        "statistics computed once for all the layers that normalize it, no concatenated or "
        "normalized copies kept; computes what torchvision's model does, and checkpoints stay "
        "torchvision state dicts; not together with --compile (yet)",
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


def _add_optimization_flags(parser: argparse.ArgumentParser) -> None:
    optim = parser.add_argument_group("optimization")
    optim.add_argument(
        "--epochs",
        "--epoch",
        "--max_epochs",
        type=positive_int,
        default=DEFAULTS.epochs,
        metavar="N",
        help="total epochs to train",
    )
    optim.add_argument(
        "-b",
        "--batch-size",
        "--batch_size",
        type=positive_int,
        default=DEFAULTS.batch_size,
        metavar="N",
        help="images per device per step (the global batch is this times the world size)",
    )
    optim.add_argument(
        "--lr",
        type=non_negative_float,
        default=DEFAULTS.lr,
        metavar="LR",
        help="peak learning rate of SGD (the seeds use 0.1 for 1 device at batch 128, "
        "0.8 for 8 devices)",
    )
    optim.add_argument(
        "--momentum", type=float, default=DEFAULTS.momentum, metavar="M", help="SGD momentum"
    )
    optim.add_argument(
        "--weight-decay",
        "--weight_decay",
        "--wd",
        dest="weight_decay",
        type=non_negative_float,
        default=DEFAULTS.weight_decay,
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
        "--label_smoothing",
        type=non_negative_float,
        default=DEFAULTS.label_smoothing,
        metavar="EPS",
        help="label smoothing of the cross-entropy loss (seed 002 uses 0.1)",
    )
    optim.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=DEFAULTS.lr_schedule.type,
        help="after warm-up: 'step' multiplies the lr by --lr-gamma every --lr-step-size epochs; "
        "'cosine' anneals it to 0 at --epochs",
    )
    optim.add_argument(
        "--lr-step-size",
        type=positive_int,
        default=DEFAULTS.lr_schedule.step_size,
        metavar="EPOCHS",
        help="epochs between lr decays of the step schedule",
    )
    optim.add_argument(
        "--lr-gamma",
        type=float,
        default=DEFAULTS.lr_schedule.gamma,
        metavar="G",
        help="decay factor of the step schedule",
    )
    optim.add_argument(
        "--warmup-epochs",
        "--warmup_epochs",
        type=non_negative_float,
        default=float(DEFAULTS.warmup_epochs),
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
        "--amp-dtype", choices=AMP_DTYPES, default="auto", help="force the autocast dtype of --amp"
    )
    optim.add_argument(
        "--sgd-impl",
        choices=SGD_IMPLS,
        default="auto",
        help="SGD implementation: one fused kernel (fused), a few multi-tensor kernels "
        "(foreach), or a loop over the parameters (loop); auto: fused on cuda and cpu, "
        "torch's own choice on npu",
    )


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("run")
    run.add_argument(
        "--mode",
        choices=MODES,
        default=DEFAULTS.mode,
        help="train; evaluate (a checkpoint from --resume or --pretrained); train_and_evaluate "
        "(evaluate after every epoch); performance (train only, no evaluation or checkpoints, "
        "report FPS)",
    )
    run.add_argument(
        "--max-train-steps",
        "--max_train_steps",
        type=positive_int,
        default=DEFAULTS.max_steps,
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
        "--seed",
        type=int,
        default=DEFAULTS.seed,
        metavar="N",
        help="seed for weights, data order, augment",
    )
    run.add_argument(
        "--print-freq",
        "--display_every",
        type=positive_int,
        default=DEFAULTS.print_freq,
        metavar="STEPS",
        help="log a 'step: N epoch: E FPS: F loss: L lr: R' line every this many steps",
    )
    run.add_argument(
        "--status-interval",
        type=non_negative_float,
        default=10.0,
        metavar="SECONDS",
        help="at most one status.training patch per this many seconds (epoch ends and the final "
        "state are always sent); active when DENSENET_JOB_NAME and DENSENET_JOB_NAMESPACE are set",
    )


def _add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    ckpt = parser.add_argument_group("checkpoints")
    ckpt.add_argument(
        "--checkpoint-dir",
        "--log_dir",
        metavar="DIR",
        default=None,
        help="write a checkpoint after every epoch, at the end and on a graceful stop "
        "(SIGTERM), plus model_best.pth (seed 002's --log_dir: its checkpoints went there; the "
        "log goes to stdout)",
    )
    ckpt.add_argument(
        "--resume",
        metavar="PATH|auto",
        default=None,
        help="continue from a checkpoint file, or 'auto' for the newest one in --checkpoint-dir "
        "(starting fresh when there is none); training resumes at the step after the "
        "checkpoint's, mid-epoch too (checkpoints of older versions: at the next epoch)",
    )
    ckpt.add_argument(
        "--keep-checkpoints",
        type=non_negative_int,
        default=3,
        metavar="N",
        help="keep the newest N checkpoints (0 keeps all); model_best.pth is always kept",
    )
    every = {
        "steps": (positive_int, "N", "after every N-th global optimizer step"),
        "minutes": (positive_float, "M", "when M minutes (rank 0's clock) passed since the last"),
    }
    for unit, (kind, metavar, when) in every.items():
        ckpt.add_argument(
            f"--checkpoint-every-{unit}",
            type=kind,
            default=getattr(DEFAULTS, f"checkpoint_every_{unit}"),
            metavar=metavar,
            help=f"also write a checkpoint {when}",
        )
    ckpt.add_argument(
        "--loss-log",
        metavar="PATH",
        default=None,
        help="rank 0 appends one JSON line per optimizer step: "
        '{"step": N, "epoch": E, "loss": L, "lr": R} (a device sync per step: for checks)',
    )


def _add_seed_flags(parser: argparse.ArgumentParser) -> None:
    seeds = parser.add_argument_group(
        "the seeds' flags",
        "Flags of the ModelZoo scripts this trainer replaces, so that their command lines run "
        "unchanged; rank 0 logs one line for each saying what became of it.",
    )
    seeds.add_argument(
        "--opt-level",
        choices=APEX_OPT_LEVELS,
        default=argparse.SUPPRESS,
        help="apex's mixed precision level, read as ours: O0 (fp32) turns --amp off; O1, O2 and "
        "O3 turn it on (torch.autocast keeps fp32 weights, as O1 does: O2's fp16 master copy "
        "and O3's pure fp16 are not reproduced)",
    )
    seeds.add_argument(
        "--multiprocessing-distributed",
        action="store_true",
        default=argparse.SUPPRESS,
        help="as in the seeds' scripts, --batch-size and --workers are then per node: each of "
        "the node's torchrun processes (LOCAL_WORLD_SIZE) takes batch-size/N of the batch "
        "and ceil(workers/N) loader workers; the processes themselves come from torchrun",
    )
    seeds.add_argument(
        "--eval_dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="seed 002's checkpoint directory to evaluate: read as --checkpoint-dir DIR "
        "--resume auto (it wins over --log_dir)",
    )
    for flag, (takes_value, why) in IGNORED_SEED_FLAGS.items():
        seeds.add_argument(
            flag,
            action=IgnoredSeedFlag,
            why=why,
            nargs=None if takes_value else 0,
            metavar="X",
            help=f"ignored: {why}",
        )


def _apply_seed_flags(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """Turn the seeds' mapped flags into ours, order-independently, leaving no trace in args
    but their notices."""
    level = vars(args).pop("opt_level", None)
    if level is not None:
        args.amp = level != "O0"
        meaning = "--amp" if args.amp else "no --amp (apex O0 is fp32)"
        add_notice(args, f"the seed flag --opt-level {level} is read as {meaning}")
    eval_dir = vars(args).pop("eval_dir", None)
    if eval_dir is not None:
        args.checkpoint_dir = eval_dir
        args.resume = args.resume or "auto"
        add_notice(
            args,
            f"the seed flag --eval_dir is read as --checkpoint-dir {eval_dir} "
            f"--resume {args.resume}",
        )
    if vars(args).pop("multiprocessing_distributed", False):
        _split_per_node_values(args, int(env.get("LOCAL_WORLD_SIZE", "1")))


def _split_per_node_values(args: argparse.Namespace, local_processes: int) -> None:
    """The seeds' --multiprocessing-distributed: --batch-size and --workers are per node, and
    each process takes its share (batch rounded down, loader workers up, as the seeds do)."""
    batch, loader_workers = args.batch_size, args.loader_workers
    args.batch_size = max(1, batch // local_processes)
    args.loader_workers = -(-loader_workers // local_processes)
    add_notice(
        args,
        f"the seed flag --multiprocessing-distributed: --batch-size {batch} and --workers "
        f"{loader_workers} are per node; this node runs {local_processes} training "
        f"process{'es' if local_processes != 1 else ''} (LOCAL_WORLD_SIZE), each with "
        f"--batch-size {args.batch_size} --workers {args.loader_workers}",
    )


def parse_args(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> argparse.Namespace:
    """The training flags of ``argv``; ``env`` (os.environ) gives torchrun's LOCAL_WORLD_SIZE
    to the seeds' per-node values. ``args.seed_notices`` holds what rank 0 should log."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _apply_seed_flags(args, os.environ if env is None else env)
    if not args.synthetic and args.data is None:
        parser.error("one of --data PATH or --synthetic is required")
    if args.resume == "auto" and args.checkpoint_dir is None:
        parser.error("--resume auto needs --checkpoint-dir")
    if args.fused_dense and args.compile:
        # AOT autograd saves the buffer prefix a layer reads as a tensor whose version the
        # later layers' writes into the buffer advance, and then refuses to differentiate.
        parser.error("--fused-dense does not work with --compile (yet): choose one")
    if args.compile and (refusal := compile_refusal(args.device)):
        parser.error(refusal)
    return args


def compile_refusal(device_type: str) -> str | None:
    """Why --compile cannot run on ``device_type`` (None: it can). Asked at parse time for
    the --device given and again once --device auto has picked one."""
    if device_type == "npu":
        # torch.compile on Ascend needs torch_npu >= 2.6 and its inductor backend from the
        # separate triton-ascend package, which the trainer image does not carry.
        return (
            "--compile does not work on npu: torch.compile there needs torch_npu >= 2.6 with "
            "triton-ascend, which the trainer image does not install; train without --compile"
        )
    return None


# ---------------------------------------------------------------- the launcher's own flags


def build_launch_parser() -> argparse.ArgumentParser:
    """``densenet-train launch``'s flags; every other argument is a training flag, passed on
    untouched (parse_known_args)."""
    parser = argparse.ArgumentParser(
        prog="densenet-train launch",
        description=(
            "Pod entrypoint: wait for the Ascend rank table when RANK_TABLE_FILE is set, then "
            "run torchrun (forwarding SIGTERM and SIGINT to it; exit code 75 when every local "
            "training process stopped on request and saved), which reads its topology from the PET_NNODES, PET_NODE_RANK, "
            "PET_NPROC_PER_NODE, PET_MASTER_ADDR and PET_MASTER_PORT the operator sets (one "
            "node, one process without them). All other flags are training flags "
            "(densenet-train --help), passed on as they are."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--rank-table-timeout",
        type=non_negative_float,
        default=DEFAULT_RANK_TABLE_TIMEOUT,
        metavar="SECONDS",
        help='fail when RANK_TABLE_FILE does not say "status": "completed" within this time',
    )
    parser.add_argument(
        "--rank-table-poll-interval",
        type=non_negative_float,
        default=DEFAULT_RANK_TABLE_POLL_INTERVAL,
        metavar="SECONDS",
        help="seconds between reads of RANK_TABLE_FILE (when the API cannot be watched)",
    )
    parser.add_argument(
        "--rank-table-source",
        choices=("auto", "file"),
        default="auto",
        help="auto: watch the job's rank-table ConfigMap through the API (the pod's "
        "ServiceAccount), falling back to RANK_TABLE_FILE; file: only poll RANK_TABLE_FILE",
    )
    parser.add_argument(
        "--stop-timeout",
        type=non_negative_int,
        default=None,
        metavar="SECONDS",
        help="after SIGTERM, how long torchrun lets the training processes finish their step "
        "and checkpoint before it kills them (torchrun's TORCH_ELASTIC_SHUTDOWN_TIMEOUT; "
        f"default: that variable, else {DEFAULT_STOP_TIMEOUT}: the pod's "
        "terminationGracePeriodSeconds is then what bounds a graceful stop)",
    )
    return parser
