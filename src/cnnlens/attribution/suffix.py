"""Running only the part of a network after one layer, for one image.

Channel Shapley values evaluate thousands of coalitions of a layer's feature maps; each is the layer's
activation with some channels replaced. Re-running the whole network per coalition wastes the part
before the layer, whose result never changes. :func:`suffix_runner` runs the prefix once and returns a
callable that maps a batch of modified activations to logits:

* ``"fx"``: the network is traced with ``torch.fx`` (timm's non-traceable modules and functions kept
  as leaves), the chosen layer made a leaf, and only the graph nodes that depend on it are run. Values
  from before the layer that the rest still needs (a residual branch, a skip connection) are recorded
  in the prefix run and broadcast over the batch.
* ``"hook"``: for networks that cannot be traced, the network runs on the one image with a forward hook
  that replaces the layer's output by the whole batch, so the prefix runs once per batch, not per
  activation (works when the rest broadcasts a batch of one against the batch).
* ``"full"``: as ``"hook"``, with the image repeated over the batch: always correct, no saving.

``"auto"`` tries them in that order and keeps the first whose output matches the full network on the
image's own activation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from cnnlens.models.layers import resolve_layer

log = logging.getLogger(__name__)

MODES = ("auto", "fx", "hook", "full")


class SuffixError(RuntimeError):
    """The part of the network after the layer cannot be run on its own in the requested way."""


@dataclass
class SuffixRunner:
    """The network after ``layer``, bound to one image.

    Attributes:
        layer: Dotted name of the layer.
        mode: ``"fx"``, ``"hook"`` or ``"full"`` (see the module docs).
        activation: ``(1, C, h, w)`` the layer's output for the image.
        logits: ``(1, K)`` the network's output for the image.
    """

    layer: str
    mode: str
    activation: torch.Tensor
    logits: torch.Tensor
    run: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, activations: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` of the network with the layer's output replaced by ``activations``."""
        if activations.shape[1:] != self.activation.shape[1:]:
            raise ValueError(
                f"activations of shape {tuple(activations.shape)} do not fit layer {self.layer!r}, "
                f"whose output has shape (B, {', '.join(map(str, self.activation.shape[1:]))})"
            )
        with torch.inference_mode():
            return self.run(activations).float()


def suffix_runner(
    module: nn.Module, layer: str | nn.Module, image: torch.Tensor, *, mode: str = "auto"
) -> SuffixRunner:
    """Run the network up to ``layer`` once on ``image`` and return what runs the rest.

    Call it with the model in eval mode (the ``"fx"`` trace keeps the training flags it sees).

    Args:
        module: The network.
        layer: Dotted name or module of the layer to cut after.
        image: ``(1, C, H, W)`` one preprocessed image.
        mode: ``"auto"``, ``"fx"``, ``"hook"`` or ``"full"``.

    Returns:
        A :class:`SuffixRunner`; its output on ``runner.activation`` equals the network's output.

    Raises:
        ValueError: Unknown mode, or more than one image.
        UnknownNameError: Unknown layer name.
        SuffixError: The requested mode does not reproduce the network (``"auto"``: none does).
    """
    if mode not in MODES:
        raise ValueError(f"unknown suffix mode {mode!r}; expected one of {', '.join(MODES)}")
    if image.ndim != 4 or len(image) != 1:
        raise ValueError(f"suffix_runner binds one image of shape (1, C, H, W), got {tuple(image.shape)}")
    name, target = resolve_layer(module, layer)
    with torch.inference_mode():
        logits, activation, calls = _reference(module, target, image)
    if activation is None:
        raise ValueError(f"layer {name!r} did not run in the forward pass; choose a layer the model calls")
    builders = {"fx": _fx_suffix, "hook": _hook_suffix, "full": _full_suffix}
    errors = []
    for m in ("fx", "hook", "full") if mode == "auto" else (mode,):
        try:
            run = builders[m](module, name, target, image, calls)
            runner = SuffixRunner(name, m, activation, logits, run)
            _verify(runner)
            return runner
        except (SuffixError, RuntimeError, TypeError, fx.proxy.TraceError) as err:
            log.info("suffix mode %s failed for layer %s: %s", m, name, err)
            errors.append(f"{m}: {err}")
    raise SuffixError(f"cannot run the network after layer {name!r} on its own ({'; '.join(errors)})")


def _reference(
    module: nn.Module, layer: nn.Module, image: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The logits, the layer's (last) output and how many times the layer ran."""
    seen: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the layer returns {type(out).__name__}, not one tensor")
        seen.append(out.clone())

    handle = layer.register_forward_hook(hook)
    try:
        logits = module(image)
    finally:
        handle.remove()
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the network returns {type(logits).__name__}, not a tensor of logits")
    return logits.float(), (seen[-1] if seen else None), len(seen)


def _verify(runner: SuffixRunner) -> None:
    """The suffix on the image's own activation (twice, as a batch of two) must give its logits."""
    pair = torch.cat([runner.activation, runner.activation])
    for _ in range(2):  # a second call catches recorded values modified in place by the first
        out = runner(pair)
        expected = runner.logits.expand_as(out) if out.shape[1:] == runner.logits.shape[1:] else None
        scale = float(runner.logits.abs().max()) + 1.0
        if expected is None or not torch.allclose(out, expected, atol=1e-4 * scale, rtol=1e-4):
            raise SuffixError(f"the {runner.mode} suffix does not reproduce the network's output")


# ---------------------------------------------------------------------------------------------
# fx: run only the nodes that depend on the layer


def _tracer(layer_name: str) -> fx.Tracer:
    leaves: tuple[type, ...] = ()
    autowrap: tuple[Callable[..., Any], ...] = ()
    try:
        from timm.models._features_fx import get_notrace_functions, get_notrace_modules

        leaves, autowrap = tuple(get_notrace_modules()), tuple(get_notrace_functions())
    except ImportError:  # pragma: no cover - timm is a dependency
        pass

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return qualname == layer_name or isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    return _Tracer(autowrap_functions=autowrap)


class _SuffixInterpreter(fx.Interpreter):
    """Runs the nodes after ``cut`` with the values before it fixed to those of one image."""

    def __init__(self, gm: fx.GraphModule, cut: fx.Node, image: torch.Tensor) -> None:
        super().__init__(gm, garbage_collect_values=False)
        after = _dependents(cut)
        self.cut = cut
        self.nodes = [n for n in gm.graph.nodes if n in after]
        self.result = next((n for n in self.nodes if n.op == "output"), None)
        if self.result is None:
            raise SuffixError(f"the network's output does not depend on layer {cut.target!r}")
        self.run(image)
        needed = {i for n in self.nodes for i in n.all_input_nodes if i not in after and i is not cut}
        self.constants = {n: self.env[n] for n in needed}
        self.env = {}

    def suffix(self, activations: torch.Tensor) -> torch.Tensor:
        b = len(activations)
        self.env = {n: _broadcast(v, b) for n, v in self.constants.items()}
        self.env[self.cut] = activations.clone()  # the rest may work in place (out += identity)
        try:
            for node in self.nodes:
                self.env[node] = self.run_node(node)
            return self.env[self.result]  # type: ignore[index]
        finally:
            self.env = {}


def _dependents(cut: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = list(cut.users)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(node.users)
    return seen


def _broadcast(value: Any, batch: int) -> Any:
    if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == 1 and batch != 1:
        return value.expand(batch, *value.shape[1:])
    return value


def _fx_suffix(
    module: nn.Module, name: str, _layer: nn.Module, image: torch.Tensor, _calls: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    tracer = _tracer(name)
    gm = fx.GraphModule(module, tracer.trace(module))
    cuts = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == name]
    if not cuts:
        raise SuffixError(f"layer {name!r} is inside a module that torch.fx cannot trace through")
    with torch.inference_mode():
        interpreter = _SuffixInterpreter(gm, cuts[-1], image)
    return interpreter.suffix


# ---------------------------------------------------------------------------------------------
# hooks: substitute the layer's output while the network runs on the image


def _substituting(
    module: nn.Module, layer: nn.Module, image: torch.Tensor, calls: int, repeat: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(activations: torch.Tensor) -> torch.Tensor:
        count = [0]

        def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
            count[0] += 1
            return activations.clone() if count[0] == calls else out

        handle = layer.register_forward_hook(hook)
        try:
            x = image.expand(len(activations), *image.shape[1:]) if repeat else image
            out = module(x)
        finally:
            handle.remove()
        if out.shape[0] != len(activations):
            raise SuffixError("the network's output does not follow the substituted batch")
        return out

    return run


def _hook_suffix(
    module: nn.Module, _name: str, layer: nn.Module, image: torch.Tensor, calls: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    return _substituting(module, layer, image, calls, repeat=False)


def _full_suffix(
    module: nn.Module, _name: str, layer: nn.Module, image: torch.Tensor, calls: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    return _substituting(module, layer, image, calls, repeat=True)
