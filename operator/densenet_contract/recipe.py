"""The training recipe: one model for the CRD's `spec.recipe`, the operator's pod arguments and
the defaults of the trainer's flags. Defaults are the DenseNet-161 seed's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

from densenet_contract.schema import Rule, spec_field

Mode = Literal["train", "evaluate", "train_and_evaluate", "performance"]
LrScheduleType = Literal["step", "cosine"]
MODES: tuple[str, ...] = get_args(Mode)
LR_SCHEDULES: tuple[str, ...] = get_args(LrScheduleType)


@dataclass(frozen=True)
class LrSchedule:
    type: LrScheduleType = spec_field(
        "step",
        flag="--lr-schedule",
        description="After warm-up: step multiplies the lr by gamma every stepSize epochs; "
        "cosine anneals it to 0 at the last epoch.",
    )
    step_size: int = spec_field(
        30, minimum=1, flag="--lr-step-size", description="Epochs between decays (step)."
    )
    gamma: float = spec_field(
        0.1, minimum=0, exclusive_minimum=True, maximum=1, flag="--lr-gamma",
        description="Decay factor of the step schedule.",
    )  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    epochs: int = spec_field(90, minimum=1, maximum=10000, flag="--epochs")
    batch_size: int = spec_field(
        128, minimum=1, maximum=65536, flag="--batch-size", description="Per device."
    )
    lr: float = spec_field(
        0.1, minimum=0, exclusive_minimum=True, maximum=100, flag="--lr",
        description="Peak SGD learning rate (the seeds: 0.1 for 1 device, 0.8 for 8).",
    )  # fmt: skip
    momentum: float = spec_field(
        0.9, minimum=0, maximum=1, exclusive_maximum=True, flag="--momentum"
    )
    weight_decay: float = spec_field(1e-4, minimum=0, maximum=1, flag="--weight-decay")
    lr_schedule: LrSchedule = spec_field(LrSchedule)
    warmup_epochs: int = spec_field(0, minimum=0, flag="--warmup-epochs")
    label_smoothing: float = spec_field(
        0.0, minimum=0, maximum=1, exclusive_maximum=True, flag="--label-smoothing"
    )
    mixed_precision: bool | None = spec_field(
        None,
        flag="--amp",
        description="Autocast: bf16 where supported, else fp16 with a grad scaler. Default: "
        "true on ascend and cuda, false on cpu (bf16 autocast is about 11x slower on CPUs "
        "without native bf16).",
    )
    mode: Mode = spec_field(
        "train_and_evaluate",
        flag="--mode",
        description="train; evaluate (a checkpoint); train_and_evaluate (evaluate after every "
        "epoch); performance (train only, report FPS).",
    )
    max_steps: int | None = spec_field(
        None, minimum=1, flag="--max-train-steps",
        description="Stop after this many optimizer steps.",
    )  # fmt: skip
    workers: int = spec_field(
        8, minimum=0, maximum=128, flag="--workers", description="Data-loader processes per rank."
    )
    print_freq: int = spec_field(10, minimum=1, flag="--print-freq")
    image_size: int = spec_field(224, minimum=16, maximum=1024, flag="--image-size")
    seed: int | None = spec_field(
        None,
        minimum=0,
        maximum=2**31 - 1,
        flag="--seed",
        description="Seed of the weights, the data order and augmentation, the same on every "
        "restart of the gang, so that a resumed run sees the data order of an uninterrupted one.",
    )
    checkpoint_every_steps: int | None = spec_field(
        None,
        minimum=1,
        flag="--checkpoint-every-steps",
        description="Also write a checkpoint every this many optimizer steps (long epochs): a "
        "stop or a crash loses at most this much work. Default: at epoch ends only.",
    )
    checkpoint_every_minutes: float | None = spec_field(
        None,
        minimum=1,
        flag="--checkpoint-every-minutes",
        description="Also write a checkpoint when this many minutes passed since the last one.",
    )
    extra_args: tuple[str, ...] = spec_field(
        (), description="More densenet-train flags, appended as they are."
    )

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            # has(): the API server also checks the rule against the default `{}`, undefaulted.
            "!has(self.warmupEpochs) || !has(self.epochs) || self.warmupEpochs < self.epochs",
            "recipe.warmupEpochs must be smaller than recipe.epochs",
            lambda recipe: recipe.warmup_epochs < recipe.epochs,
            field_path=".warmupEpochs",
        ),
    )


DEFAULTS = Recipe()
