"""Triton kernels of the fused DenseNet (placeholder while the PyTorch path is verified)."""

from __future__ import annotations

from typing import Any


def applies(prefix: Any) -> bool:
    return False
