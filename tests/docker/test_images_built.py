"""The images built for real (hack/images.py: buildah on a Debian base made by mmdebstrap), run
with `buildah run`: their entry points start, the operator image has no torch, and the trainer
image trains a real DenseNet step with two gloo ranks under its own launcher.

A cold build takes minutes (Debian roots, pip); later runs reuse the archives cached by content.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import images
import pytest
from images import BuiltImage

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def built() -> Iterator[dict[str, BuiltImage]]:
    found = images.ensure_images()
    for image in found.values():
        images.ensure_in_storage(image)
    yield found
    for image in found.values():  # the archives stay; a trainer is GBs
        images.remove_from_storage(image.ref)


def run_in(image: BuiltImage, *command: str, volumes: dict[Path, str] | None = None,
           env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """`command` in a fresh working container of `image` (its user, entry point overridden)."""
    container = subprocess.run(
        ["buildah", "from", "--pull-never", image.ref], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        options = [f"--volume={host}:{inside}" for host, inside in (volumes or {}).items()]
        options += [f"--env={key}={value}" for key, value in (env or {}).items()]
        return subprocess.run(
            ["buildah", "run", "--isolation", "chroot", *options, container, "--", *command],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)


def config_of(image: BuiltImage) -> dict[str, object]:
    out = subprocess.run(
        ["buildah", "inspect", "--type", "image", image.ref],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    config: dict[str, object] = json.loads(out)["Docker"]["config"]
    return config


def test_the_refs_name_the_content_and_the_archives_exist(built: dict[str, BuiltImage]) -> None:
    for name, image in built.items():
        assert image.ref == images.image_ref(images.RECIPES[name])
        assert image.archive.is_file() and image.size_bytes == image.archive.stat().st_size


def test_the_operator_image_runs_its_cli_as_65532_without_torch(
    built: dict[str, BuiltImage],
) -> None:
    operator = built["operator"]
    config = config_of(operator)
    assert (config["Entrypoint"], config["Cmd"], config["User"]) == (
        ["densenet-operator"], ["run"], "65532:65532",
    )  # fmt: skip
    assert run_in(operator, "id", "-u").stdout.strip() == "65532"
    helped = run_in(operator, "densenet-operator", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: densenet-operator"), helped
    imported = run_in(operator, "python", "-c", "import densenet_operator, kopf")
    assert imported.returncode == 0, imported.stderr
    no_torch = run_in(
        operator, "python", "-c",
        "import importlib.util as u; print([m for m in ('torch', 'torchvision') if u.find_spec(m)])",
    )  # fmt: skip
    assert (no_torch.returncode, no_torch.stdout.strip()) == (0, "[]"), no_torch.stderr


def test_the_trainer_image_runs_its_cli_as_1000_with_torch_and_gloo(
    built: dict[str, BuiltImage],
) -> None:
    trainer = built["trainer"]
    config = config_of(trainer)
    assert (config["Entrypoint"], config["Cmd"], config["User"]) == (
        ["densenet-train"], ["launch"], "1000:1000",
    )  # fmt: skip
    helped = run_in(trainer, "densenet-train", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: densenet-train"), helped
    probe = run_in(
        trainer, "python", "-c",
        "import json, torch, torch.distributed as d, densenet_trainer; print(json.dumps("
        "[torch.__version__, d.is_gloo_available(), torch.cuda.is_available()]))",
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    version, gloo, cuda = json.loads(probe.stdout.splitlines()[-1])
    assert version.startswith("2.") and gloo and not cuda


@pytest.fixture
def out_dir(tmp_path: Path) -> Iterator[Path]:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # the trainer runs as uid 1000
    yield out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_trainer_image_trains_ddp_steps_over_gloo(
    built: dict[str, BuiltImage], out_dir: Path
) -> None:
    """`densenet-train launch` as the pod runs it: torchrun, 2 ranks, gloo, synthetic data."""
    topology = {"PET_NNODES": "1", "PET_NODE_RANK": "0", "PET_NPROC_PER_NODE": "2",
                "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(free_port())}  # fmt: skip
    steps = 3
    done = run_in(
        built["trainer"], "densenet-train", "launch", "--synthetic", "--arch", "densenet121",
        "--device", "cpu", "--image-size", "32", "--num-classes", "10", "-b", "4", "-j", "0",
        "--epochs", "1", "--mode", "train", "--max-train-steps", str(steps), "--print-freq", "1",
        "--checkpoint-dir", "/out/ckpt", "--loss-log", "/out/loss.jsonl",
        volumes={out_dir: "/out"}, env=topology, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Rank 0's start line (train.py) names the world torchrun made.
    started = re.findall(r"densenet121 on (\d+) x cpu \(backend (\w+)\)", done.stdout + done.stderr)
    assert started == [("2", "gloo")], done.stdout[-3000:] + done.stderr[-3000:]
    losses = [json.loads(line) for line in (out_dir / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == steps, losses
    assert all(math.isfinite(float(entry["loss"])) for entry in losses), losses
