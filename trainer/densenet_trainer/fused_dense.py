"""A DenseNet whose dense layers read their input once (``--fused-dense``, issue 16).

In a dense block every layer's ``norm1`` normalizes the concatenation of all earlier feature
maps. In training mode a channel's batch mean and variance are the same for every later layer
that reads it, so :class:`BlockFeatures` computes them once, when the feature map is produced
(O(L) reductions per block instead of O(L^2)); each reading layer then only applies its own
BatchNorm affine (its gamma and beta over the shared statistics) and the ReLU.

Each block keeps its raw feature maps in one preallocated buffer, each map written into it once,
so a layer reads its input as a channel prefix of that buffer instead of a ``torch.cat`` copy.
:class:`NormReLUConv1x1` applies scale/shift + ReLU and the 1x1 convolution of ``norm1 -> relu1
-> conv1`` (and of each transition). The elementwise passes run as Triton kernels on CUDA with
channels_last features (``fused_dense_kernels``), which backward re-runs instead of keeping the
normalized input (as torchvision's ``memory_efficient`` mode does by checkpointing); elsewhere
they are PyTorch ops.

Exact: the same weights give the same outputs, gradients and running statistics as
torchvision's model (tests/trainer/test_fused_dense.py). :class:`FusedDenseNet` subclasses
torchvision's ``DenseNet`` and is built by its own ``__init__``, so parameter and buffer names,
shapes and the seeded initialization are torchvision's: state dicts load both ways.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import DenseNet
from torchvision.models.densenet import _DenseBlock, _DenseLayer, _Transition

from densenet_trainer import fused_dense_kernels

# torchvision's builders: (growth_rate, block_config, num_init_features) of each model.
ARCH_CONFIGS: dict[str, tuple[int, tuple[int, int, int, int], int]] = {
    "densenet121": (32, (6, 12, 24, 16), 64),
    "densenet161": (48, (6, 12, 36, 24), 96),
    "densenet169": (32, (6, 12, 32, 32), 64),
    "densenet201": (32, (6, 12, 48, 32), 64),
}
STATS_DTYPES = (torch.float32, torch.float64)


def fused_densenet(arch: str, num_classes: int = 1000) -> FusedDenseNet:
    """``arch`` as torchvision builds it (same modules, same seeded initialization), with the
    fused forward."""
    growth_rate, block_config, num_init_features = ARCH_CONFIGS[arch]
    return FusedDenseNet(growth_rate, block_config, num_init_features, num_classes=num_classes)


# ---------------------------------------------------------------- BatchNorm, split in two


def batch_stats(chunk: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel batch mean and biased variance of an NCHW map, in float32 at least (what
    BatchNorm computes for bf16/fp16 inputs); differentiable, so gradients flow through the
    statistics exactly as through BatchNorm's."""
    data = chunk if chunk.dtype in STATS_DTYPES else chunk.float()
    var, mean = torch.var_mean(data, dim=(0, 2, 3), correction=0)
    return mean, var


def update_running_stats(norm: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int) -> None:
    """What ``norm`` does to its buffers in a training forward over these batch statistics."""
    assert norm.running_mean is not None and norm.running_var is not None
    assert norm.num_batches_tracked is not None
    with torch.no_grad():
        norm.num_batches_tracked.add_(1)
        cumulative = 1.0 / float(norm.num_batches_tracked)  # BatchNorm's, for momentum None
        factor = cumulative if norm.momentum is None else norm.momentum
        unbiased = var.detach() * (count / (count - 1))
        norm.running_mean.lerp_(mean.detach().to(norm.running_mean.dtype), factor)
        norm.running_var.lerp_(unbiased.to(norm.running_var.dtype), factor)


def scale_shift(
    norm: nn.BatchNorm2d, mean: Tensor | None, var: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``norm`` as ``x * scale + shift``: over the given batch statistics, or (None) over its
    running statistics (evaluation)."""
    if mean is None or var is None:
        assert norm.running_mean is not None and norm.running_var is not None
        mean, var = norm.running_mean, norm.running_var
    scale = norm.weight * torch.rsqrt(var + norm.eps)
    return scale, norm.bias - mean * scale


def check_supported(norm: nn.BatchNorm2d) -> None:
    if not (norm.affine and norm.track_running_stats):
        raise ValueError("the fused DenseNet needs BatchNorm with affine and running stats")


# ---------------------------------------------------------------- a block's feature maps


class BlockFeatures:
    """A dense block's feature maps: each written once into one buffer (NCHW shape, the first
    map's memory format), with its batch statistics computed once, on first use."""

    def __init__(self, first: Tensor, total_channels: int) -> None:
        n, _, h, w = first.shape
        self.channels_last = _is_channels_last(first)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        self.buffer = torch.empty(
            (n, total_channels, h, w), dtype=first.dtype, device=first.device, memory_format=layout
        )
        self.chunks: list[Tensor] = []
        self.means: list[Tensor] = []
        self.vars: list[Tensor] = []
        self.count = n * h * w  # values per channel in a batch statistic
        self.append(first)

    @property
    def width(self) -> int:
        return sum(chunk.shape[1] for chunk in self.chunks)

    def append(self, chunk: Tensor) -> None:
        start = self.width
        with torch.no_grad():
            self.buffer[:, start : start + chunk.shape[1]].copy_(chunk)
        self.chunks.append(chunk)

    def prefix(self) -> Tensor:
        """All maps so far, concatenated (a view of the buffer: nothing is copied)."""
        return self.buffer[:, : self.width]

    def stats(self) -> tuple[Tensor, Tensor]:
        """Batch mean and variance of every channel so far (only new maps are reduced)."""
        if self.count <= 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got {self.count}"
            )
        for chunk in self.chunks[len(self.means) :]:
            mean, var = batch_stats(chunk)
            self.means.append(mean)
            self.vars.append(var)
        return torch.cat(self.means), torch.cat(self.vars)

    def scale_shift(self, norm: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
        """``norm`` over these maps as scale/shift; in training it reads the shared batch
        statistics and updates ``norm``'s running statistics as BatchNorm would."""
        check_supported(norm)
        if not norm.training:
            return scale_shift(norm, None, None)
        mean, var = self.stats()
        update_running_stats(norm, mean, var, self.count)
        return scale_shift(norm, mean, var)


def _is_channels_last(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


# ---------------------------------------------------------------- scale/shift + ReLU + 1x1 conv


class NormReLUConv1x1(torch.autograd.Function):
    """``conv1x1(relu(prefix * scale + shift))`` over a block's buffer prefix, differentiable
    in the maps that make up the prefix (``chunks``), ``scale``, ``shift`` and ``weight``.

    Backward reads the prefix from the buffer, which later layers only extend (they never
    write the prefix a layer read), and with the Triton kernels recomputes the normalized
    input from it instead of keeping it.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, features: BlockFeatures, scale: Tensor, shift: Tensor, weight: Tensor,
        *chunks: Tensor,
    ) -> Tensor:  # fmt: skip
        prefix = features.prefix()
        normalized = normalize_relu(prefix, scale, shift, weight.dtype)
        ctx.prefix = prefix
        # The kernels recompute it in one pass; PyTorch's path keeps it (as torchvision keeps
        # its ReLU output), a recompute costing it two more passes.
        ctx.normalized = None if fused_dense_kernels.applies(prefix) else normalized
        ctx.chunk_widths = [chunk.shape[1] for chunk in chunks]
        ctx.save_for_backward(scale, shift, weight)
        return F.conv2d(normalized, weight)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        scale, shift, weight = ctx.saved_tensors
        prefix, normalized = ctx.prefix, ctx.normalized
        if normalized is None:
            normalized = normalize_relu(prefix, scale, shift, weight.dtype)
        grad_out = grad_out.contiguous(memory_format=_memory_format(normalized))
        grad_normalized, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad_out, normalized, weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
            [True, ctx.needs_input_grad[3], False],
        )  # fmt: skip
        grad_prefix, grad_scale, grad_shift = normalize_relu_backward(
            grad_normalized, normalized, prefix, scale, shift
        )
        grad_chunks = grad_prefix.split(ctx.chunk_widths, dim=1)
        return (None, grad_scale, grad_shift, grad_weight, *grad_chunks)


def _memory_format(x: Tensor) -> torch.memory_format:
    """channels_last when channels are x's innermost dimension, for views (a buffer's
    prefix) too, which are contiguous in neither format."""
    return torch.channels_last if x.stride(1) < x.stride(3) else torch.contiguous_format


def normalize_relu(prefix: Tensor, scale: Tensor, shift: Tensor, dtype: torch.dtype) -> Tensor:
    """``relu(prefix * scale + shift)`` per channel, computed in float32 at least, stored as
    ``dtype`` (the convolution's), in the prefix's memory format."""
    if fused_dense_kernels.applies(prefix):
        return fused_dense_kernels.normalize_relu(prefix, scale, shift, dtype)
    pre = torch.addcmul(_per_channel(shift), prefix, _per_channel(scale))
    return pre.relu_().to(dtype).contiguous(memory_format=_memory_format(prefix))


def normalize_relu_backward(
    grad_normalized: Tensor, normalized: Tensor, prefix: Tensor, scale: Tensor, shift: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`normalize_relu` (whose output was ``normalized``) in its prefix,
    scale and shift."""
    if fused_dense_kernels.applies(prefix):
        return fused_dense_kernels.normalize_relu_backward(grad_normalized, prefix, scale, shift)
    # ReLU's own backward (a new tensor): the gradient where the normalized input is > 0
    grad_pre = torch.ops.aten.threshold_backward(grad_normalized, normalized, 0)
    grad_pre = grad_pre.to(torch.promote_types(scale.dtype, prefix.dtype))
    grad_shift = grad_pre.sum(dim=(0, 2, 3))
    grad_scale = (grad_pre * prefix).sum(dim=(0, 2, 3))
    grad_prefix = grad_pre.mul_(_per_channel(scale)).to(prefix.dtype)
    return grad_prefix, grad_scale, grad_shift


def _per_channel(vector: Tensor) -> Tensor:
    return vector.view(1, -1, 1, 1)


# ---------------------------------------------------------------- the model


class FusedDenseNet(DenseNet):
    """torchvision's DenseNet (its modules, names and initialization), with a forward that
    shares each feature map's batch statistics among its readers and never concatenates."""

    def forward(self, x: Tensor) -> Tensor:
        features: BlockFeatures | None = None
        for module in self.features.children():
            if isinstance(module, _DenseBlock):
                features = self._dense_block(module, x)
            elif isinstance(module, _Transition):
                assert features is not None
                x = module.pool(self._norm_relu_conv(module.norm, module.conv, features))
                features = None
            elif features is not None:  # norm5, after the last block; DenseNet's ReLU too
                x = self._norm_relu(module, features)
            else:
                x = module(x)
        out = F.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(out, 1))

    def _dense_block(self, block: _DenseBlock, x: Tensor) -> BlockFeatures:
        layers: Sequence[_DenseLayer] = list(block.values())  # type: ignore[arg-type]
        total = x.shape[1] + sum(layer.conv2.out_channels for layer in layers)
        features = BlockFeatures(x, total)
        for layer in layers:
            bottleneck = self._norm_relu_conv(layer.norm1, layer.conv1, features)
            new = layer.conv2(layer.relu2(layer.norm2(bottleneck)))
            if layer.drop_rate > 0:
                new = F.dropout(new, p=layer.drop_rate, training=layer.training)
            features.append(new)
        return features

    @staticmethod
    def _norm_relu_conv(norm: nn.BatchNorm2d, conv: nn.Conv2d, features: BlockFeatures) -> Tensor:
        scale, shift = features.scale_shift(norm)
        weight = conv.weight
        device_type = weight.device.type
        if torch.is_autocast_enabled(device_type):  # what autocast would run conv1 in
            weight = weight.to(torch.get_autocast_dtype(device_type))
        with torch.autocast(device_type, enabled=False):
            return NormReLUConv1x1.apply(features, scale, shift, weight, *features.chunks)  # type: ignore[no-any-return]

    @staticmethod
    def _norm_relu(norm: nn.BatchNorm2d, features: BlockFeatures) -> Tensor:
        scale, shift = features.scale_shift(norm)
        x = torch.cat(features.chunks, dim=1)  # once per model, for the classifier's input
        out = torch.addcmul(_per_channel(shift), x, _per_channel(scale)).relu_()
        return out.to(x.dtype)
