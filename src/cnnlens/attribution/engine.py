"""The evaluation engine shared by perturbation methods.

Three things live here:

* :class:`LayerSplit` runs a network in two parts around one layer: the part up to the layer once per
  image (:meth:`LayerSplit.head`), then only the part after it for every batch of modified
  activations (:meth:`LayerSplit.tail`). The graph is split with ``torch.fx``; where a model cannot be
  traced, or the traced split does not reproduce the model, it falls back (and logs it) to re-running
  the whole network with a forward hook that swaps the layer's output.
* :func:`evaluation_context` (:func:`precision_context`, :func:`same_padding_in_conv`),
  :func:`resolve_precision` and :func:`to_memory_format`: what every pass of a method through the
  network runs under: bfloat16 autocast, exact padding-free "same" convolutions, and ``channels_last``
  inputs (``memory_format``).
* :func:`auto_batch_size`: a batch size chosen from free memory.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.nn import functional as F

from cnnlens import capabilities
from cnnlens.attribution.hooks import Handles
from cnnlens.errors import PrecisionError

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "auto")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


class SplitError(RuntimeError):
    """The network cannot be split at the requested layer with ``torch.fx``."""


# -- precision -----------------------------------------------------------------------------------------


def bf16_is_native(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions in its own kernels: the ``bf16_native`` probe
    of :mod:`cnnlens.capabilities`, which runs the real op once (CUDA with bf16, or a CPU whose oneDNN
    has a bf16 convolution: AVX512-BW/VL/DQ, AVX-NE-CONVERT or AMX)."""
    return capabilities.available("bf16_native", device)


def check_precision(precision: str) -> str:
    """Validate a ``precision=`` argument."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def resolve_precision(precision: str, device: torch.device, bf16_faithful: bool) -> str:
    """Turn ``"auto"`` into ``"fp32"`` or ``"bf16"``.

    ``"auto"`` picks bfloat16 only where both hold: the method's maps stay faithful in bfloat16
    (``bf16_faithful``: Spearman rank correlation with the fp32 map >= 0.99, the minimum over the five
    sample photos with EfficientNet-Lite0, at the method's default settings, measured by
    ``bench/attribution.py --precision --defaults``) and the device computes bfloat16 natively
    (:func:`bf16_is_native`). bf16 here means autocast with the network's ends in float32
    (:func:`fp32_ends`, and the fused inference network of :mod:`cnnlens.attribution.fused` with the
    same rule). Measured: occlusion 0.9976, RISE 0.9998, Score-CAM 1.0000, Ablation-CAM 1.0000, LIME
    0.9941, KernelSHAP 0.9984 (faithful; with the whole network in bf16 occlusion, LIME and KernelSHAP
    were at 0.9897, 0.9890 and 0.9811); double occlusion 0.9956, but 0.639 in an earlier measurement
    (kept fp32: its fixed window is chosen by a sweep, and a flip of that choice changes the whole map).
    On a device without native bf16 convolutions (:func:`bf16_is_native`) bfloat16 is emulated
    (1.25-50x slower than fp32 on an AVX2 machine), so ``"auto"`` means fp32 there, and an explicit
    ``"bf16"`` runs emulated autocast where that works (logged once) and raises
    :class:`PrecisionError` where it does not. Gradient methods stay fp32 under ``"auto"``
    (``docs/decisions.md``).
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
    them little. Measured on EfficientNet-Lite0 (``docs/decisions.md``): 6 of 49 convolutions.
    """
    if shape is None or len(shape) != 4 or len(image) != 4:
        return False
    if shape[-2] < FP32_MIN_SCALE * image[-2] or shape[-1] < FP32_MIN_SCALE * image[-1]:
        return False
    reduction = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
    return conv.in_channels == image[1] or reduction <= FP32_MAX_REDUCTION


@contextlib.contextmanager
def fp32_ends(module: nn.Module, device: torch.device) -> Iterator[None]:
    """Inside an autocast block, run the two ends of ``module`` in float32 (hooks only inside the block).

    Float32 are: every ``nn.Linear`` on a 2-d input (the head on pooled features: logits come out in
    float32, not rounded to bf16's 8 bits, which on a logit of 15 is a step of 0.06; a transformer's
    token-wise linears stay bf16), and the ``nn.Conv2d`` layers :func:`keeps_float32` names: the stem
    and the convolutions with short reductions at >= :data:`FP32_MIN_SCALE` of the image's height and
    width. The input size is read from the call of ``module`` itself; in a pass that does not start
    at ``module``, such as the tail of a :class:`LayerSplit`, only the head is float32. The layers
    after such a convolution (norm, activation) run in float32 too, up to the next convolution, which
    autocast casts back to bf16. The fused inference network (:mod:`cnnlens.attribution.fused`)
    applies the same rule to its fused convolutions.

    Why: rounding errors made where the image enters are carried through the whole network, and the
    head's rounding lands on the score itself. Measured with EfficientNet-Lite0 on LIME-like
    perturbations (``docs/decisions.md``): the error of the target probability against float32 fell
    from 0.146 to 0.052 of its spread with the stem and depthwise convolutions at >= 1/2 the input
    size (the first rule), and in the fused network from 0.013 to 0.007 with this one. The
    ordinary convolutions stay bf16: on VGG19 those at full and half resolution are a quarter of the
    network's work, and keeping them float32 made its bf16 forward 1.7x slower (79 against 45 ms per
    image at batch 48) for an error of 0.022 instead of 0.030 of the spread.
    """
    size: list[tuple[int, int, int]] = []  # the network input's channels, height, width
    stack: list[contextlib.AbstractContextManager[None] | None] = []
    handles = Handles()

    def top(_m: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:
            size[:] = [(int(args[0].shape[1]), int(args[0].shape[-2]), int(args[0].shape[-1]))]

    def full_precision(m: nn.Module, x: torch.Tensor) -> bool:
        if isinstance(m, nn.Linear):
            return x.ndim == 2  # a head on pooled features (not a transformer's token-wise layers)
        if not size or not isinstance(m, nn.Conv2d):
            return False
        return keeps_float32(m, tuple(x.shape), (1, *size[0]))

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
def evaluation_context(precision: str, device: torch.device, module: nn.Module) -> Iterator[None]:
    """What every pass of a method through ``module`` runs under (the bench's floor too).

    :func:`precision_context` (bf16 autocast with the network's ends in float32, or nothing) and
    :func:`same_padding_in_conv` (TensorFlow-"same" convolutions without a padded copy of their input).
    Pair it with :func:`to_memory_format` for the input.
    """
    with same_padding_in_conv(module), precision_context(precision, device, module):
        yield


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's "same" padding of one dimension: ``(before, after)``, ``after - before`` is 0 or 1."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _timm_conv2d_same() -> type[nn.Conv2d] | None:
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
    grouped convolutions with an uneven padding (a dense convolution pays the extra kernel row in
    arithmetic: the stem of EfficientNet-Lite0 became 1.3x slower) and for dilation 1 there.
    Measured on the development CPU, batch 16, channels_last, per image: EfficientNet-Lite0's 96-channel
    depthwise stride-2 convolution at 112 px 0.545 -> 0.171 ms in float32 (0.231 -> 0.115 ms in bf16);
    maximum difference from timm's result 0.0.
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
    same = _timm_conv2d_same()
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


def check_memory_format(memory_format: str) -> str:
    """Validate a ``memory_format=`` argument."""
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {', '.join(MEMORY_FORMATS)}, got {memory_format!r}")
    return memory_format


def to_memory_format(batch: torch.Tensor, memory_format: str = "auto") -> torch.Tensor:
    """A 4-d batch in the memory format of the pass: ``channels_last`` unless ``"contiguous"``.

    ``"auto"`` is ``channels_last`` in both precisions: on the development CPU it made a batch-16
    fp32 forward (inputs only converted, the model untouched) about 1.4x faster on ResNet-50 and 2x on
    EfficientNet-Lite0, with logits equal to 6e-5, and oneDNN's bf16 kernels want it too. The model's
    weights are never converted (the model is left as found); convolutions take the input's layout.
    """
    if batch.ndim == 4 and memory_format != "contiguous":
        return batch.contiguous(memory_format=torch.channels_last)
    return batch


# -- batch size --------------------------------------------------------------------------------------

AUTO_MEMORY_FRACTION = 0.25
AUTO_MAX_BATCH = {"cpu": 64, "cuda": 512}


def free_memory(device: torch.device) -> int:
    """Free bytes on ``device``: CUDA's free memory, or ``MemAvailable`` from ``/proc/meminfo``."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def activation_bytes(module: nn.Module, sample: torch.Tensor) -> int:
    """Bytes of every leaf module's output for one input (an upper bound of a forward's working set)."""
    total = 0
    handles = Handles()

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    try:
        for m in module.modules():
            if not list(m.children()):
                handles.add(m.register_forward_hook(hook))
        with torch.inference_mode():
            module(sample[:1])
    finally:
        handles.remove()
    return max(total, sample[:1].numel() * sample.element_size())


def auto_batch_size(module: nn.Module, sample: torch.Tensor) -> int:
    """A batch size chosen from free memory.

    The rule: a quarter of the free memory (:func:`free_memory`) divided by the bytes that every
    layer's output for one input adds up to (:func:`activation_bytes`, an upper bound because
    inference frees activations as it goes), clipped to ``[1, 64]`` on CPU (larger CPU batches do not
    run faster per image) and ``[1, 512]`` on CUDA. Costs one forward pass of one input.
    """
    per_item = activation_bytes(module, sample)
    budget = int(free_memory(sample.device) * AUTO_MEMORY_FRACTION)
    cap = AUTO_MAX_BATCH.get(sample.device.type, 64)
    size = max(1, min(cap, budget // per_item))
    logger.debug(
        "auto batch size %d (%.1f MB per input, %.0f MB budget)", size, per_item / 2**20, budget / 2**20
    )
    return size


# -- splitting a network at a layer --------------------------------------------------------------


class _LeafTracer(fx.Tracer):
    """Tracer that keeps the split layer (and timm's untraceable modules) as single nodes."""

    def __init__(self, leaves: tuple[type[nn.Module], ...], layer: nn.Module | None) -> None:
        super().__init__(autowrap_functions=_timm_notrace_functions())
        self.leaves = leaves
        self.layer = layer

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if m is self.layer or isinstance(m, self.leaves):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _timm_notrace_modules() -> tuple[type[nn.Module], ...]:
    try:
        from timm.models._features_fx import get_notrace_modules
    except ImportError:
        return ()
    return tuple(get_notrace_modules())


def _timm_notrace_functions() -> tuple[Any, ...]:
    try:
        from timm.models._features_fx import get_notrace_functions
    except ImportError:
        return ()
    return tuple(get_notrace_functions())


def _input_dependent(nodes: list[fx.Node]) -> set[fx.Node]:
    out: set[fx.Node] = set()
    for n in nodes:
        if n.op == "placeholder" or any(a in out for a in n.all_input_nodes):
            out.add(n)
    return out


def _depends_on(cut: fx.Node) -> bool:
    """Whether the graph's output is reachable from ``cut``."""
    seen: set[fx.Node] = set()
    stack = list(cut.users)
    while stack:
        node = stack.pop()
        if node.op == "output":
            return True
        if node not in seen:
            seen.add(node)
            stack.extend(node.users)
    return False


def _split_graph(
    module: nn.Module, name: str, layer: nn.Module
) -> tuple[fx.GraphModule, fx.GraphModule, list[bool]]:
    tracer = _LeafTracer(_timm_notrace_modules(), layer)
    graph = tracer.trace(module)
    nodes = list(graph.nodes)
    calls = [n for n in nodes if n.op == "call_module" and n.target == name]
    if len(calls) != 1:
        raise SplitError(f"layer {name!r} is called {len(calls)} times in the traced graph, expected once")
    if not _depends_on(calls[0]):
        raise SplitError(f"the network's output does not depend on layer {name!r}")
    cut = nodes.index(calls[0]) + 1
    before, after = nodes[:cut], nodes[cut:]
    after_set = set(after)
    frontier = [calls[0]] + [
        n for n in before if n is not calls[0] and n.op != "get_attr" and any(u in after_set for u in n.users)
    ]
    head = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in before:
        env[n] = head.node_copy(n, lambda a: env[a])
    head.output(tuple(env[n] for n in frontier))
    tail = fx.Graph()
    env = {n: tail.placeholder(f"frontier_{i}") for i, n in enumerate(frontier)}
    for n in before:
        if n.op == "get_attr" and any(u in after_set for u in n.users):
            env[n] = tail.node_copy(n, lambda a: env[a])
    for n in after:
        env[n] = tail.node_copy(n, lambda a: env[a])
    dependent = _input_dependent(nodes)
    return fx.GraphModule(module, head), fx.GraphModule(module, tail), [n in dependent for n in frontier]


@dataclass
class Head:
    """What :meth:`LayerSplit.head` computed for one image: the layer's activation and the context."""

    activation: torch.Tensor
    context: list[Any] = field(default_factory=list)


SPLIT_MODES = ("auto", "fx", "hook", "full")


class LayerSplit:
    """Run ``module`` in two parts around ``layer``: up to it once, after it many times.

    This is the one mechanism for "the network after a layer" in cnnlens: perturbation methods
    (Score-CAM, Ablation-CAM) and channel Shapley values (:func:`suffix_runner`) use it.

    Modes:

    * ``"fx"``: the graph is traced with ``torch.fx`` (the layer and timm's untraceable modules kept
      as leaves) and cut after the layer's call; the head runs once per image, the tail once per batch
      of modified activations. Values from before the layer that the tail still needs (a skip
      connection) are recorded by the head and broadcast over the batch.
    * ``"hook"``: the whole network runs on the one image with a forward hook that swaps the layer's
      output for the batch (the prefix runs once per batch, not per activation; works where the rest
      broadcasts a batch of one against the batch).
    * ``"full"``: as ``"hook"``, with the image repeated over the batch: always correct, no saving.
    * ``"auto"``: ``"fx"``, falling back to ``"full"`` (logged) when tracing fails or, given
      ``check``, the split does not reproduce the model.

    With the hook modes a layer that runs more than once has only its last call swapped.

    Args:
        module: The network (in eval mode).
        name: The layer's dotted name.
        layer: The layer module.
        check: An input used to verify that the split reproduces ``module``; without it the traced
            split is trusted.
        mode: One of :data:`SPLIT_MODES`.

    Attributes:
        mode: The mode in use (``"fx"``, ``"hook"`` or ``"full"``).
        split: ``True`` when the graph was split with ``torch.fx`` (prefix computed once per image).

    Raises:
        ValueError: Unknown mode.
        SplitError: ``mode="fx"`` and the graph cannot be split at the layer.
    """

    def __init__(
        self,
        module: nn.Module,
        name: str,
        layer: nn.Module,
        check: torch.Tensor | None = None,
        *,
        mode: str = "auto",
    ) -> None:
        if mode not in SPLIT_MODES:
            raise ValueError(f"unknown split mode {mode!r}; expected one of {', '.join(SPLIT_MODES)}")
        self.module = module
        self.name = name
        self.layer = layer
        self.mode = mode
        if mode in ("auto", "fx"):
            try:
                self._head, self._tail, self._expand = _split_graph(module, name, layer)
                self.mode = "fx"
                if check is not None:
                    self._verify(check[:1])
            except Exception as err:  # fx raises many kinds (TraceError, TypeError, NotImplementedError...)
                if mode == "fx":
                    raise err if isinstance(err, SplitError) else SplitError(str(err)) from err
                self.mode = "full"
                logger.warning(
                    "cannot split %s at %r (%s); re-running the whole network",
                    type(module).__name__,
                    name,
                    err,
                )

    @property
    def split(self) -> bool:
        return self.mode == "fx"

    def _verify(self, x: torch.Tensor) -> None:
        with torch.inference_mode():
            ref = self.module(x).float()
            head = self.head(x)
            got = self.tail(head.activation.expand(2, *head.activation.shape[1:]).clone(), head).float()
        if got.shape != (2, *ref.shape[1:]) or not torch.allclose(
            got, ref.expand_as(got), rtol=1e-4, atol=1e-4
        ):
            raise SplitError("the split network does not reproduce the model's outputs")

    def head(self, x: torch.Tensor) -> Head:
        """The layer's activation for one image ``x`` (``(1, C, H, W)``), and what the tail needs."""
        if x.shape[0] != 1:
            raise ValueError(f"head() takes one image, got a batch of {x.shape[0]}")
        if self.split:
            values = self._head(x)
            return Head(values[0], list(values[1:]))
        seen: list[torch.Tensor] = []

        def record(_m: nn.Module, _i: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor):
                raise SplitError(f"layer {self.name!r} returns {type(out).__name__}, not one tensor")
            seen.append(out.clone())

        handles = Handles()
        handles.add(self.layer.register_forward_hook(record))
        try:
            self.module(x)
        finally:
            handles.remove()
        if not seen:
            raise ValueError(
                f"layer {self.name!r} did not run in the forward pass; choose a layer the model calls"
            )
        return Head(seen[-1], [x, len(seen)])

    def tail(self, activations: torch.Tensor, head: Head) -> torch.Tensor:
        """The network's output when the layer's output is ``activations`` (``(B, ...)``) for the
        image that ``head`` came from. The tail may modify ``activations`` in place."""
        size = len(activations)
        if not self.split:
            x, calls = head.context[0], head.context[1]
            count = [0]

            def swap(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
                count[0] += 1
                return activations if count[0] == calls else out

            handles = Handles()
            handles.add(self.layer.register_forward_hook(swap))
            try:
                out = self.module(x.expand(size, *x.shape[1:]) if self.mode == "full" else x)
            finally:
                handles.remove()
            if len(out) != size:
                raise SplitError("the network's output does not follow the substituted batch")
            return out
        context = [
            v.expand(size, *v.shape[1:]).clone() if dep and isinstance(v, torch.Tensor) and v.ndim > 0 else v
            for v, dep in zip(head.context, self._expand[1:])
        ]
        return self._tail(activations, *context)


# -- the network after a layer, bound to one image ---------------------------------------------------


@dataclass
class SuffixRunner:
    """The network after ``layer``, bound to one image (see :func:`suffix_runner`).

    Attributes:
        layer: Dotted name of the layer.
        mode: ``"fx"``, ``"hook"`` or ``"full"`` (see :class:`LayerSplit`).
        activation: ``(1, C, h, w)`` the layer's output for the image.
        logits: ``(1, K)`` the network's output for the image.
    """

    layer: str
    mode: str
    activation: torch.Tensor
    logits: torch.Tensor
    split: LayerSplit
    bound: Head

    def __call__(self, activations: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` of the network with the layer's output replaced by ``activations``.

        The caller's ``activations`` are not modified."""
        if activations.shape[1:] != self.activation.shape[1:]:
            raise ValueError(
                f"activations of shape {tuple(activations.shape)} do not fit layer {self.layer!r}, "
                f"whose output has shape (B, {', '.join(map(str, self.activation.shape[1:]))})"
            )
        with torch.inference_mode():
            return self.split.tail(activations.clone(), self.bound).float()


def suffix_runner(
    module: nn.Module, layer: str | nn.Module, image: torch.Tensor, *, mode: str = "auto"
) -> SuffixRunner:
    """Run the network up to ``layer`` once on ``image`` and return what runs the rest.

    Channel Shapley values evaluate thousands of coalitions of one layer's feature maps; this runs
    the part before the layer once. ``"auto"`` tries the :class:`LayerSplit` modes ``"fx"``,
    ``"hook"`` and ``"full"`` in that order and keeps the first whose output matches the network on
    the image's own activation (checked twice, which catches recorded values modified in place).
    Call it with the model in eval mode.

    Args:
        module: The network.
        layer: Dotted name or module of the layer to cut after.
        image: ``(1, C, H, W)`` one preprocessed image.
        mode: ``"auto"``, ``"fx"``, ``"hook"`` or ``"full"``.

    Raises:
        ValueError: Unknown mode, more than one image, or a layer the forward pass does not call.
        UnknownNameError: Unknown layer name.
        SplitError: The requested mode does not reproduce the network (``"auto"``: none does).
    """
    from cnnlens.models.layers import resolve_layer

    if mode not in SPLIT_MODES:
        raise ValueError(f"unknown split mode {mode!r}; expected one of {', '.join(SPLIT_MODES)}")
    if image.ndim != 4 or len(image) != 1:
        raise ValueError(f"suffix_runner binds one image of shape (1, C, H, W), got {tuple(image.shape)}")
    name, target = resolve_layer(module, layer)
    with torch.inference_mode():
        logits = module(image)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the network returns {type(logits).__name__}, not a tensor of logits")
    errors = []
    for m in ("fx", "hook", "full") if mode == "auto" else (mode,):
        try:
            split = LayerSplit(module, name, target, mode=m)
            with torch.inference_mode():
                bound = split.head(image)
            runner = SuffixRunner(name, m, bound.activation, logits.float(), split, bound)
            _verify_runner(runner)
            return runner
        except (SplitError, RuntimeError, TypeError, fx.proxy.TraceError) as err:
            logger.info("split mode %s failed for layer %s: %s", m, name, err)
            errors.append(f"{m}: {err}")
    raise SplitError(f"cannot run the network after layer {name!r} on its own ({'; '.join(errors)})")


def _verify_runner(runner: SuffixRunner) -> None:
    pair = torch.cat([runner.activation, runner.activation])
    for _ in range(2):
        out = runner(pair)
        scale = float(runner.logits.abs().max()) + 1.0
        if out.shape != (2, *runner.logits.shape[1:]) or not torch.allclose(
            out, runner.logits.expand_as(out), atol=1e-4 * scale, rtol=1e-4
        ):
            raise SplitError(f"the {runner.mode} split does not reproduce the network's output")
