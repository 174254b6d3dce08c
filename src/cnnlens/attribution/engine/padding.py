"""TensorFlow-"same" convolutions (timm's ``Conv2dSame``) computed without a padded copy of the input."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's "same" padding of one dimension: ``(before, after)``, ``after - before`` is 0 or 1."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def timm_conv2d_same() -> type[nn.Conv2d] | None:
    try:
        from timm.layers.conv2d_same import Conv2dSame
    except ImportError:
        return None
    return Conv2dSame


def padding_free_forward(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor | None:
    """``conv`` with TensorFlow's "same" padding, computed without padding ``x``; ``None`` if it cannot.

    timm's ``Conv2dSame`` (EfficientNet-Lite and the other TensorFlow ports) pads its input with
    ``F.pad`` on every call (a copy of the whole feature map; for a stride-2 convolution the extra
    row and column go after the image, one more than before it), then convolves without padding.
    The same numbers come from the convolution's own zero padding: where the padding is symmetric it
    is that padding; where it is one larger after, the kernel gets a leading row (column) of zeros and
    the convolution pads the larger amount on both sides, so every output reads the same inputs with
    the same weights, and the extra leading input is multiplied by the zero. Only for depthwise and
    grouped convolutions with an uneven padding (a dense convolution would pay the extra kernel row
    in arithmetic, more than the copy it saves) and for dilation 1 there. Measurements:
    ``docs/decisions.md``, "Measurements behind the engine's docstrings".
    """
    found = same_padding_kernel(conv.weight, x.shape, conv.stride, conv.dilation, conv.groups)
    if found is None:
        return None
    weight, padding = found
    return F.conv2d(x, weight, conv.bias, conv.stride, padding, conv.dilation, conv.groups)


def same_padding_kernel(
    weight: torch.Tensor,
    shape: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
) -> tuple[torch.Tensor, tuple[int, int]] | None:
    """The kernel and symmetric padding that give TensorFlow's "same" padding on an input of
    ``shape`` without padding the input (see :func:`padding_free_forward`); ``None`` where that
    would need the input padded (a dense convolution, or dilation, with uneven padding)."""
    kh, kw = weight.shape[-2:]
    ph = _same_padding(int(shape[-2]), int(kh), stride[0], dilation[0])
    pw = _same_padding(int(shape[-1]), int(kw), stride[1], dilation[1])
    lead_h, lead_w = ph[1] - ph[0], pw[1] - pw[0]
    if not (lead_h or lead_w):
        return weight, (ph[0], pw[0])
    if groups == 1 or (lead_h and dilation[0] != 1) or (lead_w and dilation[1] != 1):
        return None
    return F.pad(weight, (lead_w, 0, lead_h, 0)), (ph[1], pw[1])


@contextlib.contextmanager
def same_padding_in_conv(module: nn.Module) -> Iterator[None]:
    """For the block, timm's ``Conv2dSame`` layers in ``module`` run :func:`padding_free_forward`.

    The layers' ``forward`` is replaced on the instances for the block and restored on exit, whatever
    happened inside; a layer whose ``forward`` is already replaced (a nested block, another tool's
    patch), a subclass with its own ``forward`` or padding mode other than zeros is left alone, as is
    every call the padding-free form does not cover (it falls back to timm's own forward).
    """
    same = timm_conv2d_same()
    patched: list[nn.Module] = []
    try:
        if same is not None:
            for m in module.modules():
                if (
                    isinstance(m, same)
                    and type(m).forward is same.forward
                    and "forward" not in vars(m)
                    and getattr(m, "padding_mode", "zeros") == "zeros"
                ):
                    m.forward = _PaddingFree(m)  # type: ignore[method-assign,assignment]
                    patched.append(m)
        yield
    finally:
        for m in patched:
            vars(m).pop("forward", None)


class _PaddingFree:
    """The ``forward`` :func:`same_padding_in_conv` gives a ``Conv2dSame`` for the block."""

    def __init__(self, conv: nn.Conv2d) -> None:
        self.conv = conv

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = padding_free_forward(self.conv, x)
        if out is None:
            return type(self.conv).forward(self.conv, x)
        return out
