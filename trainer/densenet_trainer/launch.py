"""Pod entrypoint ``densenet-train launch``: wait for the rank table, then exec torchrun.

The operator passes the training flags as the container's arguments (``--device`` and
``--resume auto`` among them) and the topology in torchrun's own environment variables
(PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE, PET_MASTER_ADDR, PET_MASTER_PORT; see
docs/contract.md); on Ascend it also sets RANK_TABLE_FILE, which HCCL reads once the table is
completed. torchrun (torch.distributed.run) then starts one training process per local device
and forwards signals to them; exec-ing it makes it the container's main process, so a pod's
SIGTERM reaches the training processes. The training flags are not parsed here: each training
process parses them (and refuses bad ones) itself.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from densenet_contract import RANK_TABLE_COMPLETED, RANK_TABLE_NOT_REQUIRED, Env
from densenet_trainer.flags import (
    DEFAULT_RANK_TABLE_POLL_INTERVAL,
    DEFAULT_RANK_TABLE_TIMEOUT,
    build_launch_parser,
)

logger = logging.getLogger("densenet_trainer.launch")

TRAIN_MODULE = "densenet_trainer.train"
# States after which there is nothing to wait for: HCCL can read the table, or it needs none.
READY_STATES = (RANK_TABLE_COMPLETED, RANK_TABLE_NOT_REQUIRED)
TORCHRUN_ENV = (Env.NNODES, Env.NODE_RANK, Env.NPROC_PER_NODE, Env.MASTER_ADDR, Env.MASTER_PORT)


class RankTableTimeout(TimeoutError):
    pass


def read_rank_table(path: str) -> tuple[str, dict[str, Any] | None]:
    """``(state, table)``: state is the table's "status", or 'missing' / 'unreadable'."""
    try:
        with open(path, encoding="utf-8") as file:
            table = json.load(file)
    except FileNotFoundError:
        return "missing", None
    except (OSError, ValueError):  # mid-update or not JSON (yet)
        return "unreadable", None
    if not isinstance(table, dict):
        return "unreadable", None
    return str(table.get("status", "no status field")), table


def wait_for_rank_table(
    path: str,
    timeout: float = DEFAULT_RANK_TABLE_TIMEOUT,
    poll_interval: float = DEFAULT_RANK_TABLE_POLL_INTERVAL,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Poll the rank table until its "status" is "completed" (or "not-required"); return it.

    Raises RankTableTimeout, naming the last state seen, when ``timeout`` seconds pass.
    """
    deadline = clock() + timeout
    last_state = None
    while True:
        state, table = read_rank_table(path)
        if state in READY_STATES and table is not None:
            logger.info("rank table %s is %s", path, state)
            return table
        if state != last_state:
            logger.info("waiting for rank table %s: status is %r", path, state)
            last_state = state
        remaining = deadline - clock()
        if remaining <= 0:
            raise RankTableTimeout(
                f"rank table {path} is not completed after {timeout:.0f} s (last seen: "
                f"{state!r}). The operator completes it once every worker pod has been given "
                "its NPUs and their device IPs by the Ascend device plugin; see the job's "
                "conditions and events (kubectl describe densenettraining <job>)."
            )
        sleep(min(poll_interval, remaining))


def build_torchrun_args(train_args: Sequence[str]) -> list[str]:
    """torchrun's arguments: the training module and the training flags, untouched.

    torchrun takes its topology from the PET_* environment (none set: one node, one process).
    """
    return ["-m", TRAIN_MODULE, *train_args]


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s launch: %(message)s")
    env = os.environ if env is None else env
    launch_args, train_args = build_launch_parser().parse_known_args(argv)

    rank_table = env.get(Env.RANK_TABLE_FILE)
    if rank_table:
        try:
            wait_for_rank_table(
                rank_table, launch_args.rank_table_timeout, launch_args.rank_table_poll_interval
            )
        except RankTableTimeout as exc:
            logger.error("%s", exc)
            return 1

    command = [sys.executable, "-m", "torch.distributed.run", *build_torchrun_args(train_args)]
    topology = [f"{name}={env[name]}" for name in TORCHRUN_ENV if name in env]
    logger.info("exec %s (%s)", shlex.join(command), " ".join(topology) or "one node, one process")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, dict(env))
    return 0  # not reached: execve replaces this process
