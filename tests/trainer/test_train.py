"""``train.main`` in this process: single rank, tiny data, a real densenet121 at 32 px."""

from __future__ import annotations

from pathlib import Path

import pytest

from densenet_contract import TRAINING_FIELDS
from densenet_trainer.checkpoint import BEST_MODEL_NAME, list_checkpoints, load_checkpoint
from densenet_trainer.train import main

from .conftest import FakeApiServer, write_kubeconfig
from .test_data import write_image_folder

TINY = [
    "--arch",
    "densenet121",
    "--image-size",
    "32",
    "--batch-size",
    "2",
    "--workers",
    "0",
    "--device",
    "cpu",
    "--seed",
    "0",
    "--print-freq",
    "1",
]


@pytest.fixture(autouse=True)
def single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "DENSENET_JOB_NAME", "KUBECONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "data", per_class=3)


def test_train_resume_and_evaluate_in_one_process(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "ckpt"
    common = [*TINY, "--data", str(tiny_data), "--checkpoint-dir", str(ckpt), "--epochs", "3"]
    # 6 images, batch 2: 3 steps per epoch; stop in the middle of epoch 2
    assert main([*common, "--max-train-steps", "4", "--lr-schedule", "cosine"]) == 0
    partial = load_checkpoint(list_checkpoints(ckpt)[-1])
    assert (partial["epochs_completed"], partial["step"]) == (1, 4)
    assert "(stopped at --max-train-steps 4)" in capsys.readouterr().out

    assert main([*common, "--resume", "auto", "--lr-schedule", "cosine"]) == 0
    log = capsys.readouterr().out
    # the epoch cut short continues at its next step: nothing is trained twice
    assert "1 epochs completed, continuing at epoch 2 at its step 2 of 3 (global step 5)" in log
    assert "step: 4 epoch: 2" not in log
    assert "step: 5 epoch: 2" in log
    final = load_checkpoint(list_checkpoints(ckpt)[-1])
    assert (final["epochs_completed"], final["step"]) == (3, 9)
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0)  # cosine ended

    best = ckpt / BEST_MODEL_NAME
    assert main([*common, "--mode", "evaluate", "--resume", str(best)]) == 0
    assert f"evaluate: Acc@1: {load_checkpoint(best)['acc1']:.3f}" in capsys.readouterr().out


def test_evaluate_needs_weights(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a checkpoint"):
        main([*TINY, "--data", str(tiny_data), "--mode", "evaluate"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        main([*TINY, "--data", str(tiny_data), "--resume", str(tmp_path / "nope.pth")])


def test_training_reports_the_contract_fields(
    tiny_data: Path,
    tmp_path: Path,
    api_server: tuple[FakeApiServer, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, url = api_server
    monkeypatch.setenv("DENSENET_JOB_NAME", "dn")
    monkeypatch.setenv("DENSENET_JOB_NAMESPACE", "team-a")
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", url)))
    ckpt = tmp_path / "ckpt"
    args = [*TINY, "--data", str(tiny_data), "--checkpoint-dir", str(ckpt), "--epochs", "2"]
    assert main([*args, "--status-interval", "3600"]) == 0  # close() flushed before returning
    merged: dict[str, object] = {}
    for request in fake.requests:
        assert request.content_type == "application/merge-patch+json"
        merged.update(request.body["status"]["training"])
    assert set(merged) == set(TRAINING_FIELDS)  # every field of the contract, and no other
    assert merged["progress"] == 100.0 and merged["etaSeconds"] == 0
    assert (merged["epoch"], merged["totalEpochs"], merged["step"]) == (2, 2, 6)
    assert merged["checkpoint"] == str(list_checkpoints(ckpt)[-1])
    # epoch ends are forced through the 3600 s throttle: one patch per epoch at least
    epochs_sent = [r.body["status"]["training"].get("epoch") for r in fake.requests]
    assert 1 in epochs_sent and 2 in epochs_sent
