"""1x1 convolutions that compute in their input's memory layout, without transposing copies.

On CPU a run keeps the weights in channels_last (faster for the 3x3 convolutions of every network measured). But
PyTorch picks a convolution's layout from its weight as well as its input, and at one thread it computes a 1x1
convolution of fewer than 16 images with its plain kernel, which works in NCHW. So a 1x1 convolution whose input
is NCHW (e.g. after a GroupNorm, as in FPN's decoder) first transposes it to channels_last for the weight, and one
whose input is channels_last transposes it to NCHW for the kernel and the result back. PyTorch's transposing copy
ran at 0.2-0.6 GB/s on this machine (128 x 128 x 128 x 4 floats: ~80 ms): in the stochastic suffix of an FPN
(dropout, 1x1 head, upsampling), replayed T times per tile, the copies were three quarters of the pass.

A 1x1 convolution with stride 1, no padding, no dilation and one group is a matrix product over the channel
axis, which needs no particular layout. While a run holds the model in channels_last,
:class:`PointwiseInInputLayout` gives such ``nn.Conv2d`` modules their own ``_conv_forward`` (an instance
attribute, removed after; ``forward`` is untouched, so hooks and the prefix cache see the modules as before).
At one thread, for fewer than 16 float32 images (PyTorch's plain-kernel case):

- NCHW input: the weight is handed over as an NCHW view of the same memory, so the kernel computes in NCHW;
- channels_last input: ``F.linear`` over the channel axis of the ``(N, H, W, C)`` view; the result is
  channels_last.

Anything else (half precision, more threads, big batches) takes PyTorch's own path. With two threads PyTorch's
oneDNN path handled the layouts faster than an NCHW weight view did (full passes of FPN and DeepLabV3+ up to
18 % slower with it), so the adapter stays out of the way there.

The choice depends only on the input's layout, shape, dtype and the thread count, never on timing, so a region
computed on its own takes the same path as in a run over the whole raster (the exact mode of distributed runs).
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PointwiseInInputLayout", "is_pointwise"]

_PLAIN_KERNEL_BATCH = 16  # PyTorch uses its plain kernel for 1x1 convolutions of fewer images at one thread


def is_pointwise(module: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` that is a matrix product over channels: 1x1 kernel, stride 1, no padding or
    dilation, one group (subclasses may compute otherwise and are left alone)."""
    return (
        type(module) is nn.Conv2d
        and module.kernel_size == (1, 1)
        and module.stride == (1, 1)
        and module.padding in ((0, 0), "valid", "same")
        and module.dilation == (1, 1)
        and module.groups == 1
    )


def _conv_in_input_layout(
    self: nn.Conv2d, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    if _plain_kernel_case(input, weight):
        matrix = weight.reshape(weight.shape[0], weight.shape[1])  # a view: the kernel is 1x1
        if input.is_contiguous():
            return F.conv2d(input, matrix.view(*matrix.shape, 1, 1), bias)
        if input.is_contiguous(memory_format=torch.channels_last):
            return F.linear(input.permute(0, 2, 3, 1), matrix, bias).permute(0, 3, 1, 2)
    return nn.Conv2d._conv_forward(self, input, weight, bias)


def _plain_kernel_case(input: torch.Tensor, weight: torch.Tensor) -> bool:
    """Where PyTorch computes a float32 1x1 convolution with its plain NCHW kernel: one thread, < 16 images."""
    return (
        input.dim() == 4
        and input.dtype == weight.dtype == torch.float32
        and input.shape[0] < _PLAIN_KERNEL_BATCH
        and torch.get_num_threads() == 1
    )


class PointwiseInInputLayout:
    """Context: the model's 1x1 convolutions (:func:`is_pointwise`) compute in their input's layout."""

    def __init__(self, module: nn.Module) -> None:
        self.modules = [m for m in module.modules() if is_pointwise(m) and "_conv_forward" not in m.__dict__]

    def __enter__(self) -> PointwiseInInputLayout:
        for module in self.modules:
            module.__dict__["_conv_forward"] = types.MethodType(_conv_in_input_layout, module)
        return self

    def __exit__(self, *exc: Any) -> None:
        for module in self.modules:
            module.__dict__.pop("_conv_forward", None)
