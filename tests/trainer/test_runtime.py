"""The start-up line that says what ran (runtime.py)."""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path

import pytest
import torch

from densenet_trainer.progress import clean_fields
from densenet_trainer.runtime import describe_runtime, nvidia_driver_version


def test_cpu_names_torch_and_the_machine() -> None:
    line = describe_runtime("cpu")
    assert line == f"torch {torch.__version__}, CPU {platform.machine()}"
    assert clean_fields({"runtime": line}) == {"runtime": line}  # a status.training field


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_names_the_runtime_the_driver_and_the_gpu() -> None:
    line = describe_runtime("cuda")
    assert f"CUDA {torch.version.cuda}" in line
    assert torch.cuda.get_device_name() in line


@pytest.mark.skipif(
    importlib.util.find_spec("torch_npu") is None,
    reason="needs an Ascend NPU with torch_npu and CANN (docs/ascend.md)",
)
def test_npu_names_torch_npu_cann_hccl_and_the_soc() -> None:
    line = describe_runtime("npu")
    assert all(f"{name} unknown" not in line for name in ("torch_npu", "CANN", "HCCL", "SoC"))


@pytest.mark.skipif(
    importlib.util.find_spec("torch_npu") is not None, reason="torch_npu is installed here"
)
def test_npu_without_torch_npu_says_so_rather_than_guessing() -> None:
    with pytest.raises(ImportError):
        describe_runtime("npu")


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC "
         "2024\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n", "550.54.15"),
        ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  "
         "(dvs-builder@U16-I3-B03-4-3)  Thu Jan 23 23:18:38 UTC 2025\n", "570.86.15"),
        ("something else\n", "unknown"),
    ],
)  # fmt: skip
def test_the_driver_version_comes_from_the_kernel_modules_file(
    tmp_path: Path, text: str, version: str
) -> None:
    path = tmp_path / "version"
    path.write_text(text)
    assert nvidia_driver_version(path) == version
    assert nvidia_driver_version(tmp_path / "absent") == "unknown"


def test_an_image_built_for_another_cann_says_so() -> None:
    from densenet_trainer.runtime import declared_cann_mismatch

    assert declared_cann_mismatch("8.3.RC1", "8.3.rc1") is None
    assert declared_cann_mismatch("8.3.RC1", "8.5.0") == "built for CANN 8.3.RC1, not 8.5.0"
    assert declared_cann_mismatch("none", "8.5.0") is None  # the CPU/CUDA flavours
    assert declared_cann_mismatch(None, "8.5.0") is None
    assert declared_cann_mismatch("8.3.RC1", "unknown") is None
