"""Modified backpropagation through the rectifiers: Guided Backpropagation, Deconvnet, Guided Grad-CAM.

The rules are applied by :func:`backprop_rule`, a context manager that hooks every ``nn.ReLU`` and
``nn.ReLU6`` module for the duration of the block only; a module used several times is hooked on
every call. No module is swapped, no flag (``inplace``) changed, and every hook is removed on exit,
also after an error.

* Guided Backpropagation needs no change of the forward pass: a forward hook puts a gradient hook
  on the rectifier's output that keeps only the positive part of the signal arriving there, and the
  rectifier's own backward then applies its forward mask (``0 < x`` for ReLU, ``0 < x < 6`` for
  ReLU6): ``relu(g) * 1[unit passed]``, the rule of the paper, at the cost of one clamp per call.
* Deconvnet must ignore the forward mask, so the signal is sent around the rectifier: a forward
  pre-hook keeps the pre-activation (and hands an in-place rectifier a copy, so it cannot overwrite
  it), and a forward hook replaces the output by the same values produced by :class:`_Deconvnet`, an
  autograd function whose backward pass sends ``relu(g)`` straight to the pre-activation.

Rectifiers called as functions (``F.relu`` inside a ``forward``) cannot be hooked and keep their
ordinary gradient, and so do other activations (SiLU, GELU, LeakyReLU...) in a network that also
has ReLU modules: the rule is applied at the ReLU/ReLU6 modules only. A network without any
``nn.ReLU``/``nn.ReLU6`` module (SiLU, GELU, Hardswish...) has nothing to apply the rule to: the
methods raise a ``ValueError`` instead of silently returning the plain gradient; so do networks
whose ReLU modules never run (``rule_gradient`` counts the calls).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.attribution.core.base import Attribution, TargetPicker
from cnnlens.attribution.core.registry import register
from cnnlens.attribution.methods.cam import GradCAM
from cnnlens.attribution.methods.gradient import InputGradientMethod, input_gradient, saliency_reduction
from cnnlens.errors import InputError
from cnnlens.models.hooks import Handles

RULES = ("guided", "deconvnet")
RECTIFIERS = (nn.ReLU, nn.ReLU6)


class _Deconvnet(torch.autograd.Function):
    """Identity on the rectifier's output in the forward pass; ``relu(g)`` to the pre-activation in the
    backward pass (the forward mask is ignored)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return grad.clamp(min=0), None


def _positive_part(grad: torch.Tensor) -> torch.Tensor:
    return grad.clamp(min=0)


def rectifiers(model: nn.Module) -> list[nn.Module]:
    """The ``nn.ReLU`` and ``nn.ReLU6`` modules of ``model`` (each once, however often it is called)."""
    return [m for m in model.modules() if isinstance(m, RECTIFIERS)]


def _activation_types(model: nn.Module) -> list[str]:
    names = {
        type(m).__name__
        for m in model.modules()
        if "activation" in type(m).__module__ and not list(m.children())
    }
    return sorted(names)


@contextmanager
def backprop_rule(model: nn.Module, rule: str) -> Iterator[list[int]]:
    """Apply a backpropagation rule at every ReLU/ReLU6 module of ``model`` inside the block.

    Args:
        model: The network. It is not modified; hooks exist only inside the block.
        rule: ``"guided"`` (Springenberg et al.) or ``"deconvnet"`` (Zeiler and Fergus).

    Returns:
        A one-element list counting the rectifier calls the rule was applied to (check it after a
        forward pass: 0 means the rectifiers were bypassed, e.g. called functionally).

    Raises:
        ValueError: Unknown rule, or no ReLU/ReLU6 module in the model.
    """
    if rule not in RULES:
        raise InputError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    modules = rectifiers(model)
    if not modules:
        found = ", ".join(_activation_types(model)) or "none found"
        raise InputError(
            f"the {rule} rule is defined for ReLU activations, but {type(model).__name__} has no "
            f"nn.ReLU or nn.ReLU6 module (activations: {found}); use saliency, smoothgrad, "
            "integrated_gradients or gradcam for this model"
        )
    calls = [0]
    pending: dict[int, list[torch.Tensor]] = {}
    handles = Handles()

    def guide(_module: nn.Module, _args: Any, out: torch.Tensor) -> None:
        calls[0] += 1
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(_positive_part)  # then the rectifier's own backward applies its mask

    def keep_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        pending.setdefault(id(module), []).append(args[0])
        return (args[0].clone(), *args[1:]) if getattr(module, "inplace", False) else args

    def deconvnet(module: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return _Deconvnet.apply(pending[id(module)].pop(), out)

    try:
        for m in modules:
            if rule == "guided":
                handles.add(m.register_forward_hook(guide))
            else:
                handles.add(m.register_forward_pre_hook(keep_input))
                handles.add(m.register_forward_hook(deconvnet))
        yield calls
    finally:
        handles.remove()
        pending.clear()


def rule_gradient(
    attribution: Attribution,
    rule: str,
    inputs: torch.Tensor,
    targets: torch.Tensor | TargetPicker,
    batch_size: int,
) -> torch.Tensor:
    """The input "gradient" of the target logit under a backpropagation rule: ``(N, C, H, W)``."""
    with backprop_rule(attribution.module, rule) as calls:
        grads = input_gradient(attribution.passes, inputs, targets, batch_size)
    if calls[0] == 0:
        raise InputError(
            f"no ReLU module of {type(attribution.module).__name__} ran in the forward pass (its "
            f"rectifiers are called as functions?), so the {rule} rule could not be applied"
        )
    return grads


class _RuleMethod(InputGradientMethod):
    """A backpropagation rule, reduced to a per-pixel map like saliency (max |.| over channels)."""

    rule: str

    def gradients(self, inputs: torch.Tensor, picker: TargetPicker, batch_size: int) -> torch.Tensor:
        return rule_gradient(self, self.rule, inputs, picker, batch_size)

    def _attribute_picking(self, inputs: torch.Tensor, picker: TargetPicker, batch_size: int) -> torch.Tensor:
        return saliency_reduction(self.gradients(inputs, picker, batch_size))


@register
class GuidedBackprop(_RuleMethod):
    """Guided Backpropagation: at each ReLU only positive signals pass, and only where the unit fired.

    Works with in-place ReLU, ReLU6 and ReLU modules used several times; the model is not modified.
    A model without ReLU/ReLU6 modules raises ``ValueError`` (see :func:`backprop_rule`).

    Shape:
        A ``(N, H, W)`` non-negative map (max of the absolute value over the channels).

    References:
        Springenberg, Dosovitskiy, Brox, Riedmiller. Striving for Simplicity: The All Convolutional
        Net. ICLR workshop 2015.
    """

    name = "guided_backprop"
    class_sensitive = False  # the same map for every class (Sixt et al. 2020; docs/methods.md)
    summary = "gradient with negative signals stopped at every ReLU"
    reference = "Springenberg et al. 2015"
    rule = "guided"


@register
class Deconvnet(_RuleMethod):
    """Deconvnet: the signal is rectified at each ReLU, whatever the unit did in the forward pass.

    For ReLU6 the rule is the same (the reconstruction passes through a plain rectifier). Works with
    in-place ReLU and ReLU modules used several times; the model is not modified.

    Shape:
        A ``(N, H, W)`` non-negative map (max of the absolute value over the channels).

    References:
        Zeiler, Fergus. Visualizing and Understanding Convolutional Networks. ECCV 2014.
    """

    name = "deconvnet"
    class_sensitive = False  # the same map for every class (Sixt et al. 2020; docs/methods.md)
    summary = "backward pass that rectifies the signal at every ReLU"
    reference = "Zeiler & Fergus 2014"
    rule = "deconvnet"


@register
class GuidedGradCAM(GradCAM):
    """Guided Grad-CAM: the Guided Backpropagation map times the Grad-CAM map upsampled to the input.

    Grad-CAM uses the ordinary gradient at the layer; Guided Backpropagation the guided rule.

    Shape:
        A ``(N, H, W)`` non-negative map at the input resolution.

    References:
        The Grad-CAM paper (Selvaraju et al., ICCV 2017; see
        :class:`~cnnlens.attribution.methods.cam.GradCAM`), which combines it with Guided
        Backpropagation (Springenberg et al., ICLR workshop 2015).
    """

    name = "guided_gradcam"
    family = "cam"
    summary = "guided backprop map times the upsampled Grad-CAM"
    reference = "Selvaraju et al. 2017"

    def _attribute_picking(self, inputs: torch.Tensor, picker: TargetPicker, batch_size: int) -> torch.Tensor:
        cam = super()._attribute_picking(inputs, picker, batch_size)
        cam = F.interpolate(cam[:, None], size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        guided = saliency_reduction(rule_gradient(self, "guided", inputs, picker, batch_size))
        return guided * cam
