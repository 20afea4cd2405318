"""Pod entrypoint ``densenet-train launch``: wait for the rank table, then run torchrun.

On Ascend the launcher first waits until the job's rank table is completed and lists this pod
(ranktable_wait.py: a watch of the job's ConfigMap through the API, the mounted file as
fallback) and hands HCCL a local copy, so training starts as soon as the operator completes
the table rather than when the kubelet next refreshes the ConfigMap volume.

The operator passes the training flags as the container's arguments (``--device`` and
``--resume auto`` among them) and the topology in torchrun's own environment variables
(PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE, PET_MASTER_ADDR, PET_MASTER_PORT; see
docs/contract.md); on Ascend it also sets RANK_TABLE_FILE, which HCCL reads once the table is
completed. torchrun (torch.distributed.run) then starts one training process per local device.
The training flags are not parsed here: each training process parses them (and refuses bad
ones) itself.

Why torchrun runs as a child rather than exec'd: the container's exit code. A training
process that stops on request (SIGTERM: it finishes its step, rank 0 saves, stopping.py)
exits with ``EXIT_STOPPED_ON_REQUEST`` (75), which the operator counts as a disruption, not a
failure. torchrun cannot pass it on: it exits 1 when a child exits non-zero (ChildFailedError)
and 1 when it got SIGTERM itself (SignalException, after forwarding the signal to its
children, waiting TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds, 30 by default, and killing the
rest). So this process stays the container's main process, forwards SIGTERM and SIGINT to
torchrun (started in its own session, so a terminal's Ctrl-C is forwarded exactly once), and
decides the exit code from what the training processes reported: each one that stopped on
request leaves a marker in a directory made for this run (``$DENSENET_STOPPED_DIR``, written
after it saved and left the process group). Markers from every local rank: 75. Otherwise, a
stop signal received: 128 + its number (what a process killed by it reports, a disruption
too). Otherwise torchrun's own code. torchrun's shutdown timeout is raised (--stop-timeout) so
that the pod's terminationGracePeriodSeconds, not torchrun, bounds a graceful stop.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

from densenet_contract import EXIT_STOPPED_ON_REQUEST, Env
from densenet_trainer.flags import DEFAULT_STOP_TIMEOUT, build_launch_parser
from densenet_trainer.ranktable_wait import (
    RankTableTimeout,
    RankTableWait,
    configmap_watch_from_env,
    write_local_copy,
)
from densenet_trainer.stopping import (
    STOPPED_DIR_ENV,
    all_stopped_on_request,
    read_stop_markers,
)

logger = logging.getLogger("densenet_trainer.launch")

TRAIN_MODULE = "densenet_trainer.train"
TORCHRUN_ENV = (Env.NNODES, Env.NODE_RANK, Env.NPROC_PER_NODE, Env.MASTER_ADDR, Env.MASTER_PORT)
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SHUTDOWN_TIMEOUT_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"  # torchrun's own


def build_torchrun_args(train_args: Sequence[str]) -> list[str]:
    """torchrun's arguments: the training module and the training flags, untouched.

    torchrun takes its topology from the PET_* environment (none set: one node, one process).
    """
    return ["-m", TRAIN_MODULE, *train_args]


def torchrun_env(
    env: Mapping[str, str], stopped_dir: str | None, stop_timeout: int | None
) -> dict[str, str]:
    """torchrun's environment: the pod's, the marker directory, and its shutdown timeout."""
    child = {**env, STOPPED_DIR_ENV: stopped_dir} if stopped_dir else dict(env)
    if stop_timeout is not None:
        child[SHUTDOWN_TIMEOUT_ENV] = str(stop_timeout)
    else:
        child.setdefault(SHUTDOWN_TIMEOUT_ENV, str(DEFAULT_STOP_TIMEOUT))
    return child


class SignalForwarder:
    """Forwards the first of FORWARDED_SIGNALS to a child process (once it exists).

    Only the first: torchrun, given a second signal while it waits for its children to
    finish their step and checkpoint, would give up waiting and exit, and the container
    with it. Later ones are logged; the kubelet's SIGKILL after the grace period remains the
    hard stop.
    """

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.received: list[int] = []
        self.forwarded = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalForwarder:
        for signum in FORWARDED_SIGNALS:
            self._previous[signum] = signal.signal(signum, self.forward)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def forward(self, signum: int, frame: FrameType | None = None) -> None:
        self.received.append(signum)
        if len(self.received) == 1 and self.process is not None:
            self._send(signum)

    def started(self, process: subprocess.Popen[bytes]) -> None:
        """The child exists now: pass on a signal that arrived before it did."""
        self.process = process
        if self.received:
            self._send(self.received[0])

    def _send(self, signum: int) -> None:
        assert self.process is not None
        if not self.forwarded and self.process.poll() is None:
            self.forwarded = True
            self.process.send_signal(signum)


def exit_code(returncode: int, received: Sequence[int], markers: list[dict[str, Any]]) -> int:
    """The container's exit code from torchrun's, the signals forwarded and the markers."""
    if all_stopped_on_request(markers):
        return EXIT_STOPPED_ON_REQUEST
    if received:
        return 128 + received[0]
    return 128 - returncode if returncode < 0 else returncode


def run_torchrun(command: Sequence[str], env: Mapping[str, str], stopped_dir: str | None) -> int:
    """Run torchrun to its end, forwarding stop signals; return the container's exit code."""
    with SignalForwarder() as forwarder:
        process = subprocess.Popen(list(command), env=dict(env), start_new_session=True)
        forwarder.started(process)
        returncode = process.wait()
    if len(forwarder.received) > 1:
        logger.info(
            "%d more stop signals came while stopping: not forwarded", len(forwarder.received) - 1
        )
    markers = read_stop_markers(stopped_dir) if stopped_dir else []
    code = exit_code(returncode, forwarder.received, markers)
    if code == EXIT_STOPPED_ON_REQUEST:
        logger.info(
            "all %d local training processes stopped on request after step %s "
            "(newest checkpoint: %s): exit %d",
            len(markers),
            markers[0].get("step"),
            markers[0].get("checkpoint") or "none written by this run",
            code,
        )
    elif code != 0:
        logger.info("torchrun exited %d: exit %d", returncode, code)
    return code


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s launch: %(message)s")
    env = os.environ if env is None else env
    launch_args, train_args = build_launch_parser().parse_known_args(argv)

    if env.get(Env.RANK_TABLE_FILE):
        try:
            env = wait_for_rank_table(env, launch_args)
        except RankTableTimeout as exc:
            logger.error("%s", exc)
            return 1

    command = [sys.executable, "-m", "torch.distributed.run", *build_torchrun_args(train_args)]
    topology = [f"{name}={env[name]}" for name in TORCHRUN_ENV if name in env]
    logger.info("run %s (%s)", shlex.join(command), " ".join(topology) or "one node, one process")
    sys.stdout.flush()
    sys.stderr.flush()
    stopped_dir = make_stopped_dir()
    try:
        return run_torchrun(
            command, torchrun_env(env, stopped_dir, launch_args.stop_timeout), stopped_dir
        )
    finally:
        if stopped_dir:
            shutil.rmtree(stopped_dir, ignore_errors=True)


def wait_for_rank_table(env: Mapping[str, str], launch_args: Any) -> Mapping[str, str]:
    """Wait until the job's rank table is ready; the environment for torchrun, whose
    RANK_TABLE_FILE is always a local copy of the ready table, a regular file of this
    container: from the API, or from the mounted file, which is a symlink into the
    ConfigMap volume (``hccl.json -> ..data/hccl.json``) that torch_npu's
    ``checkFilePathReadable`` (HCCLUtils.cpp) refuses, whereupon HCCL says so only at INFO
    level and builds its communicator over MASTER_ADDR instead."""
    api = configmap_watch_from_env(env) if launch_args.rank_table_source != "file" else None
    waiter = RankTableWait(
        env[Env.RANK_TABLE_FILE],
        launch_args.rank_table_timeout,
        launch_args.rank_table_poll_interval,
        pod_ip=env.get(Env.POD_IP) or None,
        api=api,
    )
    seen = waiter.run()
    if seen.text is None:  # ready states always carry their text; kept for the type checker
        return env
    local = write_local_copy(seen.text)
    source = "the API" if waiter.from_api else env[Env.RANK_TABLE_FILE]
    logger.info("rank table from %s written to %s for HCCL", source, local)
    return {**env, Env.RANK_TABLE_FILE: local}


def make_stopped_dir() -> str | None:
    """This run's marker directory; None where no temporary directory can be made (a stop
    then ends with 128 + the signal's number instead of 75)."""
    try:
        return tempfile.mkdtemp(prefix="densenet-stopped-")
    except OSError as exc:
        logger.warning(
            "no directory for stop markers (%s): a graceful stop exits 128 + its signal", exc
        )
        return None
