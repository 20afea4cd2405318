"""No lost work, end to end: `densenet-train launch` with 2 gloo ranks under torchrun, as a
pod runs it, stopped by SIGTERM in the middle of an epoch and started again.

The launcher gets the signal as a pod's main process does from the kubelet (twice: the
second one while the checkpoint is being written). It must exit 75, the checkpoint must hold
the last step trained, and the restarted run's per-step losses (from --loss-log) must be
those of an uninterrupted run with the same seed, bit for bit. A stop asked of one rank only
(another pod evicted) must stop both.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from densenet_contract import EXIT_STOPPED_ON_REQUEST
from densenet_trainer.checkpoint import list_checkpoints, load_checkpoint
from densenet_trainer.digits import DigitsSplit

from .conftest import DENSENET_TRAIN, REPO_ROOT, launch_env, run_cli, trainer_env, wait_for_lines
from .test_distributed_digits import BATCH_SIZE, WORLD_SIZE, recipe

pytestmark = pytest.mark.slow

EPOCHS = 2
STOP_AFTER = 30  # steps logged before the SIGTERM: in the second epoch (22 steps each)
STEPS_PER_EPOCH = 22  # digits: 1437 images + 1 corrupt over 2 ranks, batches of 32


def command(digits: DigitsSplit, checkpoint_dir: Path) -> list[str]:
    args = recipe(digits, checkpoint_dir)
    args[args.index("--epochs") + 1] = str(EPOCHS)
    return [DENSENET_TRAIN, "launch", *args, "--loss-log", str(checkpoint_dir / "loss.jsonl")]


def losses(checkpoint_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (checkpoint_dir / "loss.jsonl").read_text().splitlines()]


def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        env=trainer_env(env),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@dataclass
class Runs:
    whole: Path
    cut: Path
    stopped_log: str
    stopped_code: int
    stopped_losses: list[dict[str, Any]]
    stopped_checkpoint: dict[str, Any]  # the newest one right after the stop
    resumed_log: str


@pytest.fixture(scope="module")
def runs(digits: DigitsSplit, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    whole = tmp_path_factory.mktemp("uninterrupted")
    run_cli(command(digits, whole), env=launch_env(WORLD_SIZE))
    cut = tmp_path_factory.mktemp("stopped")
    proc = start(command(digits, cut), launch_env(WORLD_SIZE))
    wait_for_lines(cut / "loss.jsonl", STOP_AFTER, proc)
    proc.send_signal(signal.SIGTERM)  # the kubelet: pod deleted, evicted, preempted
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)  # again, while the ranks finish their step and save
    stopped_log = proc.communicate(timeout=300)[0]
    stopped_losses = losses(cut)
    stopped_checkpoint = load_checkpoint(list_checkpoints(cut)[-1])
    resumed_log = run_cli(command(digits, cut), env=launch_env(WORLD_SIZE)).stdout
    return Runs(
        whole, cut, stopped_log, proc.returncode, stopped_losses, stopped_checkpoint, resumed_log
    )


def test_the_digits_recipe_has_the_steps_assumed_here(digits: DigitsSplit) -> None:
    assert -(-(digits.train_count + 1) // WORLD_SIZE) // BATCH_SIZE == STEPS_PER_EPOCH


def test_the_pod_exits_75_after_a_graceful_stop(runs: Runs) -> None:
    assert runs.stopped_code == EXIT_STOPPED_ON_REQUEST, runs.stopped_log[-5000:]
    assert "all 2 local training processes stopped on request" in runs.stopped_log
    assert "1 more stop signals came while stopping: not forwarded" in runs.stopped_log


def test_no_step_is_lost(runs: Runs) -> None:
    last = runs.stopped_losses[-1]["step"]
    assert STOP_AFTER <= last < EPOCHS * STEPS_PER_EPOCH  # mid-epoch 2
    saved = runs.stopped_checkpoint
    assert (saved["step"], saved["reason"]) == (last, "stop")  # the very last step trained
    assert (saved["epochs_completed"], saved["step_in_epoch"]) == (1, last - STEPS_PER_EPOCH)
    assert "work since the checkpoint: 0 steps" in runs.stopped_log
    assert not list(runs.cut.glob(".*.tmp"))


def test_the_restart_continues_at_the_next_step(runs: Runs) -> None:
    last = runs.stopped_losses[-1]["step"]
    assert (
        f"continuing at epoch 2 at its step {last - STEPS_PER_EPOCH + 1} of {STEPS_PER_EPOCH}"
        in runs.resumed_log
    )
    steps = [record["step"] for record in losses(runs.cut)]
    assert steps == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))  # each step once, none twice


def test_the_restarted_losses_are_the_uninterrupted_ones_exactly(runs: Runs) -> None:
    assert losses(runs.cut) == losses(runs.whole)
    final = load_checkpoint(list_checkpoints(runs.cut)[-1])
    reference = load_checkpoint(list_checkpoints(runs.whole)[-1])
    assert (final["acc1"], final["step"]) == (reference["acc1"], reference["step"])


def training_process(launcher: int, rank: int) -> psutil.Process:
    """The training process of ``rank``: a child of torchrun (not one of its loaders)."""
    for proc in psutil.Process(launcher).children(recursive=True):
        parent = proc.parent()
        if (
            parent is not None
            and "torch.distributed.run" in " ".join(parent.cmdline())
            and proc.environ().get("RANK") == str(rank)
        ):
            return proc
    raise LookupError(f"no rank {rank} under {launcher}")


def test_a_stop_asked_of_one_rank_stops_them_all(digits: DigitsSplit, tmp_path: Path) -> None:
    """Another pod evicted: only its ranks get SIGTERM; this pod's must stop with them."""
    proc = start(command(digits, tmp_path), launch_env(WORLD_SIZE))
    wait_for_lines(tmp_path / "loss.jsonl", 5, proc)
    training_process(proc.pid, rank=1).send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == EXIT_STOPPED_ON_REQUEST, log[-5000:]
    last = losses(tmp_path)[-1]["step"]
    assert f"[rank 1] SIGTERM: stopping after step {last}" in log
    assert f"another rank was asked to stop: stopping after step {last}" in log
    assert load_checkpoint(list_checkpoints(tmp_path)[-1])["step"] == last
