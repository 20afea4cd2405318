from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from densenet_contract import EXIT_STOPPED_ON_REQUEST, Env
from densenet_trainer import launch
from densenet_trainer.flags import DEFAULT_STOP_TIMEOUT
from densenet_trainer.launch import build_torchrun_args, main
from densenet_trainer.stopping import STOPPED_DIR_ENV, read_stop_markers, write_stop_marker

from .conftest import DENSENET_TRAIN, launch_env, run_cli

# What the operator sets for pod 1 of a 2-pod Ascend job (docs/contract.md).
POD_ENV = {
    Env.NNODES: "2",
    Env.NODE_RANK: "1",
    Env.NPROC_PER_NODE: "8",
    Env.MASTER_ADDR: "dn-worker-0.dn",
    Env.MASTER_PORT: "29500",
}
RECIPE = ["--arch", "densenet161", "--data", "/data/imagenet", "--epochs", "90", "--device", "npu"]


def test_torchrun_runs_the_training_module_with_the_training_args_untouched() -> None:
    train_args = [*RECIPE, "--checkpoint-dir", "/ckpt/dn", "--resume", "auto", "--amp"]
    assert build_torchrun_args(train_args) == ["-m", "densenet_trainer.train", *train_args]
    # nothing is added (no --resume auto, no --device) and nothing is parsed or refused here:
    # each training process parses its flags itself
    assert build_torchrun_args(RECIPE) == ["-m", "densenet_trainer.train", *RECIPE]
    odd = ["--arch", "resnet50", "--epoch=3", "--device-list", "0,1"]
    assert build_torchrun_args(odd)[2:] == odd


class Exec(Exception):
    """Raised by a stand-in for run_torchrun: what the launcher would have run."""

    def __init__(self, argv: list[str], env: dict[str, str], stopped_dir: str):
        super().__init__(argv[0])
        self.path, self.argv, self.env, self.stopped_dir = argv[0], argv, env, stopped_dir


@pytest.fixture
def no_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    def run_torchrun(argv: list[str], env: dict[str, str], stopped_dir: str) -> int:
        raise Exec(list(argv), dict(env), stopped_dir)

    monkeypatch.setattr(launch, "run_torchrun", run_torchrun)


def test_launch_runs_torchrun_with_the_pod_env_and_its_own_flags_left_out(
    no_exec: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_wait(*args: object, **kwargs: object) -> None:
        raise AssertionError("no RANK_TABLE_FILE: nothing to wait for")

    monkeypatch.setattr(launch, "wait_for_rank_table", no_wait)
    argv = ["--rank-table-timeout", "5", *RECIPE, "--rank-table-poll-interval=1", "--lr", "0.8"]
    with caplog.at_level(logging.INFO, logger="densenet_trainer.launch"), pytest.raises(Exec) as ex:
        main(argv, env=POD_ENV)
    assert ex.value.path == sys.executable
    assert ex.value.argv == [
        sys.executable,
        *("-m", "torch.distributed.run", "-m", "densenet_trainer.train"),
        *RECIPE,
        *("--lr", "0.8"),
    ]
    # torchrun reads its topology from PET_*; the launcher adds where the ranks report a
    # graceful stop, and a shutdown timeout that leaves them time to save
    assert ex.value.env == {
        **POD_ENV,
        STOPPED_DIR_ENV: ex.value.stopped_dir,
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(DEFAULT_STOP_TIMEOUT),
    }
    assert "PET_NNODES=2 PET_NODE_RANK=1 PET_NPROC_PER_NODE=8" in caplog.text


def test_the_stop_timeout_is_the_flag_else_torchruns_variable_else_the_default(
    no_exec: None,
) -> None:
    def env_of(argv: list[str], env: dict[str, str]) -> dict[str, str]:
        with pytest.raises(Exec) as ex:
            main([*argv, *RECIPE], env=env)
        return ex.value.env

    key = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
    assert env_of(["--stop-timeout", "120"], {**POD_ENV, key: "60"})[key] == "120"
    assert env_of([], {**POD_ENV, key: "60"})[key] == "60"
    assert env_of([], POD_ENV)[key] == str(DEFAULT_STOP_TIMEOUT)


def marker(rank: int, local_world_size: int) -> dict[str, object]:
    return {"rank": rank, "local_world_size": local_world_size, "step": 7, "checkpoint": None}


def test_the_exit_code_is_75_only_when_every_local_rank_stopped_on_request() -> None:
    both = [marker(0, 2), marker(1, 2)]
    assert launch.exit_code(1, [signal.SIGTERM], both) == EXIT_STOPPED_ON_REQUEST
    assert launch.exit_code(1, [], both) == EXIT_STOPPED_ON_REQUEST  # another pod was asked
    # one rank crashed instead: a signal says disruption (128 + its number), else torchrun's code
    assert launch.exit_code(1, [signal.SIGTERM], both[:1]) == 128 + signal.SIGTERM
    assert launch.exit_code(1, [], both[:1]) == 1
    assert launch.exit_code(0, [], []) == 0
    assert launch.exit_code(-9, [], []) == 128 + 9  # torchrun itself was killed


def test_markers_round_trip(tmp_path: Path) -> None:
    env = {STOPPED_DIR_ENV: str(tmp_path), "RANK": "3", "LOCAL_WORLD_SIZE": "2"}
    write_stop_marker(env, 42, "/ckpt/x.pth")
    assert read_stop_markers(tmp_path) == [
        {"rank": 3, "local_world_size": 2, "step": 42, "checkpoint": "/ckpt/x.pth"}
    ]
    assert write_stop_marker({}, 42, None) is None  # no launcher: no marker


SLEEPER = """
import os, signal, sys, time
from pathlib import Path
def stop(signum, frame):
    Path(os.environ["DENSENET_STOPPED_DIR"], "stopped-rank0.json").write_text(
        '{"rank": 0, "local_world_size": 1, "step": 3, "checkpoint": null}')
    sys.exit(1)  # as torchrun does after its children stopped: its own code is 1
signal.signal(signal.SIGTERM, stop)
Path(os.environ["DENSENET_STOPPED_DIR"], "ready").touch()  # the handler is in place
time.sleep(60)
"""


def signal_when_ready(ready: Path, timeout: float = 60) -> threading.Event:
    """SIGTERM to this process once `ready` exists (a fixed delay races the child's start)."""
    done = threading.Event()

    def wait_and_signal() -> None:
        deadline = time.monotonic() + timeout
        while not ready.exists() and time.monotonic() < deadline and not done.is_set():
            time.sleep(0.02)
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait_and_signal, daemon=True).start()
    return done


def test_run_torchrun_forwards_sigterm_and_maps_the_markers_to_75(tmp_path: Path) -> None:
    """A stand-in for torchrun that leaves the marker when it gets the forwarded SIGTERM."""
    env = {**os.environ, STOPPED_DIR_ENV: str(tmp_path)}
    done = signal_when_ready(tmp_path / "ready")  # this process plays the launcher
    try:
        code = launch.run_torchrun([sys.executable, "-c", SLEEPER], env, str(tmp_path))
    finally:
        done.set()
    assert code == EXIT_STOPPED_ON_REQUEST
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_launch_waits_for_the_rank_table_only_when_rank_table_file_is_set(
    tmp_path: Path, no_exec: None
) -> None:
    table = tmp_path / "hccl.json"
    write_table(table, "completed")
    env = {**POD_ENV, Env.RANK_TABLE_FILE: str(table)}
    with pytest.raises(Exec) as ex:
        main(["--rank-table-timeout", "0", *RECIPE], env=env)
    assert ex.value.argv[-len(RECIPE) :] == RECIPE
    write_table(table, "initializing")
    assert main(["--rank-table-timeout", "0", *RECIPE], env=env) == 1  # waited, timed out
    with pytest.raises(Exec):  # the same table, but the job needs none: no waiting
        main(["--rank-table-timeout", "0", *RECIPE], env=POD_ENV)
    with pytest.raises(Exec):  # an empty value is no file either
        main(["--rank-table-timeout", "0", *RECIPE], env={**POD_ENV, Env.RANK_TABLE_FILE: ""})


def write_table(path: Path, status: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"status": status, "version": "1.0", "server_count": "1"}))
    tmp.replace(path)  # like the kubelet's atomic ConfigMap update


def configmap_volume(directory: Path, text: str) -> Path:
    """A ConfigMap volume as the kubelet lays it out (atomic_writer.go): the data in a
    timestamped folder, ``..data`` a symlink to it, and each key a symlink through ``..data``."""
    version = directory / "..2026_12_07_10_00_00.000000001"
    version.mkdir(parents=True)
    (version / "hccl.json").write_text(text)
    (directory / "..data").symlink_to(version.name)
    (directory / "hccl.json").symlink_to("..data/hccl.json")
    return directory / "hccl.json"


def hccl_would_read(path: str) -> bool:
    """torch_npu HCCLUtils.cpp checkFilePathReadable: an existing, readable regular file that
    is not a symlink (it lstat()s the path and refuses S_ISLNK)."""
    import stat

    mode = os.lstat(path).st_mode
    return stat.S_ISREG(mode) and not stat.S_ISLNK(mode) and os.access(path, os.R_OK)


def test_the_mounted_table_reaches_hccl_as_a_regular_file(tmp_path: Path, no_exec: None) -> None:
    """The fallback path (no API): the kubelet's symlinked key is waited on, and HCCL is
    handed a regular copy holding the completed table, byte for byte."""
    text = json.dumps({"status": "completed", "version": "1.0", "server_count": "1"})
    mounted = configmap_volume(tmp_path / "config", text)
    assert not hccl_would_read(str(mounted))  # what HCCL would have refused
    env = {**POD_ENV, Env.RANK_TABLE_FILE: str(mounted)}
    with pytest.raises(Exec) as ex:
        main(["--rank-table-source", "file", "--rank-table-timeout", "0", *RECIPE], env=env)
    handed = ex.value.env[Env.RANK_TABLE_FILE]
    assert handed != str(mounted)
    assert hccl_would_read(handed)
    assert Path(handed).read_text() == text


def test_launch_fails_clearly_when_the_rank_table_never_completes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, no_exec: None
) -> None:
    table = tmp_path / "hccl.json"
    write_table(table, "initializing")
    env = {**POD_ENV, Env.RANK_TABLE_FILE: str(table)}
    with caplog.at_level(logging.INFO, logger="densenet_trainer.launch"):
        code = main(["--rank-table-timeout", "0", *RECIPE], env=env)
    assert code == 1
    assert "is not completed after 0 s" in caplog.text


STEP_LINE = re.compile(r"step: (\d+) epoch: 1 FPS: ([\d.]+) loss: [\d.]+ lr: [\d.]+ data-wait: ")


def test_launch_runs_a_synthetic_performance_job_on_two_cpu_ranks() -> None:
    """The pod entrypoint end to end: torchrun, 2 gloo ranks, FPS lines on rank 0."""
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
            "--device",
            "cpu",
        ],
        env=launch_env(2),
    ).stdout
    assert f"run {sys.executable} -m torch.distributed.run -m densenet_trainer.train" in out
    assert "densenet121 on 2 x cpu (backend gloo), mode performance" in out
    steps = [int(m[1]) for m in STEP_LINE.finditer(out)]
    assert steps == [4, 8, 12]
    assert all(float(m[2]) > 0 for m in STEP_LINE.finditer(out))
    summary = re.search(
        r"performance: FPS: ([\d.]+) data-wait: ([\d.]+)% \(densenet121, world size 2", out
    )
    assert summary is not None and float(summary[1]) > 0
    assert "checkpoint" not in out  # performance runs neither load nor save
