"""Graceful stops and periodic checkpoints: when each rank asks, and how the launcher learns
that every rank stopped on request. Standard library only (the launcher imports it).

The signal flow of a pod's stop (SIGTERM from the kubelet on deletion, eviction, preemption,
suspend or a gang restart):

1. ``densenet-train launch`` (the container's main process) forwards the signal to torchrun,
   which forwards it to every local training process (launch.py).
2. Each training process's :class:`StopRequest` handler only records it.
3. After every optimizer step every rank contributes its flag to one tiny all_reduce(MAX)
   (distributed.agree_max): a request on any rank stops all ranks after the same step,
   also the ranks of pods that got no signal at all.
4. Rank 0 writes the checkpoint, every rank waits for it, leaves the process group and exits
   with ``EXIT_STOPPED_ON_REQUEST`` after dropping a marker into ``$DENSENET_STOPPED_DIR``
   (:func:`write_stop_marker`); the launcher turns "every local rank left a marker" into the
   container's exit code 75 (torchrun itself would report 1).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

logger = logging.getLogger("densenet_trainer")

# What a training process treats as a request to stop after its current step: the kubelet's
# SIGTERM (forwarded by torchrun) and Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Set by the launcher for torchrun's children: where each rank that stopped on request leaves
# its marker. Not part of the operator's contract: launcher and trainer only.
STOPPED_DIR_ENV = "DENSENET_STOPPED_DIR"
MARKER_PREFIX = "stopped-rank"


class StopRequest:
    """Records SIGTERM/SIGINT instead of dying; the training loop reads :attr:`signal`.

    A repeated signal (a second SIGTERM while the checkpoint is written) is counted and
    otherwise ignored: the write finishes, and a SIGKILL can only cut it before its
    ``os.replace``, which leaves the previous checkpoint the newest (checkpoint.save_atomic).
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.repeats = 0
        self.stopped_at: int | None = None  # the global step all ranks stopped after
        self.checkpoint: str | None = None  # what rank 0 saved for it
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def handle(self, signum: int, frame: FrameType | None = None) -> None:
        # Only bookkeeping: a handler that logged could re-enter a stream being written.
        if self.signal is None:
            self.signal = signum
        else:
            self.repeats += 1

    def install(self) -> bool:
        """Take over STOP_SIGNALS; False (nothing done) outside the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self.handle)
        return True

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        self.install()
        try:
            yield self
        finally:
            self.uninstall()

    def describe(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else "no signal"


@dataclass
class CheckpointTriggers:
    """--checkpoint-every-steps and --checkpoint-every-minutes.

    The step trigger is the same on every rank by construction. The time trigger is rank 0's
    clock only (:meth:`time_due` is asked on rank 0), shared through the same all_reduce as
    the stop flag, so that all ranks checkpoint after the same step.
    """

    every_steps: int | None = None
    every_minutes: float | None = None
    clock: Callable[[], float] = time.monotonic
    last_save: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.last_save = self.clock()

    def step_due(self, global_step: int) -> bool:
        return self.every_steps is not None and global_step % self.every_steps == 0

    def time_due(self) -> bool:
        if self.every_minutes is None:
            return False
        return self.clock() - self.last_save >= 60.0 * self.every_minutes

    def saved(self) -> None:
        """A checkpoint was written (any kind): the minutes count from now."""
        self.last_save = self.clock()


def write_stop_marker(env: Mapping[str, str], step: int, checkpoint: str | None) -> Path | None:
    """Tell the launcher that this rank stopped on request (when it runs under one)."""
    directory = env.get(STOPPED_DIR_ENV)
    if not directory:
        return None
    rank = env.get("RANK", "0")
    marker = Path(directory) / f"{MARKER_PREFIX}{rank}.json"
    payload = {
        "rank": int(rank),
        "local_world_size": int(env.get("LOCAL_WORLD_SIZE", "1")),
        "step": step,
        "checkpoint": checkpoint,
    }
    try:
        marker.write_text(json.dumps(payload), encoding="utf-8")
    except OSError as exc:  # the launcher then reports torchrun's own exit code
        logger.warning("cannot write the stop marker %s: %s", marker, exc)
        return None
    return marker


def read_stop_markers(directory: str | Path) -> list[dict[str, Any]]:
    """The markers of the ranks that stopped on request, by rank."""
    markers = []
    for path in sorted(Path(directory).glob(f"{MARKER_PREFIX}*.json")):
        with contextlib.suppress(OSError, ValueError):
            markers.append(json.loads(path.read_text(encoding="utf-8")))
    return sorted(markers, key=lambda marker: int(marker.get("rank", 0)))


def all_stopped_on_request(markers: list[dict[str, Any]]) -> bool:
    """Whether every local rank left a marker (each one names the local world size)."""
    if not markers:
        return False
    expected = {int(marker.get("local_world_size", 0)) for marker in markers}
    return len(expected) == 1 and len(markers) == expected.pop()


def remove_stale_temp_files(directory: str | Path, older_than: float = 0.0) -> list[Path]:
    """Delete the temporary files of checkpoint writes that a kill cut short.

    Call it only where no other writer can be active (rank 0, before training).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    now = time.time()
    for path in directory.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime >= older_than:
                path.unlink()
                removed.append(path)
    return removed


def ignore_stop_signals_in_loader_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: loader processes leave stop signals to their trainer.

    torchrun signals each training process's whole process group (os.killpg), so the
    SIGTERM of a graceful stop reaches the loader processes too; dying of it would fail the
    step their trainer is finishing. They end with their DataLoader (or their trainer).
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
