"""Hooks and model-state guards that exist only inside a ``with`` block.

Every hook cnnlens registers is created on ``__enter__`` and removed on ``__exit__``, also when the
block raises, and every change to the model (train/eval mode, ``requires_grad``) is undone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from cnnlens.errors import InputTypeError
from cnnlens.models.tokens import TokenLayout


@contextmanager
def preserved_state(model: nn.Module, *, freeze_parameters: bool = True) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (and optionally stop parameter gradients) for the block.

    On exit every module's ``training`` flag and every parameter's ``requires_grad`` flag is restored
    to what it was on entry, whatever happened inside.

    Args:
        model: The network.
        freeze_parameters: Set ``requires_grad=False`` on every parameter, so a backward pass computes
            gradients with respect to inputs or activations only, never weight gradients.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if any(training for _, training in modes):  # eval() walks the modules in Python: ~0.5 ms
            model.eval()
        if freeze_parameters:
            for p, flag in grads:
                if flag:
                    p.requires_grad_(False)
        yield model
    finally:
        for m, training in modes:
            if m.training != training:
                m.training = training
        for p, flag in grads:
            if p.requires_grad != flag:
                p.requires_grad_(flag)


class Handles:
    """A list of hook handles that are all removed together."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def add(self, handle: RemovableHandle) -> None:
        self._handles.append(handle)

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()


@contextmanager
def capture_outputs(
    modules: dict[str, nn.Module], *, tokens: TokenLayout | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of each module (by name) during forward passes inside the block.

    The recorded tensor stays part of the autograd graph, so ``torch.autograd.grad(score, output)``
    gives the gradient at that layer. The module passes a copy downstream, so a later in-place
    operation (``ReLU(inplace=True)``) cannot overwrite what was recorded. A module called several
    times keeps the output of its last call.

    With ``tokens`` (the model's :class:`~cnnlens.models.tokens.TokenLayout`), a ``(N, T, C)`` output
    of a vision transformer's token layer is recorded as its ``(N, C, h, w)`` grid of patch tokens
    (prefix tokens dropped), and the network continues from the tokens rebuilt from that grid (the same
    values): the gradient with respect to the recorded grid is the gradient at the patch tokens.
    """
    store: dict[str, torch.Tensor] = {}
    handles = Handles()

    def make_hook(name: str) -> Any:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> Any:
            if not isinstance(out, torch.Tensor):
                raise InputTypeError(
                    f"layer {name!r} returns {type(out).__name__}, not a tensor; "
                    "choose a layer whose output is a single feature map"
                )
            grid = tokens.grid(out) if tokens is not None else None
            if grid is not None:
                store[name], prefix = grid.to_map(out)
                return grid.to_tokens(store[name], prefix)
            store[name] = out
            return out.clone() if out.requires_grad else out

        return hook

    try:
        for name, module in modules.items():
            handles.add(module.register_forward_hook(make_hook(name)))
        yield store
    finally:
        handles.remove()


def hook_counts(model: nn.Module) -> int:
    """Total number of hooks registered on any module of ``model`` (used by the contract tests)."""
    total = 0
    for m in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_state_dict_hooks",
        ):
            total += len(getattr(m, attr, {}))
    return total
