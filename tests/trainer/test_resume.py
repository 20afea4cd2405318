"""Exact mid-epoch resume: the sampler's position, per-sample augmentation seeds, what a
checkpoint holds, periodic checkpoints, and a single process stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from densenet_contract import EXIT_STOPPED_ON_REQUEST
from densenet_trainer.checkpoint import (
    capture_rng_state,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_atomic,
)
from densenet_trainer.data import (
    ResumableDistributedSampler,
    SeededSamples,
    build_train_loader,
    sample_seed,
)
from densenet_trainer.distributed import DistContext
from densenet_trainer.flags import parse_args
from densenet_trainer.stopping import STOPPED_DIR_ENV, read_stop_markers
from densenet_trainer.train import RESUME_ONLY_KEYS, main, run

from .conftest import REPO_ROOT, RecordingReporter, trainer_env, wait_for_lines
from .test_train import TINY

# ------------------------------------------------------------------ the sampler


def test_the_sampler_keeps_distributed_samplers_order_and_starts_at_a_position() -> None:
    data = list(range(23))
    for rank in (0, 1):
        reference = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=5)
        ours = ResumableDistributedSampler(data, num_replicas=2, rank=rank, seed=5)
        for epoch in (0, 3):
            reference.set_epoch(epoch)
            ours.set_epoch(epoch)
            order = list(reference)
            assert list(ours) == [(epoch, index) for index in order]
            ours.set_epoch(epoch, position=5)
            assert list(ours) == [(epoch, index) for index in order[5:]]
            assert len(ours) == len(order) - 5
    ours.set_epoch(1)  # the next epoch starts from its beginning again
    assert len(ours) == 12
    with pytest.raises(ValueError, match="outside"):
        ours.set_epoch(1, position=13)


# ------------------------------------------------------------------ per-sample seeds


class RandomDraws(torch.utils.data.Dataset[Any]):
    """Items made only of draws from torch's and Python's global generators."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> tuple[float, float]:
        return float(torch.rand(1)), random.random()


def test_a_samples_random_draws_depend_on_seed_epoch_and_index_only() -> None:
    samples = SeededSamples(RandomDraws(), seed=7)
    first = samples[(2, 4)]
    torch.rand(100)  # whatever happened before (another sample, another loader process)
    random.random()
    assert samples[(2, 4)] == first
    assert samples[(3, 4)] != first and samples[(2, 5)] != first
    assert SeededSamples(RandomDraws(), seed=8)[(2, 4)] != first
    assert sample_seed(7, 2, 4) == sample_seed(7, 2, 4) < 2**63


def test_seeding_a_sample_leaves_the_callers_generators_alone() -> None:
    torch.manual_seed(1)
    random.seed(1)
    expected = (float(torch.rand(1)), random.random())
    torch.manual_seed(1)
    random.seed(1)
    SeededSamples(RandomDraws(), seed=7)[(0, 0)]  # with --workers 0: in the training process
    assert (float(torch.rand(1)), random.random()) == expected


def write_noise_folder(root: Path, per_class: int = 12) -> Path:
    """Images of noise: every crop and flip shows in the pixels."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_a_resumed_loader_yields_the_augmented_batches_of_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    root = write_noise_folder(tmp_path)
    ctx = DistContext(
        rank=1, world_size=2, local_rank=1, device=torch.device("cpu"), backend="gloo"
    )

    def batches(workers: int, epoch: int, position: int) -> list[torch.Tensor]:
        loader, _, sampler = build_train_loader(root, 16, 2, workers, ctx, seed=3)
        sampler.set_epoch(epoch, position=position)
        return [images for images, _, _ in loader]

    uninterrupted = batches(2, epoch=1, position=0)  # 12 samples of this rank: 6 steps
    assert len(uninterrupted) == 6
    resumed = batches(0, epoch=1, position=2 * 2)  # after 2 steps, without loader processes
    assert len(resumed) == 4
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted[2:], resumed, strict=True))
    other_epoch = batches(0, epoch=2, position=0)
    assert not torch.equal(other_epoch[0], uninterrupted[0])


# ------------------------------------------------------------------ checkpoints


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path: Path) -> None:
    state = capture_rng_state("cpu")
    expected = (torch.rand(3), random.random())
    save_atomic({"rng": [state]}, tmp_path / "c.pth")
    restore_rng_state(load_checkpoint(tmp_path / "c.pth")["rng"][0], "cpu")
    again = (torch.rand(3), random.random())
    assert torch.equal(again[0], expected[0]) and again[1] == expected[1]


@pytest.fixture
def noise_data(tmp_path: Path) -> Path:
    # 6 training images, batch 2: 3 steps per epoch
    root = write_noise_folder(tmp_path / "data", per_class=3)
    return root


def tiny_run(data: Path, ckpt: Path, *extra: str) -> list[str]:
    return [
        *TINY,
        *("--data", str(data), "--checkpoint-dir", str(ckpt), "--mode", "train"),
        *("--epochs", "2", "--keep-checkpoints", "0"),
        *extra,
    ]


def losses(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_periodic_checkpoints_hold_the_exact_position(noise_data: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    assert main(tiny_run(noise_data, ckpt, "--checkpoint-every-steps", "2")) == 0
    saved = {path.name: load_checkpoint(path) for path in list_checkpoints(ckpt)}
    # every 2nd step, and the epoch ends (step 6 is one: saved once, as the epoch's)
    assert list(saved) == [
        checkpoint_name(0, 2),
        checkpoint_name(1, 3),
        checkpoint_name(1, 4),
        checkpoint_name(2, 6),
    ]
    reasons = [c["reason"] for c in saved.values()]
    assert reasons == ["periodic", "epoch", "periodic", "epoch"]
    mid = saved[checkpoint_name(1, 4)]
    assert (mid["epochs_completed"], mid["epoch"], mid["step"], mid["step_in_epoch"]) == (
        1,
        0,
        4,
        1,
    )
    assert mid["steps_per_epoch"] == 3 and mid["world_size"] == 1
    assert mid["sampler"] == {
        "seed": 0,
        "epoch": 1,
        "position": 2,
        "num_replicas": 1,
        "batch_size": 2,
    }
    assert len(mid["rng"]) == 1 and set(mid["rng"][0]) == {"torch", "python"}
    assert mid["lr_scheduler"]["last_epoch"] == 4
    old_keys = {"model", "optimizer", "lr_scheduler", "scaler", "epoch", "epochs_completed"}
    old_keys |= {"step", "best_acc1", "acc1", "acc5", "arch", "num_classes", "classes", "args"}
    assert old_keys <= set(mid)
    assert not set(RESUME_ONLY_KEYS) - set(mid)


def test_a_resumed_run_repeats_the_uninterrupted_losses_exactly(
    noise_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(tiny_run(noise_data, whole, "--loss-log", str(whole / "loss.jsonl"))) == 0
    first = tiny_run(noise_data, cut, "--loss-log", str(cut / "loss.jsonl"))
    assert main([*first, "--max-train-steps", "4"]) == 0  # stops after step 1 of epoch 2
    capsys.readouterr()
    assert main([*first, "--resume", "auto"]) == 0
    assert "continuing at epoch 2 at its step 2 of 3 (global step 5)" in capsys.readouterr().out
    assert [r["step"] for r in losses(cut / "loss.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert losses(cut / "loss.jsonl") == losses(whole / "loss.jsonl")  # floats, bit for bit


def strip_new_keys(checkpoint: dict[str, Any]) -> dict[str, Any]:
    for key in ("step_in_epoch", "steps_per_epoch", "sampler", "rng", "world_size", "reason"):
        del checkpoint[key]
    return checkpoint


def resume_edited(
    data: Path, ckpt: Path, edit: Callable[[dict[str, Any]], dict[str, Any]], capsys: Any
) -> str:
    """Stop after step 4 (in epoch 2), ``edit`` the checkpoint, resume; the resumed log."""
    assert main([*tiny_run(data, ckpt), "--max-train-steps", "4"]) == 0
    newest = list_checkpoints(ckpt)[-1]
    save_atomic(edit(load_checkpoint(newest)), newest)
    capsys.readouterr()
    assert main([*tiny_run(data, ckpt), "--resume", "auto"]) == 0
    return str(capsys.readouterr().out)


def test_an_old_checkpoint_resumes_at_the_start_of_its_epoch(
    noise_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # as the previous version wrote it
    log = resume_edited(noise_data, tmp_path / "ckpt", strip_new_keys, capsys)
    assert "1 epochs completed, continuing at epoch 2\n" in log
    assert "step: 4 epoch: 2" in log  # the epoch cut short runs again from its start
    assert "cannot continue" not in log  # an old checkpoint: no position to lose


def test_a_checkpoint_of_another_world_size_restarts_its_epoch(
    noise_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def two_ranks(checkpoint: dict[str, Any]) -> dict[str, Any]:
        return {**checkpoint, "world_size": 2}

    log = resume_edited(noise_data, tmp_path / "ckpt", two_ranks, capsys)
    assert "cannot continue epoch 2 at its step 2 (saved by 2 ranks, now 1)" in log
    assert "step: 4 epoch: 2" in log.split("cannot continue")[1]


# ------------------------------------------------------------------ SIGTERM, one process


def test_sigterm_finishes_the_step_saves_and_exits_75(noise_data: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    loss_log = ckpt / "loss.jsonl"
    argv = tiny_run(noise_data, ckpt, "--loss-log", str(loss_log), "--epochs", "200")
    proc = subprocess.Popen(
        [sys.executable, "-m", "densenet_trainer.train", *argv],
        env=trainer_env(),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for_lines(loss_log, 5, proc)  # in epoch 2
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == EXIT_STOPPED_ON_REQUEST, out[-3000:]
    last_step = losses(loss_log)[-1]["step"]
    newest = load_checkpoint(list_checkpoints(ckpt)[-1])
    assert newest["step"] == last_step  # no step lost
    # A signal that lands while the epoch's own checkpoint of that step is written stops
    # before the next epoch without saving the same step twice; otherwise the stop saves.
    epoch_boundary = newest["step_in_epoch"] == 0 and last_step == 3 * newest["epochs_completed"]
    assert newest["reason"] == ("epoch" if epoch_boundary else "stop")
    assert newest["step_in_epoch"] == last_step - 3 * newest["epochs_completed"]
    assert f"SIGTERM: stopping after step {last_step}" in out


# ------------------------------------------------------------------ activity


def activities(recorder: RecordingReporter) -> list[str]:
    sent = [
        (fields["activity"], force) for fields, force in recorder.updates if "activity" in fields
    ]
    assert all(force for _, force in sent)  # each change at once
    return [activity for activity, _ in sent]


def test_activity_follows_the_run(noise_data: Path, tmp_path: Path) -> None:
    recorder = RecordingReporter()
    argv = tiny_run(noise_data, tmp_path / "ckpt", "--mode", "train_and_evaluate")
    assert run(parse_args(argv), reporter=recorder) == 0
    epoch = ["training", "evaluating", "checkpointing"]
    assert activities(recorder) == ["starting", *epoch, *epoch]


def test_a_stop_reports_stopping_and_leaves_the_launcher_a_marker(
    noise_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STOPPED_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    ckpt = tmp_path / "ckpt"
    loss_log = ckpt / "loss.jsonl"
    argv = tiny_run(noise_data, ckpt, "--loss-log", str(loss_log), "--epochs", "200")
    argv += ["--checkpoint-every-steps", "2"]

    def signal_after_step_5() -> None:  # the kubelet, through torchrun
        while not loss_log.exists() or len(loss_log.read_text().splitlines()) < 5:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=signal_after_step_5, daemon=True).start()
    recorder = RecordingReporter()
    assert run(parse_args(argv), reporter=recorder) == EXIT_STOPPED_ON_REQUEST
    sent = activities(recorder)
    assert sent[:4] == ["starting", "training", "checkpointing", "training"]
    assert sent[-1] == "stopping"
    step = losses(loss_log)[-1]["step"]
    newest = list_checkpoints(ckpt)[-1]
    assert read_stop_markers(tmp_path) == [
        {"rank": 0, "local_world_size": 1, "step": step, "checkpoint": str(newest)}
    ]
    assert recorder.updates[-1][0] == {"checkpoint": str(newest), "step": step}
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again


def test_a_real_run_reports_its_progress_up_to_all_of_its_steps(
    noise_data: Path, tmp_path: Path
) -> None:
    recorder = RecordingReporter()
    argv = tiny_run(noise_data, tmp_path / "ckpt", "--mode", "train")
    assert run(parse_args(argv), reporter=recorder) == 0
    progress = [fields["progress"] for fields, _ in recorder.updates if "progress" in fields]
    assert progress == sorted(progress) and progress[-1] == 100.0
    final = [fields for fields, _ in recorder.updates if "etaSeconds" in fields][-1]
    assert final["etaSeconds"] == 0
