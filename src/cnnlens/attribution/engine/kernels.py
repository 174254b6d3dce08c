"""Elementwise rule kernels as one compiled pass each (``torch.compile``), with the eager fallback.

DeepLIFT's rescale rule on a clamp (ReLU, ReLU6, Hardtanh) multiplies the gradient by
``m = (y - y') / (x - x')`` (the local gradient where ``x == x'``). In eager PyTorch ``m`` costs two
differences, a division and a check for ``0 / 0``: four passes over an activation that the plain
forward reads and writes once. On a network heavy in activations and light in convolution
(DenseNet-121: 120 ReLU sites, 2.9 GFLOPs) those passes are about a quarter of DeepLIFT's time.
:func:`clamp_rescale_grad` is the rule's backward written once: compiled by inductor it is one
vectorised loop that reads the gradient and ``x`` (and the reference, one image) and writes the
result, the memory traffic of the ReLU's own backward; the forward keeps ``x`` instead of ``m``.

Compiling costs seconds once per process (about 4 s with inductor's on-disk cache warm, 11 s cold,
on an AMD EPYC; another second or two for each new layout of the inputs) and needs a C++ compiler, so
it is a capability (``compiled_kernels`` in :mod:`cnnlens.capabilities`, probed by compiling and
running a tiny elementwise function; switched off with ``CNNLENS_DISABLE=compiled_kernels``), and where
the kernel itself fails to compile the eager passes run, with one logged warning.
A method uses the kernels only where they pay for the compilation (DeepLIFT's ``compiled`` setting).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import partial

import torch

from cnnlens import capabilities

logger = logging.getLogger(__name__)

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

#: Below this many elements an activation takes the eager passes: a compiled call costs about 30 us
#: of Python (dynamo's guards) before its loop starts, more than the eager passes of a small tensor.
MIN_ELEMENTS = 2**14

_COMPILED: dict[str, Callable[..., torch.Tensor]] = {}
_FAILED: list[str] = []


def clamp_rescale_grad(
    grad: torch.Tensor, x: torch.Tensor, x0: torch.Tensor, lo: float, hi: float
) -> torch.Tensor:
    """``grad * m`` for DeepLIFT's multiplier ``m = (y - y0) / (x - x0)`` of ``y = clamp(x, lo, hi)``
    and ``y0 = clamp(x0, lo, hi)``, which is the local gradient (1 strictly inside ``(lo, hi)``, else
    0, as PyTorch's own backward) where ``x == x0``.

    ``x0`` (the reference's input) broadcasts against ``x``; the reference's output is computed again
    from it (the same clamp, so the same bits), which saves the kernel a stream to read. For a clamp,
    ``y - y0`` is ``x - x0`` or 0 to the bit when ``x`` and ``x0`` are on the same piece, so the
    multiplier is exact without a threshold; only ``0 / 0`` needs the local gradient. Compiled, this
    is one loop that reads ``grad``, ``x`` and ``x0`` and writes the result, about the memory traffic
    of the clamp's own backward (which reads ``grad`` and ``y``).
    """
    finite = math.isfinite(hi)
    y = torch.clamp(x, lo, hi) if finite else torch.clamp_min(x, lo)
    y0 = torch.clamp(x0, lo, hi) if finite else torch.clamp_min(x0, lo)
    dx = x - x0
    local = ((x > lo) & (x < hi)).to(x.dtype)
    return grad * torch.where(dx == 0, local, (y - y0) / dx)


def _compiled_clamp_rescale_grad(lo: float, hi: float) -> Callable[..., torch.Tensor]:
    """The compiled kernel of the clamp to ``[lo, hi]`` (the bounds are constants in it: as arguments
    dynamo would make ``lo`` a tensor on every call)."""
    key = f"clamp_rescale_grad({lo!r}, {hi!r})"
    if key not in _COMPILED:
        capabilities.start_autograd_before_compiling()  # fork-started children keep their autograd

        def kernel(grad: torch.Tensor, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
            return clamp_rescale_grad(grad, x, x0, lo, hi)

        # dynamic shapes: one compilation serves every activation size of every network; not fullgraph,
        # so that past dynamo's recompilation limit a call runs eager instead of failing
        _COMPILED[key] = torch.compile(kernel, dynamic=True)
    return _COMPILED[key]


def _flat_views(grad: torch.Tensor, x: torch.Tensor, x0: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """The operands as one dimension (same shapes) or two (``(B, N)`` against a shared ``(1, N)``
    reference), where they are contiguous: inductor's kernel parallelises its outer loop only, which
    for a ``(1, C, H, W)`` activation would be one thread."""
    if not (grad.is_contiguous() and x.is_contiguous() and x0.is_contiguous()) or grad.shape != x.shape:
        return None
    if x0.shape == x.shape:
        return grad.view(-1), x.view(-1), x0.view(-1)
    if x.ndim > 1 and x0.shape[0] == 1 and x0.shape[1:] == x.shape[1:]:
        return grad.view(len(x), -1), x.view(len(x), -1), x0.view(1, -1)
    return None


def compiled_clamp_rescale_grad(
    grad: torch.Tensor, x: torch.Tensor, x0: torch.Tensor, lo: float, hi: float
) -> torch.Tensor:
    """:func:`clamp_rescale_grad` as one compiled kernel, or eager where compiling failed (logged
    once, eager from then on in this process)."""
    if not _FAILED:
        try:
            kernel = _compiled_clamp_rescale_grad(lo, hi)
            flat = _flat_views(grad, x, x0)
            if flat is None:
                return kernel(grad, x, x0)
            return kernel(*flat).view(x.shape)
        except Exception as error:  # a missing compiler, an inductor bug: the eager passes still work
            text = str(error).strip().splitlines()
            _FAILED.append(f"{type(error).__name__}: {text[0] if text else ''}"[:300])
            logger.warning("compiled kernels failed, running eager from now on (%s)", _FAILED[0])
    return clamp_rescale_grad(grad, x, x0, lo, hi)


def clamp_bounds(kind: type, op: object) -> tuple[float, float] | None:
    """The ``(lo, hi)`` of a clamp activation called as ``op`` (a module, or a function with fixed
    bounds), or ``None`` where they are not known before the call."""
    from torch import nn

    if isinstance(op, nn.Hardtanh):  # nn.ReLU6 is a Hardtanh(0, 6)
        return float(op.min_val), float(op.max_val)
    if kind is nn.ReLU:
        return 0.0, math.inf
    if kind is nn.ReLU6:
        return 0.0, 6.0
    return None


def clamp_kernel(lo: float, hi: float, compiled: bool = True) -> Kernel:
    """The ``(grad, x, x0) -> grad * m`` kernel of a clamp with bounds ``lo, hi``."""
    fn = compiled_clamp_rescale_grad if compiled else clamp_rescale_grad
    return partial(fn, lo=lo, hi=hi)
