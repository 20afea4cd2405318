"""Runs the operator as a local process against a cluster: for the tests and the benchmarks.

The operator is the real one (`python -m densenet_operator.cli run`), started as it would be in
its Deployment but from this venv, with the kubeconfig it is given instead of an in-cluster
ServiceAccount token, and its liveness endpoint and metrics on a free local port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import psutil
from testsupport import wait_for


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    """`densenet-operator run` as a child process; can be killed and started again."""

    # The instances running now: a test that runs an operator of its own stops the others
    # (see `others_stopped`), so that two operators never act on the same jobs.
    running: ClassVar[set[OperatorProcess]] = set()

    def __init__(
        self, kubeconfig: Path, log_path: Path, *extra_args: str, verbose: bool = True
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra_args = (*(["--verbose"] if verbose else []), *extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, wait: bool = True) -> None:
        self.port = _free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "DENSENET_TRAINER_IMAGE": "densenet-trainer:test",
        }
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "densenet_operator.cli", "run",
             "--liveness", f"http://127.0.0.1:{self.port}/healthz",
             "--metrics", self.metrics_url, *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        OperatorProcess.running.add(self)
        if wait:
            wait_for(
                self.healthy,
                timeout=60,
                what=f"the operator's liveness endpoint (log: {self.log_path})",
            )

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"the operator exited with {self.process.returncode}:\n{self.log_tail()}"
            )
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/healthz", timeout=1
            ) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no clean-up, as when a node dies under the operator."""
        OperatorProcess.running.discard(self)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        OperatorProcess.running.discard(self)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    @classmethod
    @contextmanager
    def others_stopped(cls) -> Iterator[None]:
        """Stops every running instance for the duration, then starts them again."""
        stopped = list(cls.running)
        for process in stopped:
            process.stop()
        try:
            yield
        finally:
            for process in stopped:
                process.start()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    @property
    def pid(self) -> int:
        assert self.process is not None, "the operator was never started"
        return self.process.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time the operator has used so far."""
        times = psutil.Process(self.pid).cpu_times()
        return times.user + times.system

    def peak_rss_bytes(self) -> int:
        """The operator's peak resident set size (Linux's VmHWM: psutil reports only the
        current RSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0
