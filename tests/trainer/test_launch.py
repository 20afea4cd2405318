from __future__ import annotations

import json
import logging
import re
import sys
import threading
from pathlib import Path

import pytest

from densenet_trainer.launch import (
    RankTableTimeout,
    build_torchrun_args,
    device_for,
    main,
    wait_for_rank_table,
)

from .conftest import DENSENET_TRAIN, launch_env, run_cli

POD_ENV = {
    "NNODES": "2",
    "NODE_RANK": "1",
    "NPROC_PER_NODE": "8",
    "MASTER_ADDR": "dn-worker-0.dn",
    "MASTER_PORT": "29500",
    "DEVICE_TYPE": "ascend",
}
RECIPE = ["--arch", "densenet161", "--data", "/data/imagenet", "--epochs", "90"]


def test_torchrun_command_comes_from_the_pod_env() -> None:
    args = build_torchrun_args(POD_ENV, [*RECIPE, "--checkpoint-dir", "/ckpt/dn"])
    assert args == [
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        "--nproc-per-node",
        "8",
        "--master-addr",
        "dn-worker-0.dn",
        "--master-port",
        "29500",
        "-m",
        "densenet_trainer.train",
        *RECIPE,
        "--checkpoint-dir",
        "/ckpt/dn",
        "--resume",
        "auto",
        "--device",
        "npu",
    ]


def test_no_resume_without_a_checkpoint_dir_and_given_flags_win() -> None:
    args = build_torchrun_args(POD_ENV, RECIPE)
    assert "--resume" not in args
    given = [*RECIPE, "--checkpoint-dir", "/c", "--resume", "/c/x.pth", "--device=cpu"]
    args = build_torchrun_args({**POD_ENV, "DEVICE_TYPE": "cuda"}, given)
    assert args[args.index("densenet_trainer.train") + 1 :] == given


@pytest.mark.parametrize(
    ("device_type", "device"), [("ascend", "npu"), ("cuda", "cuda"), ("cpu", "cpu")]
)
def test_device_type_maps_to_the_trainer_device(device_type: str, device: str) -> None:
    assert device_for(device_type) == device
    assert build_torchrun_args({"DEVICE_TYPE": device_type}, RECIPE)[-2:] == ["--device", device]


def test_unknown_device_type_and_bad_recipes_are_refused_up_front() -> None:
    with pytest.raises(ValueError, match="DEVICE_TYPE='tpu'"):
        build_torchrun_args({"DEVICE_TYPE": "tpu"}, RECIPE)
    with pytest.raises(SystemExit):
        build_torchrun_args(POD_ENV, ["--arch", "resnet50", "--synthetic"])


def write_table(path: Path, status: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"status": status, "version": "1.0", "server_count": "1"}))
    tmp.replace(path)  # like the kubelet's atomic ConfigMap update


def test_waits_until_the_rank_table_flips_to_completed(tmp_path: Path) -> None:
    table = tmp_path / "hccl.json"
    write_table(table, "initializing")
    polls = []
    flipped = threading.Event()

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 3:  # the operator completes the table while the pod waits
            write_table(table, "completed")
            flipped.set()

    result = wait_for_rank_table(str(table), timeout=300, poll_interval=5, sleep=sleep)
    assert result["status"] == "completed" and flipped.is_set()
    assert polls == [5, 5, 5]


def test_timeout_names_the_file_and_the_last_state(tmp_path: Path) -> None:
    table = tmp_path / "hccl.json"
    write_table(table, "initializing")
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    with pytest.raises(RankTableTimeout) as exc:
        wait_for_rank_table(str(table), 300, 5, sleep=sleep, clock=lambda: clock[0])
    message = str(exc.value)
    assert str(table) in message
    assert "not completed after 300 s" in message and "'initializing'" in message
    assert clock[0] == 300  # 60 polls of 5 s, as Huawei's script


def test_a_missing_or_half_written_table_is_waited_for(tmp_path: Path) -> None:
    table = tmp_path / "hccl.json"
    states = []

    def sleep(seconds: float) -> None:
        states.append(seconds)
        if len(states) == 1:
            table.write_text('{"status": "compl')  # not JSON yet
        else:
            write_table(table, "completed")

    assert wait_for_rank_table(str(table), 60, 1, sleep=sleep)["status"] == "completed"
    with pytest.raises(RankTableTimeout, match="'missing'"):
        wait_for_rank_table(str(tmp_path / "absent.json"), 0, 1, sleep=lambda s: None)


def test_launch_fails_clearly_when_the_rank_table_never_completes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    table = tmp_path / "hccl.json"
    write_table(table, "initializing")
    env = {**POD_ENV, "RANK_TABLE_FILE": str(table)}
    with caplog.at_level(logging.INFO, logger="densenet_trainer.launch"):
        code = main(["--rank-table-timeout", "0", *RECIPE], env=env)
    assert code == 1
    assert "is not completed after 0 s" in caplog.text
    del env["RANK_TABLE_FILE"]
    assert main(RECIPE, env=env) == 2
    assert "RANK_TABLE_FILE is not set" in caplog.text


STEP_LINE = re.compile(r"step: (\d+) epoch: 1 FPS: ([\d.]+) loss: [\d.]+ lr: [\d.]+ data-wait: ")


def test_launch_runs_a_synthetic_performance_job_on_two_cpu_ranks() -> None:
    """The pod entrypoint end to end: exec torchrun, 2 gloo ranks, FPS lines on rank 0."""
    out = run_cli(
        [
            DENSENET_TRAIN,
            "launch",
            "--synthetic",
            "--mode",
            "performance",
            "--arch",
            "densenet121",
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--num-classes",
            "10",
            "--epochs",
            "1",
            "--synthetic-steps",
            "12",
            "--print-freq",
            "4",
        ],
        env=launch_env(2),
    ).stdout
    assert f"{sys.executable} -m torch.distributed.run" in out
    assert "densenet121 on 2 x cpu (backend gloo), mode performance" in out
    steps = [int(m[1]) for m in STEP_LINE.finditer(out)]
    assert steps == [4, 8, 12]
    assert all(float(m[2]) > 0 for m in STEP_LINE.finditer(out))
    summary = re.search(
        r"performance: FPS: ([\d.]+) data-wait: ([\d.]+)% \(densenet121, world size 2", out
    )
    assert summary is not None and float(summary[1]) > 0
    assert "checkpoint" not in out  # performance runs neither load nor save
