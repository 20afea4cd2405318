"""What actually runs: the versions of the stack under the trainer, said once at start-up.

On an NPU a run depends on a pair that must match (torch and torch_npu, built for one CANN
release) and on kernels for one SoC; on a GPU on the CUDA runtime and the driver. The trainer
logs them and reports them in ``status.training.runtime``, so ``kubectl describe`` shows which
pair and which chip a job ran on (docs/ascend.md, "First run on a real cluster").

Every lookup is guarded: a missing attribute in an older torch_npu, or a driver file that is not
there, reads "unknown" rather than stopping a run that would train.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from densenet_contract import TRAINING_FIELDS
from densenet_contract.cann import ImageEnv

UNKNOWN = "unknown"
NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")
# "... x86_64  Kernel Module  550.54.15 ..." and the open modules' "... Open Kernel Module for
# x86_64  570.86.15 ...".
_NVIDIA_DRIVER = re.compile(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)")
MAX_LENGTH = TRAINING_FIELDS["runtime"].max_length or 256


def _ask(question: Callable[[], object]) -> str:
    with contextlib.suppress(Exception):
        answer = question()
        if answer not in (None, ""):
            return str(answer)
    return UNKNOWN


def npu_parts(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """torch_npu's version, CANN's and HCCL's (torch_npu.utils.get_cann_version, 2.1+), and
    the SoC's name (e.g. Ascend910B2, from the driver); the CANN the image says it was built
    for (docker/trainer.Dockerfile) where that is not the one loaded."""
    torch_npu = importlib.import_module("torch_npu")
    cann_version = getattr(getattr(torch_npu, "utils", None), "get_cann_version", None)

    def cann(module: str) -> str:
        return _ask(lambda: cann_version(module=module)) if cann_version else UNKNOWN

    loaded = cann("CANN")
    parts = [
        ("torch_npu", _ask(lambda: torch_npu.__version__)),
        ("CANN", loaded),
        ("HCCL", cann("HCCL")),
        ("SoC", _ask(lambda: torch.npu.get_device_name())),  # type: ignore[attr-defined]
    ]
    if mismatch := declared_cann_mismatch(env.get(ImageEnv.CANN_VERSION), loaded):
        parts.append(("image", mismatch))
    return parts


def declared_cann_mismatch(declared: str | None, loaded: str) -> str | None:
    """What to say when the image was built for another CANN than the one loaded (the
    toolkit in the image is not the one its torch_npu was paired with); None when they
    agree or either is unknown."""
    if not declared or declared == "none" or loaded == UNKNOWN:
        return None
    if declared.lower() == loaded.lower():
        return None
    return f"built for CANN {declared}, not {loaded}"


def nvidia_driver_version(path: Path = NVIDIA_DRIVER_FILE) -> str:
    """The kernel module's version from its /proc file ("NVRM version: NVIDIA UNIX x86_64
    Kernel Module  550.54.15  ..."): the driver, not the CUDA version torch was built for."""
    with contextlib.suppress(OSError):
        text = path.read_text(encoding="utf-8", errors="replace")
        if found := _NVIDIA_DRIVER.search(text):
            return found[1]
    return UNKNOWN


def cuda_parts() -> list[tuple[str, str]]:
    return [
        ("CUDA", _ask(lambda: torch.version.cuda)),
        ("cuDNN", _ask(torch.backends.cudnn.version)),
        ("driver", nvidia_driver_version()),
        ("GPU", _ask(torch.cuda.get_device_name)),
    ]


def describe_runtime(device_type: str, env: Mapping[str, str] | None = None) -> str:
    """One line: "torch 2.8.0+cpu, torch_npu 2.8.0, CANN 8.3.RC1, HCCL 8.3.RC1, SoC
    Ascend910B2" on npu; the CUDA runtime, cuDNN, driver and GPU on cuda; the CPU on cpu."""
    parts: list[tuple[str, str]] = [("torch", str(torch.__version__))]
    if device_type == "npu":
        parts += npu_parts(os.environ if env is None else env)
    elif device_type == "cuda":
        parts += cuda_parts()
    else:
        parts.append(("CPU", platform.machine() or UNKNOWN))
    line = ", ".join(f"{name} {value}" for name, value in parts)
    return line if len(line) <= MAX_LENGTH else line[: MAX_LENGTH - 3] + "..."
