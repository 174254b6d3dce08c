"""Running a network in two parts around one layer: up to it once per image, after it many times."""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from cnnlens.attribution.engine.tracing import LeafTracer, timm_notrace_modules
from cnnlens.errors import InputError, InputTypeError
from cnnlens.models.hooks import Handles
from cnnlens.models.tokens import TokenGrid, TokenLayout

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


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _logits(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        out = module(x)
    if not isinstance(out, torch.Tensor):
        raise InputTypeError(f"the network returns {type(out).__name__}, not a tensor of logits")
    return out.float()


@dataclass
class Head:
    """What :meth:`LayerSplit.head` computed for one image: the layer's activation and the context.

    For a token layer read as a grid, ``activation`` is the ``(1, C, h, w)`` grid of patch tokens,
    ``grid`` its layout and ``prefix`` the ``(1, k, C)`` prefix tokens the tail puts back.
    """

    activation: torch.Tensor
    context: list[Any] = field(default_factory=list)
    grid: TokenGrid | None = None
    prefix: torch.Tensor | None = None


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
    * ``"auto"``: the first of ``"fx"``, ``"hook"`` and ``"full"`` that works and, given ``check``,
      reproduces the model on it (``"hook"`` is tried only with ``check``: only a check shows that the
      rest of the network broadcasts). Falling back is logged.

    With the hook modes a layer that runs more than once has only its last call swapped.

    Args:
        module: The network (in eval mode).
        name: The layer's dotted name.
        layer: The layer module.
        check: An input used to verify that the split reproduces ``module`` (the tail is run twice,
            which also catches recorded values it modifies in place); without it the traced split
            is trusted.
        mode: One of :data:`SPLIT_MODES`.
        tokens: The model's token layout: a vision transformer's ``(1, T, C)`` token layer is then
            given (:meth:`head`) and taken (:meth:`tail`) as its ``(B, C, h, w)`` grid of patch tokens.

    Attributes:
        mode: The mode in use (``"fx"``, ``"hook"`` or ``"full"``).
        split: ``True`` when the graph was split with ``torch.fx`` (prefix computed once per image).

    Raises:
        ValueError: Unknown mode.
        SplitError: The requested mode does not work or does not reproduce the network (``"auto"``:
            none does).
    """

    def __init__(
        self,
        module: nn.Module,
        name: str,
        layer: nn.Module,
        check: torch.Tensor | None = None,
        *,
        mode: str = "auto",
        tokens: TokenLayout | None = None,
    ) -> None:
        if mode not in SPLIT_MODES:
            raise InputError(f"unknown split mode {mode!r}; expected one of {', '.join(SPLIT_MODES)}")
        self.module = module
        self.name = name
        self.layer = layer
        self.tokens = tokens
        if mode != "auto":
            tries: tuple[str, ...] = (mode,)
        else:
            tries = ("fx", "hook", "full") if check is not None else ("fx", "full")
        reference = None if check is None else _logits(module, check[:1])
        errors = []
        for self.mode in tries:
            try:
                # torch.fx prints the traced code of a failing call to stderr; a failed try is one line
                with contextlib.redirect_stderr(io.StringIO()):
                    if self.mode == "fx":
                        self._head, self._tail, self._expand = _split_graph(module, name, layer)
                    if check is not None and reference is not None:
                        self._verify(check[:1], reference)
                break
            except ValueError as err:
                if self.mode != "fx":
                    raise  # the layer does not run in the forward pass: no mode can help
                errors.append(f"fx: {_first_line(err)}")
            except Exception as err:  # fx raises many kinds (TraceError, TypeError, NotImplementedError...)
                logger.debug("split mode %s failed for layer %s: %s", self.mode, name, err)
                errors.append(f"{self.mode}: {_first_line(err)}")
        else:
            raise SplitError(f"cannot run the network after layer {name!r} on its own ({'; '.join(errors)})")
        if errors:
            how = {
                "hook": "swapping the layer's output in a whole-network pass",
                "full": "re-running the whole network",
            }
            logger.warning(
                "cannot split %s at %r (%s); %s",
                type(module).__name__,
                name,
                "; ".join(errors),
                how[self.mode],
            )

    @property
    def split(self) -> bool:
        return self.mode == "fx"

    def _verify(self, x: torch.Tensor, ref: torch.Tensor) -> None:
        with torch.inference_mode():
            head = self.head(x)
            scale = float(ref.abs().max()) + 1.0
            for _ in range(2):  # twice: a tail that modifies recorded values in place fails the second
                got = self.tail(head.activation.expand(2, *head.activation.shape[1:]).clone(), head).float()
                if got.shape != (2, *ref.shape[1:]) or not torch.allclose(
                    got, ref.expand_as(got), atol=1e-4 * scale, rtol=1e-4
                ):
                    raise SplitError(f"the {self.mode} split does not reproduce the network's output")

    def head(self, x: torch.Tensor) -> Head:
        """The layer's activation for one image ``x`` (``(1, C, H, W)``), and what the tail needs."""
        if x.shape[0] != 1:
            raise InputError(f"head() takes one image, got a batch of {x.shape[0]}")
        if self.split:
            values = self._head(x)
            return self._as_grid(Head(values[0], list(values[1:])))
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
            raise InputError(
                f"layer {self.name!r} did not run in the forward pass; choose a layer the model calls"
            )
        return self._as_grid(Head(seen[-1], [x, len(seen)]))

    def _as_grid(self, head: Head) -> Head:
        grid = self.tokens.grid(head.activation) if self.tokens is not None else None
        if grid is not None:
            head.activation, head.prefix = grid.to_map(head.activation)
            head.grid = grid
        return head

    def tail(self, activations: torch.Tensor, head: Head) -> torch.Tensor:
        """The network's output when the layer's output is ``activations`` (``(B, ...)``) for the
        image that ``head`` came from (grids of patch tokens where the head gave one). The tail may
        modify ``activations`` in place."""
        size = len(activations)
        if head.grid is not None and head.prefix is not None:
            activations = head.grid.to_tokens(activations, head.prefix)
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
            raise InputError(
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
        raise InputError(f"unknown split mode {mode!r}; expected one of {', '.join(SPLIT_MODES)}")
    if image.ndim != 4 or len(image) != 1:
        raise InputError(f"suffix_runner binds one image of shape (1, C, H, W), got {tuple(image.shape)}")
    name, target = resolve_layer(module, layer)
    split = LayerSplit(module, name, target, check=image, mode=mode)
    with torch.inference_mode():
        bound = split.head(image)
    return SuffixRunner(name, split.mode, bound.activation, _logits(module, image), split, bound)
