"""The seeds' own command lines run unchanged: each parses to the same args as ours.

Seed 000 is Huawei ModelZoo's DenseNet-161 for PyTorch (its README lists the flags of its
script: --data --addr --arch --workers --epoch --batch-size --lr --momentum --weight_decay
--amp --loss-scale --opt-level, and for 8 devices --multiprocessing-distributed --device-list),
seed 002 the DenseNet-121 for TensorFlow (its README shows three command lines and lists more
flags). The values are the seeds' recipes (shared/REFERENCE.md).
"""

from __future__ import annotations

import shlex
from argparse import Namespace

import pytest

from densenet_trainer.flags import IGNORED_SEED_FLAGS, NOTICES, build_parser, parse_args
from densenet_trainer.train import main

from .test_train import TINY

# (the seed's command line, as written; ours; the processes per node torchrun starts)
SEED_COMMAND_LINES = {
    "000 1p": (
        "--data /data/imagenet --addr 10.0.0.5 --arch densenet161 --workers 16 --epoch 90 "
        "--batch-size 128 --lr 0.1 --momentum 0.9 --weight_decay 1e-4 --amp --loss-scale 1024 "
        "--opt-level O2",
        "--data /data/imagenet --arch densenet161 --workers 16 --epochs 90 --batch-size 128 "
        "--lr 0.1 --momentum 0.9 --weight-decay 1e-4 --amp",
        1,
    ),
    # the seed's --batch-size and --workers are per node under --multiprocessing-distributed:
    # 1024 = 128 per device on 8 NPUs (REFERENCE.md), its script divides them per process
    "000 8p": (
        "--data /data/imagenet --addr 10.0.0.5 --arch densenet161 --workers 128 --epoch 90 "
        "--batch-size 1024 --lr 0.8 --momentum 0.9 --weight_decay 1e-4 --amp --loss-scale 1024 "
        "--opt-level O2 --multiprocessing-distributed --device-list '0,1,2,3,4,5,6,7'",
        "--data /data/imagenet --arch densenet161 --workers 16 --epochs 90 --batch-size 128 "
        "--lr 0.8 --momentum 0.9 --weight-decay 1e-4 --amp",
        8,
    ),
    "002 train_1p.sh": (
        "--rank_size=1 --mode=train --max_train_steps=100 --iterations_per_loop=10 "
        "--data_dir=/opt/npu/slimImagenet --display_every=10 --log_dir=./model_1p "
        "--log_name=densenet121_1p.log",
        "--mode train --max-train-steps 100 --data /opt/npu/slimImagenet --print-freq 10 "
        "--checkpoint-dir ./model_1p",
        1,
    ),
    "002 train_8p.sh": (
        "--rank_size=8 --mode=train_and_evaluate --max_epochs=150 --iterations_per_loop=5004 "
        "--epochs_between_evals=5 --data_dir=/opt/npu/slimImagenet --lr=0.1 "
        "--log_dir=./model_8p --log_name=densenet121_8p.log",
        "--mode train_and_evaluate --epochs 150 --data /opt/npu/slimImagenet --lr 0.1 "
        "--checkpoint-dir ./model_8p",
        8,
    ),
    "002 test.sh": (
        "--rank_size=1 --mode=evaluate --data_dir=/opt/npu/slimImagenet "
        "--eval_dir=${dname}/scripts/result/8p/0/model_8p --log_dir=./ "
        "--log_name=eval_densenet121.log",
        "--mode evaluate --data /opt/npu/slimImagenet "
        "--checkpoint-dir ${dname}/scripts/result/8p/0/model_8p --resume auto",
        1,
    ),
    "002 options": (
        "--data_dir /data/imagenet --num_classes 1000 --image_size 224 --batch_size 32 "
        "--lr 0.1 --max_epochs 150 --warmup_epochs 5 --weight_decay 1e-4 --momentum 0.9 "
        "--label_smoothing 0.1 --max_train_steps 1000 --pretrained /w.pth --group_size 8",
        "--data /data/imagenet --num-classes 1000 --image-size 224 --batch-size 32 --lr 0.1 "
        "--epochs 150 --warmup-epochs 5 --weight-decay 1e-4 --momentum 0.9 "
        "--label-smoothing 0.1 --max-train-steps 1000 --pretrained /w.pth",
        8,
    ),
}
# The seed flags that ours did not accept before (one issue's list), all spelled as the seeds do.
SEED_ONLY_FLAGS = [
    "--epoch",
    "--batch_size",
    "--weight_decay",
    "--label_smoothing",
    "--max_train_steps",
    "--data_dir",
    "--max_epochs",
    "--opt-level",
    "--loss-scale",
    "--device-list",
    "--addr",
    "--multiprocessing-distributed",
]


def without_notices(args: Namespace) -> dict[str, object]:
    return {key: value for key, value in vars(args).items() if key != NOTICES}


def parse_both(seed: str, ours: str, local_processes: int) -> tuple[Namespace, Namespace]:
    env = {"LOCAL_WORLD_SIZE": str(local_processes)}  # what torchrun sets in each process
    return parse_args(shlex.split(seed), env=env), parse_args(shlex.split(ours), env=env)


def test_the_seed_flags_are_flags() -> None:
    known = {flag for action in build_parser()._actions for flag in action.option_strings}
    assert [flag for flag in SEED_ONLY_FLAGS if flag not in known] == []


@pytest.mark.parametrize("name", SEED_COMMAND_LINES)
def test_a_seed_command_line_is_the_same_run_as_ours(name: str) -> None:
    seed, ours, local_processes = SEED_COMMAND_LINES[name]
    from_seed, from_ours = parse_both(seed, ours, local_processes)
    assert without_notices(from_seed) == without_notices(from_ours)
    assert getattr(from_ours, NOTICES) == ()
    # every seed flag that is not one of ours says what became of it
    ours_known = {flag for action in build_parser()._actions for flag in action.option_strings}
    seed_flags = {arg.split("=")[0] for arg in shlex.split(seed) if arg.startswith("--")}
    mapped = {"--opt-level", "--multiprocessing-distributed", "--eval_dir"}
    noted = (seed_flags & (set(IGNORED_SEED_FLAGS) | mapped)) - {"--log_dir"}
    assert len(getattr(from_seed, NOTICES)) == len(noted), getattr(from_seed, NOTICES)
    assert seed_flags <= ours_known


def test_ignored_flags_say_why() -> None:
    args = parse_args(["--synthetic", "--addr", "10.0.0.5", "--dist-backend", "nccl"])
    assert getattr(args, NOTICES) == (
        "ignoring the seed flag --addr 10.0.0.5: torchrun's --master-addr/--master-port "
        "(PET_MASTER_ADDR/PORT) rendezvous replaces it",
        "ignoring the seed flag --dist-backend nccl: the backend follows --device "
        "(hccl on npu, nccl on cuda, gloo on cpu)",
    )
    flags = ["--world-size", "1", "--rank", "0", "--dist-url", "tcp://127.0.0.1:50000"]
    flags += ["--gpu", "0", "--npu", "0", "--multiprocessing-distributed"]
    args = parse_args(["--synthetic", *flags], env={})
    assert len(getattr(args, NOTICES)) == 6
    assert without_notices(args) == without_notices(parse_args(["--synthetic"]))


@pytest.mark.parametrize(
    ("argv", "amp"),
    [
        (["--opt-level", "O1"], True),
        (["--opt-level", "O3"], True),
        (["--amp", "--opt-level", "O0"], False),  # apex O0 is fp32
        (["--opt-level", "O0", "--amp"], False),  # in any order
        (["--amp"], True),
        ([], False),
    ],
)
def test_apex_opt_levels_map_to_amp(argv: list[str], amp: bool) -> None:
    assert parse_args(["--synthetic", *argv]).amp is amp


def test_per_node_values_are_split_as_the_seeds_do() -> None:
    argv = ["--synthetic", "--multiprocessing-distributed", "-b", "100", "-j", "10"]
    args = parse_args(argv, env={"LOCAL_WORLD_SIZE": "8"})
    assert (args.batch_size, args.loader_workers) == (12, 2)  # batch down, workers up
    args = parse_args(argv, env={})  # one process (no torchrun): nothing to split
    assert (args.batch_size, args.loader_workers) == (100, 10)
    assert "--batch-size 100 and --workers 10 are per node" in getattr(args, NOTICES)[0]


def test_eval_dir_wins_over_log_dir_and_keeps_a_given_resume() -> None:
    args = parse_args(
        ["--data", "/d", "--log_dir", "/logs", "--eval_dir", "/run", "--mode=evaluate"]
    )
    assert (args.checkpoint_dir, args.resume) == ("/run", "auto")
    args = parse_args(["--data", "/d", "--eval_dir", "/run", "--resume", "/run/x.pth"])
    assert (args.checkpoint_dir, args.resume) == ("/run", "/run/x.pth")


def test_the_help_says_how_the_seed_flags_map(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "O0 (fp32) turns --amp off; O1, O2 and O3 turn it on" in text
    assert "--epochs N, --epoch N, --max_epochs N" in text
    for flag in IGNORED_SEED_FLAGS:
        assert flag in text


def test_rank_0_logs_the_notices(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*TINY, "--synthetic", "--synthetic-steps", "1", "--epochs", "1", "--mode=performance"]
    assert main([*argv, "--addr", "10.0.0.5", "--opt-level", "O0", "--loss-scale", "128"]) == 0
    out = capsys.readouterr().out
    assert "ignoring the seed flag --addr 10.0.0.5: torchrun's" in out
    assert "the seed flag --opt-level O0 is read as no --amp (apex O0 is fp32)" in out
    assert "ignoring the seed flag --loss-scale 128: --amp uses bf16" in out
    assert ", amp off," in out
