"""The fused DenseNet's Triton kernels, run on the CPU by Triton's interpreter.

``TRITON_INTERPRET=1`` only takes effect for kernels defined after it is set, so each check
runs :func:`probe` in a fresh Python process and the test reads the errors it prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import Tensor

from .conftest import REPO_ROOT

pytest.importorskip("triton", reason="the kernels are Triton's; without it PyTorch's path runs")

NUM_CLASSES = 10


def max_error(actual: Tensor, expected: Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude expected."""
    scale = expected.double().abs().max().item() or 1.0
    return (actual.double() - expected.double()).abs().max().item() / scale


def relative_l2_error(actual: list[Tensor], expected: list[Tensor]) -> float:
    """Of all tensors together: a few gradients are tiny sums that cancel (about 1e-5, with
    3% rounding error in torchvision's float32 model itself)."""
    diff = sum(
        float((a.double() - b.double()).square().sum())
        for a, b in zip(actual, expected, strict=True)
    )
    return (diff / sum(float(b.double().square().sum()) for b in expected)) ** 0.5


def kernel_errors(dtype: torch.dtype) -> dict[str, float]:
    """The kernels against PyTorch's path on a channel prefix of a channels_last buffer whose
    sizes are not multiples of the kernels' blocks."""
    from densenet_trainer import fused_dense_kernels as kernels
    from densenet_trainer.fused_dense import normalize_relu, normalize_relu_backward

    generator = torch.Generator().manual_seed(0)
    buffer = torch.randn(3, 100, 5, 7, generator=generator).to(dtype)
    prefix = buffer.contiguous(memory_format=torch.channels_last)[:, :70]
    scale, shift = torch.randn(2, 70, generator=generator)
    grad = torch.randn(3, 70, 5, 7, generator=generator).to(dtype)
    assert kernels.applies(prefix)
    reference = normalize_relu(prefix.contiguous(), scale, shift, dtype)  # NCHW: PyTorch's
    reference_grads = normalize_relu_backward(grad, reference, prefix.contiguous(), scale, shift)
    out = kernels.normalize_relu(prefix, scale, shift, dtype)
    grads = kernels.normalize_relu_backward(grad, prefix, scale, shift)
    assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == dtype
    names = ("grad prefix", "grad scale", "grad shift")
    errors = {
        name: max_error(g, r) for name, g, r in zip(names, grads, reference_grads, strict=True)
    }
    return {"normalized": max_error(out, reference), **errors}


def model_errors() -> dict[str, Any]:
    """A small DenseNet, float32 channels_last, two training steps and an evaluation through
    the kernels, against torchvision's."""
    from torchvision.models import DenseNet

    import densenet_trainer.fused_dense as fused_dense

    calls = {"forward": 0, "backward": 0}
    forward, backward = fused_dense.normalize_relu, fused_dense.normalize_relu_backward

    def counted(name: str, function: Any) -> Any:
        def call(*args: Any) -> Any:
            calls[name] += fused_dense.fused_dense_kernels.applies(
                args[2 if name == "backward" else 0]
            )
            return function(*args)

        return call

    fused_dense.normalize_relu = counted("forward", forward)
    fused_dense.normalize_relu_backward = counted("backward", backward)
    models = []
    for cls in (DenseNet, fused_dense.FusedDenseNet):
        torch.manual_seed(0)
        models.append(
            cls(8, (2, 3), 16, num_classes=NUM_CLASSES).to(memory_format=torch.channels_last)
        )
    errors: dict[str, float] = {}
    generator = torch.Generator().manual_seed(1)
    for step, training in enumerate((True, True, False)):
        images = torch.randn(4, 3, 16, 16, generator=generator)
        results = []
        for model in models:
            model.train(training).zero_grad()
            leaf = images.contiguous(memory_format=torch.channels_last).requires_grad_(True)
            out = model(leaf)
            out.square().sum().backward()
            results.append((out.detach(), leaf.grad, [p.grad for p in model.parameters()]))
        (out, input_grad, grads), (expected_out, expected_grad, expected_grads) = results[::-1]
        errors[f"step {step} output"] = max_error(out, expected_out)
        errors[f"step {step} input grad"] = max_error(input_grad, expected_grad)
        errors[f"step {step} parameter grads"] = relative_l2_error(grads, expected_grads)
    buffers = zip(models[1].buffers(), models[0].buffers(), strict=True)
    errors["buffers"] = max(max_error(b.float(), a.float()) for b, a in buffers)
    return {"errors": errors, "kernel calls": calls}


def probe() -> None:
    print(json.dumps({
        "float32": kernel_errors(torch.float32),
        "bfloat16": kernel_errors(torch.bfloat16),
        "model": model_errors(),
    }))  # fmt: skip


@pytest.fixture(scope="module")
def probed() -> dict[str, Any]:
    path = os.pathsep.join(str(REPO_ROOT / p) for p in ("trainer", "operator", "."))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path, "CUDA_VISIBLE_DEVICES": ""}
    code = "from tests.trainer.test_fused_dense_kernels import probe; probe()"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize(("dtype", "bound"), [("float32", 1e-6), ("bfloat16", 1e-2)])
def test_kernels_match_pytorchs_path(probed: dict[str, Any], dtype: str, bound: float) -> None:
    """bf16: the stored values may round one bf16 step apart (float32 math in both)."""
    errors = probed[dtype]
    assert set(errors) == {"normalized", "grad prefix", "grad scale", "grad shift"}
    assert all(error <= bound for error in errors.values()), errors


def test_model_through_the_kernels_matches_torchvision(probed: dict[str, Any]) -> None:
    model = probed["model"]
    # every 1x1 convolution's input went through the kernels: 5 dense layers + 1 transition,
    # in 3 forwards and 3 backwards (which recompute the normalized input)
    assert model["kernel calls"] == {"forward": 6 * 6, "backward": 6 * 3}
    assert len(model["errors"]) == 10
    assert all(error <= 1e-4 for error in model["errors"].values()), model["errors"]
