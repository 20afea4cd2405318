from __future__ import annotations

import subprocess
import sys

import pytest

from densenet_contract.recipe import DEFAULTS, Recipe
from densenet_contract.schema import flag_fields, trainer_flags
from densenet_trainer.flags import build_parser, parse_args

from .conftest import DENSENET_TRAIN, run_cli

SEED_FLAGS = [
    "--data",
    "--arch",
    "--workers",
    "--epochs",
    "--batch-size",
    "--lr",
    "--momentum",
    "--weight-decay",
    "--amp",
    "--label-smoothing",
    "--warmup-epochs",
    "--lr-schedule",
    "--lr-step-size",
    "--lr-gamma",
    "--mode",
    "--max-train-steps",
    "--synthetic",
    "--pretrained",
    "--checkpoint-dir",
    "--resume",
    "--device",
    "--print-freq",
    "--seed",
    "--image-size",
    "--num-classes",
    "--channels-last",
    "--no-channels-last",
    "--status-interval",
]


def test_defaults_follow_the_seed_recipe() -> None:
    args = parse_args(["--data", "/data/imagenet"])
    assert args.arch == "densenet161"
    assert (args.lr, args.momentum, args.weight_decay) == (0.1, 0.9, 1e-4)
    assert (args.lr_schedule, args.lr_step_size, args.lr_gamma) == ("step", 30, 0.1)
    assert (args.epochs, args.batch_size, args.image_size) == (90, 128, 224)
    assert args.mode == "train_and_evaluate"
    assert args.device == "auto"
    assert args.channels_last is None  # auto: decided per device
    assert args.amp is False
    assert args.status_interval == 10.0
    assert args.resume is None and args.checkpoint_dir is None


def test_every_flag_is_parsed() -> None:
    args = parse_args(
        [
            "--synthetic",
            "--arch=densenet121",
            "--workers=2",
            "--epochs=150",
            "--batch-size=32",
            "--lr=0.8",
            "--momentum=0.8",
            "--wd=5e-5",
            "--amp",
            "--amp-dtype=fp16",
            "--label-smoothing=0.1",
            "--warmup-epochs=0.5",
            "--lr-schedule=cosine",
            "--mode=performance",
            "--max-train-steps=100",
            "--pretrained=/w.pth",
            "--checkpoint-dir=/ckpt",
            "--resume=auto",
            "--device=cpu",
            "--print-freq=5",
            "--seed=7",
            "--image-size=32",
            "--num-classes=10",
            "--no-channels-last",
            "--status-interval=2.5",
            "--no-bn-bias-decay",
        ]
    )
    assert args.synthetic and args.data is None
    assert (args.arch, args.epochs, args.batch_size) == ("densenet121", 150, 32)
    assert args.loader_workers == 2
    assert (args.lr, args.momentum, args.weight_decay) == (0.8, 0.8, 5e-5)
    assert args.amp and args.amp_dtype == "fp16"
    assert (args.label_smoothing, args.warmup_epochs, args.lr_schedule) == (0.1, 0.5, "cosine")
    assert (args.mode, args.max_train_steps) == ("performance", 100)
    assert (args.pretrained, args.checkpoint_dir, args.resume) == ("/w.pth", "/ckpt", "auto")
    assert (args.device, args.print_freq, args.seed) == ("cpu", 5, 7)
    assert (args.image_size, args.num_classes, args.channels_last) == (32, 10, False)
    assert args.status_interval == 2.5 and args.no_bn_bias_decay
    assert parse_args(["--synthetic", "--channels-last"]).channels_last is True


@pytest.mark.parametrize(
    "argv",
    [
        [],  # neither --data nor --synthetic
        ["--data", "/d", "--synthetic"],
        ["--synthetic", "--arch", "resnet50"],
        ["--synthetic", "--mode", "infer"],
        ["--synthetic", "--device", "tpu"],
        ["--synthetic", "--batch-size", "0"],
        ["--synthetic", "--lr", "-1"],
        ["--synthetic", "--resume", "auto"],  # auto needs --checkpoint-dir
    ],
)
def test_bad_command_lines_are_rejected(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2


def test_help_explains_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for flag in SEED_FLAGS:
        assert flag in text, flag
    assert "launch" in text


def test_console_script_help_runs() -> None:
    out = run_cli([DENSENET_TRAIN, "--help"]).stdout
    assert "usage: densenet-train" in out
    out = run_cli([sys.executable, "-m", "densenet_trainer", "launch", "--help"]).stdout
    assert "--rank-table-timeout" in out


def test_importing_the_cli_loads_neither_torch_nor_torch_npu() -> None:
    code = (
        "import sys, densenet_trainer.cli, densenet_trainer.launch, densenet_trainer.flags; "
        "print(sorted(m for m in ('torch', 'torch_npu', 'torchvision', 'kopf') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_trainer_does_not_import_the_operator() -> None:
    code = (
        "import sys, densenet_trainer.train, densenet_trainer.launch, densenet_trainer.progress; "
        "print([m for m in sys.modules if m.startswith(('kopf', 'densenet_operator', 'torch_npu'))])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def dests_by_flag() -> dict[str, str]:
    return {
        flag: action.dest for action in build_parser()._actions for flag in action.option_strings
    }


def test_every_recipe_flag_of_the_contract_is_a_trainer_flag() -> None:
    dests = dests_by_flag()
    missing = [flag for flag in flag_fields(Recipe) if flag not in dests]
    assert missing == []


def test_the_operators_defaults_are_the_trainers_defaults() -> None:
    """The recipe's defaults as the operator passes them parse to the parser's own defaults."""
    dests = dests_by_flag()
    parser = build_parser()
    passed = parse_args([*trainer_flags(DEFAULTS), "--synthetic"])
    for flag, field_path in flag_fields(Recipe).items():
        dest = dests[flag]
        assert getattr(passed, dest) == parser.get_default(dest), (flag, field_path)
    assert parser.get_default("seed") is DEFAULTS.seed is None  # --seed N only when set
    assert parse_args(["--synthetic", *trainer_flags(Recipe(seed=7))]).seed == 7
