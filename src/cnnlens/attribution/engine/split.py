"""Running a network in two parts around one layer: up to it once per image, after it many times."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from cnnlens.attribution.engine.tracing import LeafTracer, timm_notrace_modules
from cnnlens.models.hooks import Handles

logger = logging.getLogger(__name__)


class SplitError(RuntimeError):
    """The network cannot be split at the requested layer with ``torch.fx``."""


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
    tracer = LeafTracer(timm_notrace_modules(), layer)
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
