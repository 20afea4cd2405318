"""Pod entrypoint ``densenet-train launch``: wait for the rank table, then exec torchrun.

The operator sets NNODES, NODE_RANK, NPROC_PER_NODE, MASTER_ADDR, MASTER_PORT, DEVICE_TYPE
and, on Ascend, RANK_TABLE_FILE (docs/contract.md). torchrun (torch.distributed.run) then
starts one training process per local device and forwards signals to them; exec-ing it
makes it the container's main process, so a pod's SIGTERM reaches the training processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from densenet_trainer.cli import non_negative_float, parse_args

logger = logging.getLogger("densenet_trainer.launch")

TRAIN_MODULE = "densenet_trainer.train"
DEVICE_BY_DEVICE_TYPE = {"ascend": "npu", "cuda": "cuda", "cpu": "cpu"}
DEFAULT_RANK_TABLE_TIMEOUT = 300.0  # Huawei's script: 60 polls x 5 s
DEFAULT_RANK_TABLE_POLL_INTERVAL = 5.0


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
    """Poll the rank table until its "status" is "completed"; return the table.

    Raises RankTableTimeout, naming the last state seen, when ``timeout`` seconds pass.
    """
    deadline = clock() + timeout
    last_state = None
    while True:
        state, table = read_rank_table(path)
        if state == "completed" and table is not None:
            logger.info("rank table %s is completed", path)
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


def device_for(device_type: str) -> str:
    """DEVICE_TYPE (ascend/cuda/cpu) to the trainer's --device (npu/cuda/cpu)."""
    try:
        return DEVICE_BY_DEVICE_TYPE[device_type]
    except KeyError:
        raise ValueError(
            f"DEVICE_TYPE={device_type!r}: expected one of {sorted(DEVICE_BY_DEVICE_TYPE)}"
        ) from None


def build_torchrun_args(env: Mapping[str, str], train_args: Sequence[str]) -> list[str]:
    """torchrun's arguments for this pod: topology from ``env``, then the training command.

    Adds ``--resume auto`` when a --checkpoint-dir is given (so a restarted gang continues
    from the newest checkpoint) and ``--device`` from DEVICE_TYPE, unless either is given.
    The training flags are validated here, so a bad recipe fails before any process starts.
    """
    parsed = parse_args(list(train_args))
    command = [
        "--nnodes",
        env.get("NNODES", "1"),
        "--node-rank",
        env.get("NODE_RANK", "0"),
        "--nproc-per-node",
        env.get("NPROC_PER_NODE", "1"),
        "--master-addr",
        env.get("MASTER_ADDR", "127.0.0.1"),
        "--master-port",
        env.get("MASTER_PORT", "29500"),
        "-m",
        TRAIN_MODULE,
        *train_args,
    ]
    if parsed.checkpoint_dir is not None and parsed.resume is None:
        command += ["--resume", "auto"]
    if env.get("DEVICE_TYPE") and not _has_flag(train_args, "--device"):
        command += ["--device", device_for(env["DEVICE_TYPE"])]
    return command


def _has_flag(args: Sequence[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="densenet-train launch",
        description=(
            "Pod entrypoint: wait for the Ascend rank table (DEVICE_TYPE=ascend), then run "
            "torchrun with NNODES, NODE_RANK, NPROC_PER_NODE, MASTER_ADDR and MASTER_PORT "
            "from the environment. All other flags are training flags (densenet-train --help); "
            "--resume auto is added when --checkpoint-dir is given, --device from DEVICE_TYPE."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--rank-table-timeout",
        type=non_negative_float,
        default=DEFAULT_RANK_TABLE_TIMEOUT,
        metavar="SECONDS",
        help='fail when RANK_TABLE_FILE does not say "status": "completed" within this time',
    )
    parser.add_argument(
        "--rank-table-poll-interval",
        type=non_negative_float,
        default=DEFAULT_RANK_TABLE_POLL_INTERVAL,
        metavar="SECONDS",
        help="seconds between reads of RANK_TABLE_FILE",
    )
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s launch: %(message)s")
    env = os.environ if env is None else env
    launch_args, train_args = build_parser().parse_known_args(argv)

    device_type = env.get("DEVICE_TYPE", "")
    if device_type == "ascend":
        rank_table = env.get("RANK_TABLE_FILE")
        if not rank_table:
            logger.error("DEVICE_TYPE=ascend but RANK_TABLE_FILE is not set")
            return 2
        try:
            wait_for_rank_table(
                rank_table, launch_args.rank_table_timeout, launch_args.rank_table_poll_interval
            )
        except RankTableTimeout as exc:
            logger.error("%s", exc)
            return 1
    try:
        torchrun_args = build_torchrun_args(env, train_args)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2

    command = [sys.executable, "-m", "torch.distributed.run", *torchrun_args]
    logger.info("exec %s", shlex.join(command))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, dict(env))
    return 0  # not reached: execve replaces this process
