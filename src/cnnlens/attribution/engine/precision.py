"""Numeric precision of a pass: what ``"auto"`` means, bf16 autocast, and the float32 ends of a network
under bf16 (the one place the rule is written: :func:`keeps_float32`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from cnnlens import capabilities
from cnnlens.attribution.engine.padding import same_padding_in_conv
from cnnlens.errors import InputError, PrecisionError
from cnnlens.models.hooks import Handles

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "auto")


def bf16_is_native(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions in its own kernels: the ``bf16_native`` probe
    of :mod:`cnnlens.capabilities`, which runs the real op once (CUDA with bf16, or a CPU whose oneDNN
    has a bf16 convolution: AVX512-BW/VL/DQ, AVX-NE-CONVERT or AMX)."""
    return capabilities.available("bf16_native", device)


def check_precision(precision: str) -> str:
    """Validate a ``precision=`` argument."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def resolve_precision(precision: str, device: torch.device, bf16_faithful: bool) -> str:
    """Turn ``"auto"`` into ``"fp32"`` or ``"bf16"``.

    ``"auto"`` picks bfloat16 only where both hold: the method's maps stay faithful in bfloat16
    (``bf16_faithful``, a class attribute set from ``bench/attribution.py --precision --defaults``:
    Spearman rank correlation with the fp32 map >= 0.99 on the sample photos) and the device computes
    bfloat16 natively (:func:`bf16_is_native`). bf16 means autocast with the network's ends in float32
    (:func:`runs_float32`). Where bf16 is not native it is emulated and slower than fp32, so ``"auto"``
    means fp32 there, and an explicit ``"bf16"`` runs emulated autocast where that works (logged
    once) and raises :class:`~cnnlens.errors.PrecisionError` where it does not. The measurements
    behind each method's flag are in ``docs/decisions.md`` ("Precision").
    """
    check_precision(precision)
    if precision == "bf16":
        return _bf16_runs_here(device)
    if precision != "auto":
        return precision
    return "bf16" if bf16_faithful and bf16_is_native(device) else "fp32"


_WARNED_EMULATED: set[str] = set()


def _bf16_runs_here(device: torch.device) -> str:
    """``"bf16"`` where bfloat16 autocast runs on ``device`` (logged once when it is emulated, not
    native); else :class:`PrecisionError` with the probe's reason."""
    if bf16_is_native(device):
        return "bf16"
    found = capabilities.probe("bf16_autocast", device)
    if not found.available:
        raise PrecisionError(
            f"precision 'bf16' cannot run on this {device.type} ({found.reason}); "
            "use precision 'fp32', or 'auto', which picks fp32 here"
        )
    if str(device) not in _WARNED_EMULATED:
        _WARNED_EMULATED.add(str(device))
        logger.warning(
            "bf16 on %s runs emulated (no native bf16 convolution: %s); it is slower than fp32 here, "
            "and 'auto' picks fp32",
            device,
            capabilities.probe("bf16_native", device).reason,
        )
    return "bf16"


@contextlib.contextmanager
def precision_context(
    precision: str, device: torch.device, module: nn.Module | None = None
) -> Iterator[None]:
    """Autocast to bfloat16 for ``"bf16"``; nothing for ``"fp32"``. Use with :func:`to_memory_format`.

    With ``module`` (the network the block runs), its two ends stay in float32 under bf16 (see
    :func:`fp32_ends`): the stem and the short-reduction convolutions near the input
    (:func:`keeps_float32`), and the head.
    """
    if precision != "bf16":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        if module is None:
            yield
        else:
            with fp32_ends(module, device):
                yield


#: Under bf16, the stem and the convolutions with short reductions stay in float32 when their input
#: is at least this fraction of the network input's height and width (see :func:`keeps_float32`).
FP32_MIN_SCALE = 0.25
#: ... a short reduction: at most this many products per output (input channels per group x kernel
#: area): every depthwise convolution, and pointwise ones on up to 32 channels.
FP32_MAX_REDUCTION = 32


def keeps_float32(conv: nn.Conv2d, shape: tuple[int, ...] | None, image: tuple[int, ...]) -> bool:
    """Whether ``conv``, reading an input of ``shape`` in a network whose input is ``image``
    (``(N, C, H, W)`` both), runs in float32 under bf16.

    It does when its input is at least :data:`FP32_MIN_SCALE` of the image's height and width and it
    is the stem (as many input channels as the image) or its reduction is short (at most
    :data:`FP32_MAX_REDUCTION` products per output, such as a depthwise convolution). Why: bf16
    rounding of a few products per output does not average out, rounding errors made where the image
    enters are carried through the whole network, and these layers are memory-bound, so float32 costs
    them little (``docs/decisions.md``, "bf16 keeps the network's ends in float32").
    """
    if shape is None or len(shape) != 4 or len(image) != 4:
        return False
    if shape[-2] < FP32_MIN_SCALE * image[-2] or shape[-1] < FP32_MIN_SCALE * image[-1]:
        return False
    reduction = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
    return conv.in_channels == image[1] or reduction <= FP32_MAX_REDUCTION


def runs_float32(layer: nn.Module, shape: tuple[int, ...] | None, image: tuple[int, ...] | None) -> bool:
    """The bf16 rule, written once: whether ``layer``, called on an input of ``shape`` in a network
    whose input has shape ``image``, computes in float32 under bf16.

    Float32 are every ``nn.Linear`` on a 2-d input (a head on pooled features: its rounding would land
    on the score itself; a transformer's token-wise linears stay bf16) and the convolutions
    :func:`keeps_float32` names. :func:`fp32_ends` applies it with hooks to the eager model, the fused
    network (:mod:`cnnlens.attribution.engine.fused`) to its fused convolutions and its head.
    """
    if isinstance(layer, nn.Linear):
        return shape is not None and len(shape) == 2
    if isinstance(layer, nn.Conv2d) and image is not None:
        return keeps_float32(layer, shape, image)
    return False


@contextlib.contextmanager
def fp32_ends(module: nn.Module, device: torch.device) -> Iterator[None]:
    """Inside an autocast block, run the two ends of ``module`` in float32 (hooks only inside the block).

    Float32 are the layers :func:`runs_float32` names: the head on pooled features (logits come out
    in float32, not rounded to bf16's 8 bits), the stem and the convolutions with short reductions
    near the input. The input size is read from the call of ``module`` itself; in a pass that does not start
    at ``module``, such as the tail of a :class:`LayerSplit`, only the head is float32. The layers
    after such a convolution (norm, activation) run in float32 too, up to the next convolution, which
    autocast casts back to bf16. The fused inference network (:mod:`cnnlens.attribution.engine.fused`)
    applies the same rule to its fused convolutions.

    Why: rounding errors made where the image enters are carried through the whole network, and the
    head's rounding lands on the score itself; the ordinary convolutions, most of the network's work,
    stay bf16. The measurements are in ``docs/decisions.md`` ("bf16 keeps the network's ends in
    float32").
    """
    size: list[tuple[int, int, int]] = []  # the network input's channels, height, width
    stack: list[contextlib.AbstractContextManager[None] | None] = []
    handles = Handles()

    def top(_m: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:
            size[:] = [(int(args[0].shape[1]), int(args[0].shape[-2]), int(args[0].shape[-1]))]

    def full_precision(m: nn.Module, x: torch.Tensor) -> bool:
        return runs_float32(m, tuple(x.shape), (1, *size[0]) if size else None)

    def enter(m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not args or not isinstance(args[0], torch.Tensor) or not full_precision(m, args[0]):
            stack.append(None)
            return None
        ctx = torch.autocast(device_type=device.type, enabled=False)
        ctx.__enter__()
        stack.append(ctx)
        return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    def leave(_m: nn.Module, _args: Any, _out: Any) -> None:
        ctx = stack.pop() if stack else None
        if ctx is not None:
            ctx.__exit__(None, None, None)

    try:
        handles.add(module.register_forward_pre_hook(top))
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                handles.add(m.register_forward_pre_hook(enter))
                handles.add(m.register_forward_hook(leave))
        yield
    finally:
        handles.remove()
        while stack:  # a forward that raised inside a float32 layer
            ctx = stack.pop()
            if ctx is not None:
                ctx.__exit__(None, None, None)


@contextlib.contextmanager
def evaluation_context(
    precision: str, device: torch.device, module: nn.Module, *, padding_free: bool = True
) -> Iterator[None]:
    """What every pass of a method through ``module`` runs under (the bench's floor too).

    :func:`precision_context` (bf16 autocast with the network's ends in float32, or nothing) and,
    with ``padding_free``, :func:`same_padding_in_conv` (TensorFlow-"same" convolutions without a
    padded copy of their input; the eager backend runs the model exactly as it is, without it).
    Pair it with :func:`to_memory_format` for the input.
    """
    padding = same_padding_in_conv(module) if padding_free else contextlib.nullcontext()
    with padding, precision_context(precision, device, module):
        yield
