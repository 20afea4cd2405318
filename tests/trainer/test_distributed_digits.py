"""End to end: digits trained by `densenet-train launch` with 2 gloo processes under torchrun,
their collectives held to HCCL's dtype rules (what an NPU job's would meet).

One module-scoped fixture runs three jobs the way the operator would: a first run that is cut
off after two epochs (--max-train-steps), a restart of the same recipe (the operator's args
carry --resume auto) that continues at epoch 3, and an evaluation of the newest checkpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from densenet_trainer.checkpoint import BEST_MODEL_NAME, list_checkpoints, load_checkpoint
from densenet_trainer.digits import DigitsSplit
from densenet_trainer.distributed import RULES_ENV

from .conftest import CORRUPT_IMAGE, DENSENET_TRAIN, DIGITS_SIZE, launch_env, run_cli

pytestmark = pytest.mark.slow

WORLD_SIZE = 2
BATCH_SIZE = 32
EPOCHS = 7
FIRST_RUN_EPOCHS = 2

EPOCH_LINE = re.compile(
    r"epoch: (?P<epoch>\d+) Acc@1: (?P<acc1>[\d.]+) Acc@5: (?P<acc5>[\d.]+) "
    r"best Acc@1: (?P<best>[\d.]+) loss: [\d.]+ FPS: (?P<fps>[\d.]+) data-wait: [\d.]+%"
)
STEP_LINE = re.compile(
    r"step: (?P<step>\d+) epoch: (?P<epoch>\d+) FPS: (?P<fps>[\d.]+) loss: (?P<loss>[\d.]+) "
    r"lr: (?P<lr>[\d.]+) data-wait: (?P<wait>[\d.]+)%"
)
EVAL_LINE = re.compile(r"evaluate: Acc@1: (?P<acc1>[\d.]+) Acc@5: (?P<acc5>[\d.]+)")


@dataclass
class DigitsRuns:
    checkpoint_dir: Path
    steps_per_epoch: int
    first: str
    resumed: str
    evaluation: str
    first_checkpoint_epochs: int
    first_checkpoint_step: int


def recipe(digits: DigitsSplit, checkpoint_dir: Path) -> list[str]:
    return [
        "--data",
        str(digits.root),
        "--arch",
        "densenet121",
        "--image-size",
        str(DIGITS_SIZE),
        "--min-crop-scale",
        "0.35",
        "--batch-size",
        str(BATCH_SIZE),
        "--epochs",
        str(EPOCHS),
        "--lr",
        "0.05",
        "--warmup-epochs",
        "1",
        "--lr-schedule",
        "cosine",
        "--workers",
        "1",
        "--print-freq",
        "10",
        "--seed",
        "0",
        "--device",
        "cpu",
        "--checkpoint-dir",
        str(checkpoint_dir),
        "--resume",
        "auto",
    ]


def hccl_rules_env() -> dict[str, str]:
    """Two ranks over gloo, every collective of the trainer held to HCCL's dtype rules (and
    a gloo control group beside the default one, as an NPU job has): what would crash on
    NPUs fails here."""
    return {**launch_env(WORLD_SIZE), RULES_ENV: "hccl"}


@pytest.fixture(scope="module")
def runs(digits: DigitsSplit, tmp_path_factory: pytest.TempPathFactory) -> DigitsRuns:
    checkpoint_dir = tmp_path_factory.mktemp("digits-checkpoints")
    train_images = digits.train_count + 1  # the corrupt file is listed too, then skipped
    steps_per_epoch = -(-train_images // WORLD_SIZE) // BATCH_SIZE
    base = [DENSENET_TRAIN, "launch", *recipe(digits, checkpoint_dir)]
    cut_off = str(FIRST_RUN_EPOCHS * steps_per_epoch)
    first = run_cli([*base, "--max-train-steps", cut_off], env=hccl_rules_env()).stdout
    after_first = load_checkpoint(list_checkpoints(checkpoint_dir)[-1])
    resumed = run_cli(base, env=hccl_rules_env()).stdout
    evaluation = run_cli([*base, "--mode", "evaluate"], env=hccl_rules_env()).stdout
    for line in (first + resumed + evaluation).splitlines():  # shown with pytest -s
        if "Acc@1" in line or "training done" in line:
            print(line)
    return DigitsRuns(
        checkpoint_dir,
        steps_per_epoch,
        first,
        resumed,
        evaluation,
        after_first["epochs_completed"],
        after_first["step"],
    )


def epoch_lines(log: str) -> list[re.Match[str]]:
    return list(EPOCH_LINE.finditer(log))


def test_launch_runs_torchrun_on_the_training_args_with_the_topology_from_the_env(
    runs: DigitsRuns,
) -> None:
    assert "-m torch.distributed.run -m densenet_trainer.train --data" in runs.first
    assert "--resume auto --max-train-steps" in runs.first  # the args as given
    assert "PET_NNODES=1 PET_NODE_RANK=0 PET_NPROC_PER_NODE=2" in runs.first
    assert "on 2 x cpu (backend gloo)" in runs.first


def test_every_run_held_its_collectives_to_hccls_rules(runs: DigitsRuns) -> None:
    """Train, resume and evaluate all ran (and evaluated) with HCCL's dtype rules in force."""
    for log in (runs.first, runs.resumed, runs.evaluation):
        assert "collectives held to hccl's dtype rules" in log


def test_first_run_stops_after_two_epochs_with_a_checkpoint(runs: DigitsRuns) -> None:
    assert [int(m["epoch"]) for m in epoch_lines(runs.first)] == [1, 2]
    assert "no checkpoint in" in runs.first
    assert runs.first_checkpoint_epochs == FIRST_RUN_EPOCHS
    assert runs.first_checkpoint_step == FIRST_RUN_EPOCHS * runs.steps_per_epoch


def test_restart_continues_at_the_next_epoch(runs: DigitsRuns) -> None:
    assert (
        f"{FIRST_RUN_EPOCHS} epochs completed, continuing at epoch {FIRST_RUN_EPOCHS + 1}"
        in runs.resumed
    )
    epochs = [int(m["epoch"]) for m in epoch_lines(runs.resumed)]
    assert epochs == list(range(FIRST_RUN_EPOCHS + 1, EPOCHS + 1))
    steps = [int(m["step"]) for m in STEP_LINE.finditer(runs.resumed)]
    first_step_line = next(STEP_LINE.finditer(runs.resumed))
    assert int(first_step_line["epoch"]) == FIRST_RUN_EPOCHS + 1
    # the global step continues from where the first run's two epochs ended
    assert steps[0] > FIRST_RUN_EPOCHS * runs.steps_per_epoch
    final = load_checkpoint(list_checkpoints(runs.checkpoint_dir)[-1])
    assert final["epochs_completed"] == EPOCHS
    assert final["step"] == EPOCHS * runs.steps_per_epoch


def test_digits_reach_90_percent_and_the_restart_loses_nothing(runs: DigitsRuns) -> None:
    first_acc = float(epoch_lines(runs.first)[-1]["acc1"])
    final_acc = float(epoch_lines(runs.resumed)[-1]["acc1"])
    assert final_acc >= 90.0, runs.resumed[-3000:]
    assert final_acc >= first_acc


def test_evaluate_mode_reproduces_the_reported_accuracy(
    runs: DigitsRuns, digits: DigitsSplit
) -> None:
    last = epoch_lines(runs.resumed)[-1]
    evaluated = EVAL_LINE.search(runs.evaluation)
    assert evaluated is not None, runs.evaluation[-3000:]
    assert (evaluated["acc1"], evaluated["acc5"]) == (last["acc1"], last["acc5"])
    # every val image counted once, though 2 ranks do not divide the val set
    assert digits.val_count % WORLD_SIZE == 1
    assert f"samples: {digits.val_count}" in runs.evaluation


def test_checkpoints_hold_what_a_restart_needs(runs: DigitsRuns) -> None:
    paths = list_checkpoints(runs.checkpoint_dir)
    assert len(paths) == 3  # --keep-checkpoints default
    final = load_checkpoint(paths[-1])
    assert {"model", "optimizer", "lr_scheduler", "scaler", "epoch", "best_acc1", "args"} <= set(
        final
    )
    assert not any(key.startswith("module.") for key in final["model"])  # unwrapped from DDP
    assert final["args"]["arch"] == "densenet121"
    best = load_checkpoint(runs.checkpoint_dir / BEST_MODEL_NAME)
    assert best["acc1"] == pytest.approx(final["best_acc1"])
    best_logged = max(float(m["acc1"]) for m in epoch_lines(runs.first + runs.resumed))
    assert round(best["acc1"], 3) == pytest.approx(best_logged)
    assert not list(runs.checkpoint_dir.glob(".*.tmp"))  # no temp file left behind


def test_the_corrupt_image_is_skipped_and_counted(runs: DigitsRuns) -> None:
    assert "total: skipped 1 images that failed to decode" in runs.first
    assert CORRUPT_IMAGE.split("/")[-1] in runs.first


def test_step_lines_report_fps_over_both_ranks(runs: DigitsRuns) -> None:
    lines = list(STEP_LINE.finditer(runs.first))
    assert [int(m["step"]) for m in lines] == list(
        range(10, FIRST_RUN_EPOCHS * runs.steps_per_epoch + 1, 10)
    )
    assert all(float(m["fps"]) > 0 for m in lines)
    assert all(0 <= float(m["wait"]) <= 100 for m in lines)
