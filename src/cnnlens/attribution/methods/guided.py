"""Modified backpropagation through the rectifiers: Guided Backpropagation, Deconvnet, Guided Grad-CAM.

Each rule is a :class:`~cnnlens.attribution.engine.rules.Rule` on ``nn.ReLU`` and ``nn.ReLU6``, applied
by :func:`~cnnlens.attribution.engine.rules.hooked_rules` for the duration of a block: every call of a
rectifier (a module used several times is ruled on every call) has its output replaced by the same
values whose backward pass is the rule's. No module is swapped, no flag (``inplace``) changed, and
every hook is removed on exit, also after an error.

* Guided Backpropagation (:class:`Guided`): ``relu(g) * 1[unit passed]`` (``0 < x`` for ReLU,
  ``0 < x < 6`` for ReLU6), the rule of the paper.
* Deconvnet (:class:`DeconvnetRule`): ``relu(g)``, whatever the unit did in the forward pass.

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

import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.attribution.core.base import Attribution, TargetPicker
from cnnlens.attribution.core.registry import register
from cnnlens.attribution.engine.rules import Call, Grads, Rule, hooked_rules
from cnnlens.attribution.methods.cam import GradCAM
from cnnlens.attribution.methods.gradient import InputGradientMethod, input_gradient, saliency_reduction
from cnnlens.errors import InputError

RECTIFIERS = (nn.ReLU, nn.ReLU6)


class Guided(Rule):
    """Guided Backpropagation: only positive signals pass, and only where the unit passed its input."""

    kinds = RECTIFIERS

    def backward(self, grad: torch.Tensor, call: Call) -> Grads:
        x = call.inputs[0]
        passed = (x > 0) & (x < 6) if isinstance(call.op, nn.ReLU6) else x > 0
        return (torch.where(passed, grad.clamp(min=0), torch.zeros_like(grad)),)


class DeconvnetRule(Rule):
    """Deconvnet: the signal is rectified, the forward mask ignored."""

    kinds = RECTIFIERS

    def backward(self, grad: torch.Tensor, call: Call) -> Grads:
        return (grad.clamp(min=0),)


RULES: dict[str, Rule] = {"guided": Guided(), "deconvnet": DeconvnetRule()}


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
    with hooked_rules(model, (RULES[rule],)) as calls:
        yield calls


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
