"""Fixtures of the trainer tests: a digits ImageFolder, free ports, running the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from densenet_contract import Env
from densenet_trainer.digits import DigitsSplit, write_digits_imagefolder

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DENSENET_TRAIN = str(VENV_BIN / "densenet-train")

# The digits are written at 32 px: large enough for DenseNet's downsampling to 1x1,
# small enough that two CPU processes train to >90% in about a minute.
DIGITS_SIZE = 32
CORRUPT_IMAGE = "train/3/corrupt_digit.png"
WAIT_LIMIT = 60.0  # how long a test waits for a background thread before failing


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def trainer_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a trainer subprocess: no cluster, no accelerators, quiet threads."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(
            ("DENSENET_JOB_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_", "PET_", "TORCHELASTIC_")
        )
        and key != "KUBECONFIG"
    }
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_cli(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command, returning its combined stdout+stderr; fail with the output shown."""
    proc = subprocess.run(
        list(args),
        env=trainer_env(env),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"{args} exited {proc.returncode}:\n{proc.stdout[-6000:]}")
    return proc


def wait_for_lines(path: Path, count: int, proc: subprocess.Popen[str], limit: float = 300) -> None:
    """Wait until ``path`` (a --loss-log) has ``count`` lines; fail if ``proc`` ends first."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"{path} never had {count} lines:\n{proc.communicate()[0][-5000:]}")


class RecordingReporter:
    """A progress reporter that keeps every update, in order, with its force flag."""

    def __init__(self) -> None:
        self.updates: list[tuple[dict[str, Any], bool]] = []

    def update(self, fields: Mapping[str, Any], *, force: bool = False) -> None:
        self.updates.append((dict(fields), force))

    def close(self, timeout: float = 10.0) -> bool:
        return True


def launch_env(nproc: int) -> dict[str, str]:
    """torchrun's topology as the operator sets it for a single-pod job (docs/contract.md)."""
    return {
        Env.NNODES: "1",
        Env.NODE_RANK: "0",
        Env.NPROC_PER_NODE: str(nproc),
        Env.MASTER_ADDR: "127.0.0.1",
        Env.MASTER_PORT: str(free_port()),
    }


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsSplit:
    """scikit-learn's digits as PNG files, plus one corrupt file among the training images."""
    root = tmp_path_factory.mktemp("digits")
    split = write_digits_imagefolder(root, size=DIGITS_SIZE, val_fraction=0.2, seed=0)
    (root / CORRUPT_IMAGE).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return split


# ------------------------------------------------------------ a recording API server


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {server}
    insecure-skip-tls-verify: true
users:
- name: trainer
  user:
    token: test-token
contexts:
- name: test
  context: {{cluster: test, user: trainer, namespace: team-a}}
current-context: test
"""
    )
    return path


@dataclass
class Recorded:
    method: str
    path: str
    content_type: str
    authorization: str
    body: dict[str, Any]


@dataclass
class FakeApiServer:
    """Records PATCH requests; answers the first ``fail_first`` of them with HTTP 500."""

    fail_first: int = 0
    requests: list[Recorded] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int) -> list[Recorded]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.requests) >= count, WAIT_LIMIT):
                pytest.fail(f"expected {count} requests, got {len(self.requests)}")
            return list(self.requests)


@pytest.fixture
def api_server() -> Iterator[tuple[FakeApiServer, str]]:
    fake = FakeApiServer()

    class Handler(BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:  # http.server calls do_<METHOD>
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            with fake.arrived:
                fake.requests.append(
                    Recorded(
                        "PATCH",
                        self.path,
                        self.headers.get("Content-Type", ""),
                        self.headers.get("Authorization", ""),
                        body,
                    )
                )
                failing = len(fake.requests) <= fake.fail_first
                fake.arrived.notify_all()
            status, reply = (500, {"kind": "Status", "code": 500}) if failing else (200, body)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
