"""One abstraction for modified backpropagation: a :class:`Rule` is a backward pass for some kinds of
operation, applied for the duration of a ``with`` block.

A rule says which module kinds it applies to (``kinds``) and what gradient reaches an operation's
inputs given the gradient at its output (:meth:`Rule.backward`). The value of the forward pass is never
changed. Guided backpropagation, deconvnet and DeepLIFT's rescale, max-pool and product rules are each
one small class on it. Two ways apply rules:

* :func:`hooked_rules` hooks the modules of the user's model for the block only (forward pre-hook and
  forward hook, removed on exit also after an error): every call of a module, however often it is
  reused, runs the rule. Functional calls (``F.relu`` in a ``forward``) are not seen.
* :class:`RuledGraph` (engine/ruled_graph.py) applies them to a ``torch.fx`` copy of the model, where
  every call (module, function or method) is its own node and in-place operations are made
  out-of-place; it also carries each node's values on a reference input, which DeepLIFT needs.

Both go through :class:`_Ruled`, an autograd function whose forward is the operation's ordinary output
and whose backward is the rule's. An elementwise rule whose backward is ``grad * m`` for a multiplier
``m`` known in the forward pass (DeepLIFT's rescale rule) may give ``m`` there instead
(:meth:`Rule.multiplier`): :class:`RuledGraph` then keeps only ``m`` for the backward pass, which is one
product, like a ReLU's mask, instead of the operation's inputs, output and reference values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from cnnlens.attribution.engine.kernels import Kernel
from cnnlens.models.hooks import Handles

Grads = tuple[torch.Tensor | None, ...]


@dataclass
class Call:
    """One call of an operation, as its rule sees it in the backward pass.

    Attributes:
        op: What was called: a module, or the functional form (``F.relu``, ``operator.mul``...).
        kind: The module kind the call counts as (``nn.ReLU`` for ``F.relu``).
        inputs: The tensor inputs the rule sends gradients to (those that depend on the network input).
        output: The call's output.
        reference: The same call's ``(inputs, output)`` on the reference input, when there is one.
        compute: The call as a function of ``inputs`` (out-of-place), for rules that need it again.
    """

    op: Any
    kind: type
    inputs: tuple[torch.Tensor, ...]
    output: torch.Tensor
    reference: tuple[tuple[torch.Tensor, ...], torch.Tensor] | None
    compute: Callable[..., torch.Tensor]


class Rule:
    """A modified backward pass for the operations of some module kinds.

    Subclasses set ``kinds`` and implement :meth:`backward`; ``needs_reference`` says whether the rule
    reads a reference pass (DeepLIFT) and so can only be applied by a traced copy.
    """

    kinds: ClassVar[tuple[type, ...]] = ()
    needs_reference: ClassVar[bool] = False

    def applies(self, kind: type) -> bool:
        return issubclass(kind, self.kinds)

    def backward(self, grad: torch.Tensor, call: Call) -> Grads:
        """The gradients sent to ``call.inputs``, given ``grad`` at the output."""
        raise NotImplementedError

    def kernel(self, kind: type, op: Any) -> Kernel | None:
        """A compiled backward kernel ``(grad, x, x') -> grad * m`` for one call of ``op`` (of kind
        ``kind``) with one input ``x`` and the reference's input ``x'``: the product with the
        :meth:`multiplier` in one pass, ``m`` never stored; ``None`` (the default) where the rule has
        none. :class:`RuledGraph` uses it in place of :meth:`multiplier` when asked to
        (:meth:`RuledGraph.use_kernels`)."""
        return None

    def multiplier(self, call: Call) -> torch.Tensor | None:
        """The tensor ``m`` (shape of ``call.inputs[0]``) whose product with the output gradient is the
        gradient of the call's one input, computed in the forward pass (without autograd); ``None``
        where the rule needs its :meth:`backward` (the default). When a rule gives ``m``, its
        :meth:`backward` must equal ``(grad * m,)``."""
        return None


class _Ruled(torch.autograd.Function):
    """The operation's output in the forward pass, the rule's gradients in the backward pass."""

    @staticmethod
    def forward(ctx: Any, rule: Rule, call: Call, *inputs: torch.Tensor) -> torch.Tensor:
        ctx.rule, ctx.call = rule, call
        return call.output

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        call: Call = ctx.call
        try:
            grads = ctx.rule.backward(grad, call)
        finally:
            ctx.call = None  # the saved activations go with the graph
        return (None, None, *grads)


class _Scaled(torch.autograd.Function):
    """The precomputed output in the forward pass, ``grad * m`` to the one input in the backward pass."""

    @staticmethod
    def forward(ctx: Any, kept: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        output, ctx.m = kept
        return output

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        m: torch.Tensor = ctx.m
        ctx.m = None  # the graph is used once: m becomes the gradient (no new tensor) and goes with it
        return None, m.mul_(grad)


class _Kerneled(torch.autograd.Function):
    """The precomputed output in the forward pass, ``kernel(grad, x, x')`` to ``x`` in the backward."""

    @staticmethod
    def forward(ctx: Any, kept: list[Any], x: torch.Tensor) -> torch.Tensor:
        output, ctx.kernel, ctx.x0 = kept
        ctx.save_for_backward(x)
        return output

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (x,) = ctx.saved_tensors
        return None, ctx.kernel(grad, x, ctx.x0)


def kerneled(output: torch.Tensor, x: torch.Tensor, kernel: Kernel, x0: torch.Tensor) -> torch.Tensor:
    """``output`` (computed from ``x`` without autograd), whose gradient to ``x`` is
    ``kernel(grad, x, x0)`` with the reference's input ``x0``."""
    return _Kerneled.apply([output, kernel, x0], x)


def scaled(output: torch.Tensor, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``output`` (computed from ``x`` without autograd), whose gradient to ``x`` is ``grad * m``."""
    return _Scaled.apply([output, m], x)


def ruled(rule: Rule, call: Call) -> torch.Tensor:
    """``call.output``, whose backward pass to ``call.inputs`` follows ``rule``."""
    return _Ruled.apply(rule, call, *call.inputs)


def rule_for(rules: tuple[Rule, ...], kind: type) -> Rule | None:
    """The first of ``rules`` that applies to ``kind``."""
    return next((r for r in rules if r.applies(kind)), None)


@contextmanager
def hooked_rules(model: nn.Module, rules: tuple[Rule, ...]) -> Iterator[list[int]]:
    """Apply ``rules`` to every call of the matching modules of ``model`` inside the block.

    The model is not modified: a forward pre-hook keeps the module's input (an in-place module gets a
    copy, so it cannot overwrite it) and a forward hook replaces the output by the same values whose
    backward pass is the rule's (the module's own backward is not used). Every hook is removed on exit.

    Returns:
        A one-element list counting the calls the rules were applied to.
    """
    calls = [0]
    pending: dict[int, list[torch.Tensor]] = {}
    handles = Handles()

    def keep_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        pending.setdefault(id(module), []).append(args[0])
        return (args[0].clone(), *args[1:]) if getattr(module, "inplace", False) else args

    def make_hook(rule: Rule) -> Any:
        def apply(module: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            x = pending[id(module)].pop()
            if not (isinstance(out, torch.Tensor) and out.requires_grad):
                return out
            value = out.detach().clone()
            return ruled(rule, Call(module, type(module), (x,), value, None, module))

        return apply

    try:
        for m in model.modules():
            rule = rule_for(rules, type(m))
            if rule is not None:
                handles.add(m.register_forward_pre_hook(keep_input))
                handles.add(m.register_forward_hook(make_hook(rule)))
        yield calls
    finally:
        handles.remove()
        pending.clear()
