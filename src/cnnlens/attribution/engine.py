"""The evaluation engine shared by perturbation methods.

Three things live here:

* :class:`LayerSplit` runs a network in two parts around one layer: the part up to the layer once per
  image (:meth:`LayerSplit.head`), then only the part after it for every batch of modified
  activations (:meth:`LayerSplit.tail`). The graph is split with ``torch.fx``; where a model cannot be
  traced, or the traced split does not reproduce the model, it falls back (and logs it) to re-running
  the whole network with a forward hook that swaps the layer's output.
* :func:`precision_context` and :func:`resolve_precision`: bfloat16 autocast plus ``channels_last``
  inputs for forwards that need no gradients.
* :func:`auto_batch_size`: a batch size chosen from free memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from cnnlens.attribution.hooks import Handles

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "auto")


class SplitError(RuntimeError):
    """The network cannot be split at the requested layer with ``torch.fx``."""


# -- precision -----------------------------------------------------------------------------------------


def bf16_is_native(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware (CUDA with bf16, or a CPU with AMX/AVX512-BF16)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    cpu = torch._C._cpu
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, c, lambda: False)()) for c in checks)


def check_precision(precision: str) -> str:
    """Validate a ``precision=`` argument."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def resolve_precision(precision: str, device: torch.device, bf16_faithful: bool) -> str:
    """Turn ``"auto"`` into ``"fp32"`` or ``"bf16"``.

    ``"auto"`` picks bfloat16 only where both hold: the method's maps stay faithful in bfloat16
    (``bf16_faithful``, measured by ``bench/attribution.py --precision --quick``: Spearman rank
    correlation with the fp32 map >= 0.99 on EfficientNet-Lite0 and the sample photos) and the device
    computes bfloat16 natively. Measured: occlusion 0.996, RISE 0.999, Score-CAM 0.996, Ablation-CAM
    0.996, LIME 0.990 (faithful); double occlusion 0.949 and KernelSHAP 0.984 (not). On the 2-core
    AVX2 machine (no AMX, no AVX512-BF16) bfloat16 is emulated and was 1.25-50x slower than fp32, so
    ``"auto"`` means fp32 there.
    """
    check_precision(precision)
    if precision != "auto":
        return precision
    return "bf16" if bf16_faithful and bf16_is_native(device) else "fp32"


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device) -> Iterator[None]:
    """Autocast to bfloat16 for ``"bf16"``; nothing for ``"fp32"``. Use with :func:`to_precision`."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def to_precision(batch: torch.Tensor, precision: str) -> torch.Tensor:
    """Inputs in the memory format that suits ``precision`` (``channels_last`` for bf16 on 4-d)."""
    if precision == "bf16" and batch.ndim == 4:
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

    def __init__(self, leaves: tuple[type[nn.Module], ...], layer: nn.Module) -> None:
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


def _split_graph(
    module: nn.Module, name: str, layer: nn.Module
) -> tuple[fx.GraphModule, fx.GraphModule, list[bool]]:
    tracer = _LeafTracer(_timm_notrace_modules(), layer)
    graph = tracer.trace(module)
    nodes = list(graph.nodes)
    calls = [n for n in nodes if n.op == "call_module" and n.target == name]
    if len(calls) != 1:
        raise SplitError(f"layer {name!r} is called {len(calls)} times in the traced graph, expected once")
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


class LayerSplit:
    """Run ``module`` in two parts around ``layer``: up to it once, after it many times.

    Args:
        module: The network (in eval mode).
        name: The layer's dotted name.
        layer: The layer module.
        check: An input used to verify that the split reproduces ``module``; without it the traced
            split is trusted.

    Attributes:
        split: ``True`` when the graph was split with ``torch.fx`` (prefix computed once); ``False``
            for the fallback, which re-runs the whole network with a hook that swaps the layer's
            output.
    """

    def __init__(self, module: nn.Module, name: str, layer: nn.Module, check: torch.Tensor | None = None):
        self.module = module
        self.name = name
        self.layer = layer
        self.split = False
        try:
            self._head, self._tail, self._expand = _split_graph(module, name, layer)
            self.split = True
            if check is not None:
                self._verify(check[:1])
        except Exception as err:  # fx raises many kinds (TraceError, TypeError, NotImplementedError...)
            self.split = False
            logger.warning(
                "cannot split %s at %r (%s); re-running the whole network", type(module).__name__, name, err
            )

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
        if not self.split:
            store: dict[str, torch.Tensor] = {}
            handles = Handles()
            handles.add(
                self.layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out.clone()))
            )
            try:
                self.module(x)
            finally:
                handles.remove()
            if "a" not in store:
                raise RuntimeError(f"layer {self.name!r} did not run in the forward pass")
            return Head(store["a"], [x])
        values = self._head(x)
        return Head(values[0], list(values[1:]))

    def tail(self, activations: torch.Tensor, head: Head) -> torch.Tensor:
        """The network's output when the layer's output is ``activations`` (``(B, ...)``) for the
        image that ``head`` came from. The tail may modify ``activations`` in place."""
        size = len(activations)
        if not self.split:
            handles = Handles()
            handles.add(self.layer.register_forward_hook(lambda _m, _i, _out: activations))
            try:
                return self.module(head.context[0].expand(size, *head.context[0].shape[1:]))
            finally:
                handles.remove()
        context = [
            v.expand(size, *v.shape[1:]).clone() if dep and isinstance(v, torch.Tensor) and v.ndim > 0 else v
            for v, dep in zip(head.context, self._expand[1:])
        ]
        return self._tail(activations, *context)
