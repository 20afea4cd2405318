"""Triton kernels of the fused DenseNet's ``relu(x * scale + shift)`` and its backward.

They read a dense layer's input straight from its block's channels_last buffer: a channel
prefix of it is a matrix of N*H*W rows and C columns whose rows lie ``buffer channels`` apart.
Forward reads the prefix once and writes the normalized input once, in the convolution's dtype
(PyTorch's path makes three passes: scale and shift, ReLU, cast). Backward recomputes the
activation mask from the prefix and writes the prefix's gradient while summing the scale's and
shift's gradients per channel (deterministically: partial sums per row block, then one sum).

Used on CUDA, and on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``), which
is how the tests check them here. Elsewhere (NCHW, no Triton) fused_dense.py runs PyTorch ops.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # the trainer runs without Triton: PyTorch's path
    triton = None

BLOCK_M = 64  # rows (pixels) per program
BLOCK_K = 64  # channels per program
DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # float64 stays with PyTorch


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def applies(prefix: Tensor) -> bool:
    """Whether the kernels can take this prefix: channels_last, on a device Triton runs on."""
    if triton is None or not (prefix.is_cuda or interpreting()) or prefix.dtype not in DTYPES:
        return False
    _, _, h, w = prefix.shape
    row = prefix.stride(3)  # one pixel's channels, then the next pixel's
    return prefix.stride(1) == 1 and prefix.stride(2) == w * row and prefix.stride(0) == h * w * row


def _row_stride(prefix: Tensor) -> int:
    return prefix.stride(3)


def _channels_last_like(prefix: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.empty(
        prefix.shape, dtype=dtype, device=prefix.device, memory_format=torch.channels_last
    )


if triton is not None:

    @triton.jit
    def _normalized_tile(
        x_ptr, scale_ptr, shift_ptr, rows, cols, x_row_stride,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """This program's tile of the prefix (float32), its scale and ``x * scale + shift``;
        the mask and offsets of the tile in a contiguous rows x cols output."""
        row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        col = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        inside = (row[:, None] < rows) & (col[None, :] < cols)
        x = tl.load(x_ptr + row[:, None] * x_row_stride + col[None, :], mask=inside, other=0.0)
        x = x.to(tl.float32)
        scale = tl.load(scale_ptr + col, mask=col < cols, other=0.0)
        shift = tl.load(shift_ptr + col, mask=col < cols, other=0.0)
        pre = x * scale[None, :] + shift[None, :]
        return x, scale, pre, inside, row[:, None] * cols + col[None, :], col

    @triton.jit
    def _normalize_relu_kernel(
        x_ptr, scale_ptr, shift_ptr, out_ptr, rows, cols, x_row_stride,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        _, _, pre, inside, offsets, _ = _normalized_tile(
            x_ptr, scale_ptr, shift_ptr, rows, cols, x_row_stride, BLOCK_M, BLOCK_K
        )
        out = tl.maximum(pre, 0.0)
        tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=inside)

    @triton.jit
    def _normalize_relu_backward_kernel(
        grad_ptr, x_ptr, scale_ptr, shift_ptr, grad_x_ptr, grad_scale_ptr, grad_shift_ptr,
        rows, cols, x_row_stride,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        x, scale, pre, inside, offsets, col = _normalized_tile(
            x_ptr, scale_ptr, shift_ptr, rows, cols, x_row_stride, BLOCK_M, BLOCK_K
        )
        grad = tl.load(grad_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        grad_pre = tl.where(pre > 0, grad, 0.0)
        grad_x = grad_pre * scale[None, :]
        tl.store(grad_x_ptr + offsets, grad_x.to(grad_x_ptr.dtype.element_ty), mask=inside)
        partial = tl.program_id(0) * cols + col  # this row block's sums
        tl.store(grad_shift_ptr + partial, tl.sum(grad_pre, axis=0), mask=col < cols)
        tl.store(grad_scale_ptr + partial, tl.sum(grad_pre * x, axis=0), mask=col < cols)


def _grid(rows: int, cols: int) -> tuple[int, int]:
    return (triton.cdiv(rows, BLOCK_M), triton.cdiv(cols, BLOCK_K))


def normalize_relu(prefix: Tensor, scale: Tensor, shift: Tensor, dtype: torch.dtype) -> Tensor:
    """``relu(prefix * scale + shift)`` in float32, stored as ``dtype``, channels_last."""
    n, cols, h, w = prefix.shape
    out = _channels_last_like(prefix, dtype)
    rows = n * h * w
    _normalize_relu_kernel[_grid(rows, cols)](
        prefix, scale.float().contiguous(), shift.float().contiguous(), out,
        rows, cols, _row_stride(prefix), BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K,
    )  # fmt: skip
    return out


def normalize_relu_backward(
    grad_normalized: Tensor, prefix: Tensor, scale: Tensor, shift: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`normalize_relu` in ``prefix`` (its dtype), ``scale`` and ``shift``."""
    n, cols, h, w = prefix.shape
    rows = n * h * w
    grad_normalized = grad_normalized.contiguous(memory_format=torch.channels_last)
    grad_prefix = _channels_last_like(prefix, prefix.dtype)
    grid = _grid(rows, cols)
    partial_scale = torch.empty((grid[0], cols), dtype=torch.float32, device=prefix.device)
    partial_shift = torch.empty_like(partial_scale)
    _normalize_relu_backward_kernel[grid](
        grad_normalized, prefix, scale.float().contiguous(), shift.float().contiguous(),
        grad_prefix, partial_scale, partial_shift, rows, cols, _row_stride(prefix),
        BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K,
    )  # fmt: skip
    grad_scale = partial_scale.sum(dim=0).to(scale.dtype)
    return grad_prefix, grad_scale, partial_shift.sum(dim=0).to(shift.dtype)
