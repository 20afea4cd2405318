"""Graceful stops: the signal handler, the ranks' agreement, the checkpoint triggers, the
markers the launcher reads, and what a kill in the middle of a checkpoint write leaves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from densenet_trainer.checkpoint import (
    checkpoint_name,
    load_latest_checkpoint,
    save_atomic,
)
from densenet_trainer.control import StepControl
from densenet_trainer.distributed import setup_distributed
from densenet_trainer.stopping import (
    STOP_SIGNALS,
    CheckpointTriggers,
    StopRequest,
    all_stopped_on_request,
    ignore_stop_signals_in_loader_worker,
    remove_stale_temp_files,
)

from .conftest import REPO_ROOT, free_port, trainer_env
from .test_engine import CPU

# ------------------------------------------------------------------ the signal handler


def test_a_stop_signal_is_recorded_not_fatal_and_a_second_one_only_counted() -> None:
    stop = StopRequest()
    with stop.installed():
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs between bytecodes of this thread
        assert stop.requested and stop.describe() == "SIGTERM"
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.signal == signal.SIGTERM and stop.repeats == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # given back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_outside_the_main_thread_nothing_is_installed() -> None:
    results = []
    thread = threading.Thread(target=lambda: results.append(StopRequest().install()))
    thread.start()
    thread.join()
    assert results == [False]


def test_loader_processes_ignore_stop_signals() -> None:
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        ignore_stop_signals_in_loader_worker(0)
        assert all(signal.getsignal(signum) is signal.SIG_IGN for signum in STOP_SIGNALS)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ------------------------------------------------------------------ checkpoint triggers


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_step_trigger_fires_on_every_nth_global_step() -> None:
    triggers = CheckpointTriggers(every_steps=3)
    assert [step for step in range(1, 10) if triggers.step_due(step)] == [3, 6, 9]
    assert not CheckpointTriggers().step_due(3) and not CheckpointTriggers().time_due()


def test_the_time_trigger_counts_from_the_last_checkpoint_of_any_kind() -> None:
    clock = FakeClock()
    triggers = CheckpointTriggers(every_minutes=2, clock=clock)
    clock.now += 119
    assert not triggers.time_due()
    clock.now += 1
    assert triggers.time_due()
    triggers.saved()  # e.g. the end of an epoch
    assert not triggers.time_due()
    clock.now += 120
    assert triggers.time_due()


def test_one_process_decides_alone() -> None:
    stop = StopRequest()
    control = StepControl(CPU, stop, CheckpointTriggers(every_steps=2))
    assert control.decide(1).checkpoint is False and control.decide(2).checkpoint is True
    assert control.decide(2, after_step=False).checkpoint is False  # between epochs
    stop.handle(signal.SIGTERM)
    assert control.decide(3).stop and control.stopping_at == 3


# ------------------------------------------------------------------ agreement of 2 ranks

STEPS = 8
SIGNALLED_RANK, SIGNAL_AFTER = 1, 5  # only rank 1 is asked, after its step 5
TIME_DUE_AFTER = 3  # rank 0's clock says a checkpoint is due from step 3 on


def _agreement_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    env = {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank)}
    ctx = setup_distributed("cpu", env=env)
    clock = FakeClock()
    stop = StopRequest()
    # rank 1's own clock would never call for a checkpoint: rank 0's decides
    triggers = CheckpointTriggers(every_minutes=1 if rank == 0 else 1000, clock=clock)
    control = StepControl(ctx, stop, triggers)
    decisions = []
    try:
        for step in range(1, STEPS + 1):
            time.sleep(0.01 * rank)  # the ranks are not in lockstep
            if rank == SIGNALLED_RANK and step == SIGNAL_AFTER:
                stop.handle(signal.SIGTERM)
            if step == TIME_DUE_AFTER:
                clock.now += 61
            decision = control.decide(step)
            decisions.append([step, decision.stop, decision.checkpoint])
            if decision.checkpoint:
                triggers.saved()
            if decision.stop:
                break
    finally:
        torch.distributed.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(decisions))


def test_a_stop_asked_of_one_rank_stops_every_rank_after_the_same_step(tmp_path: Path) -> None:
    mp.spawn(_agreement_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    decisions = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert decisions[0] == decisions[1]  # the same answers, step by step
    assert decisions[0][-1] == [SIGNAL_AFTER, True, False]  # both stop after step 5
    assert [step for step, _, checkpoint in decisions[0] if checkpoint] == [TIME_DUE_AFTER]


# ------------------------------------------------------------------ launcher markers, temp files


def test_every_local_rank_must_have_stopped_on_request() -> None:
    def marker(rank: int) -> dict[str, int]:
        return {"rank": rank, "local_world_size": 2}

    assert all_stopped_on_request([marker(0), marker(1)])
    assert not all_stopped_on_request([marker(0)])
    assert not all_stopped_on_request([])


def test_stale_temp_files_of_killed_writes_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / f".{checkpoint_name(1, 10)}.x1.tmp"
    stale.write_bytes(b"partial")
    fresh = tmp_path / f".{checkpoint_name(1, 11)}.x2.tmp"
    fresh.write_bytes(b"being written")
    os.utime(stale, (time.time() - 600, time.time() - 600))
    keep = tmp_path / checkpoint_name(1, 9)
    keep.write_bytes(b"")
    assert remove_stale_temp_files(tmp_path, older_than=300) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, keep.name])
    assert remove_stale_temp_files(tmp_path / "absent") == []


# ------------------------------------------------------------------ a kill in the middle of a write

WRITER = """
import sys, time, torch
from pathlib import Path
from densenet_trainer.checkpoint import checkpoint_name, save_atomic

class Slow:
    # pickled in the middle of the write: announces it, then takes its time
    def __reduce__(self):
        Path(sys.argv[2]).write_text("writing")
        time.sleep(60)
        return (int, (0,))

directory = Path(sys.argv[1])
save_atomic({"step": 10, "w": torch.ones(1000)}, directory / checkpoint_name(1, 10))
save_atomic({"step": 20, "w": torch.ones(1000), "slow": Slow()}, directory / checkpoint_name(2, 20))
"""


@pytest.mark.parametrize("kill_signal", [signal.SIGKILL, signal.SIGTERM])
def test_a_kill_in_the_middle_of_a_write_leaves_the_newest_checkpoint_loadable(
    tmp_path: Path, kill_signal: int
) -> None:
    """What the kubelet's SIGKILL at the end of the grace period (or a plain SIGTERM to a
    writer without a handler) does to a checkpoint being written."""
    writing = tmp_path / "writing"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path), str(writing)],
        env=trainer_env(),
        cwd=REPO_ROOT,
    )
    deadline = time.monotonic() + 60
    while not writing.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writing.exists(), "the writer never reached the second write"
    proc.send_signal(kill_signal)
    assert proc.wait(timeout=30) == -kill_signal
    found = load_latest_checkpoint(tmp_path)
    assert found is not None and found[1]["step"] == 10  # the previous one, complete
    assert len(list(tmp_path.glob(".*.tmp"))) == 1  # the cut write, never renamed into place
    # the next run's rank 0 clears it away (stale: older than the grace of a live writer)
    save_atomic({"step": 30}, tmp_path / checkpoint_name(3, 30))
    assert len(remove_stale_temp_files(tmp_path, older_than=0)) == 1
