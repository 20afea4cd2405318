"""Between two optimizer steps: the per-step loss log, and the one question all ranks answer
together: stop here, or write a periodic checkpoint here? (stopping.py tells why.)"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch

from densenet_trainer.distributed import DistContext, agree_max
from densenet_trainer.stopping import CheckpointTriggers, StopRequest

logger = logging.getLogger("densenet_trainer")


@dataclass(frozen=True)
class Decision:
    stop: bool  # some rank was asked to stop: every rank stops after this step
    checkpoint: bool  # a periodic checkpoint is due after this step


class LossLog:
    """--loss-log: rank 0 appends ``{"step", "epoch", "loss", "lr"}`` as one JSON line per
    optimizer step (its own batch's loss, exactly as computed: ``repr`` of the float)."""

    def __init__(self, path: str | Path | None, enabled: bool):
        self.file: IO[str] | None = None
        if path is not None and enabled:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def write(self, step: int, epoch: int, loss: torch.Tensor, lr: float) -> None:
        if self.file is not None:
            record = {"step": step, "epoch": epoch, "loss": float(loss.item()), "lr": lr}
            self.file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class StepControl:
    """Asks every rank, after the same step, whether to stop and whether to checkpoint.

    One all_reduce(MAX) of two integers per question: the stop flag of each rank, and rank
    0's verdict on --checkpoint-every-minutes (its clock is the one that counts). The step
    trigger needs no message: every rank counts the same steps.
    """

    def __init__(self, ctx: DistContext, stop: StopRequest, triggers: CheckpointTriggers):
        self.ctx = ctx
        self.stop = stop
        self.triggers = triggers
        self.stopping_at: int | None = None

    def decide(self, global_step: int, *, after_step: bool = True) -> Decision:
        """Every rank must call this at the same point; ``after_step`` False: between epochs
        (only the stop is asked)."""
        time_due = after_step and self.ctx.is_main and self.triggers.time_due()
        stop, checkpoint_now = agree_max([int(self.stop.requested), int(time_due)], self.ctx)
        if stop and self.stopping_at is None:
            self.stopping_at = global_step
            self._announce(global_step)
        step_due = after_step and self.triggers.step_due(global_step)
        return Decision(stop=bool(stop), checkpoint=bool(checkpoint_now) or step_due)

    def _announce(self, global_step: int) -> None:
        if self.stop.requested:
            logger.warning(
                "%s: stopping after step %d; rank 0 writes a checkpoint",
                self.stop.describe(),
                global_step,
            )
        else:
            logger.info("another rank was asked to stop: stopping after step %d", global_step)
