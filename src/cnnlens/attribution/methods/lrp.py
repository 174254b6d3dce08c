"""Layer-wise Relevance Propagation through zennit's composites, under the cnnlens contract.

zennit (Anders et al.) is the field's LRP library: its ``Composite`` maps module kinds to rules and its
canonizers make a model rule-ready (batch norm merged into the preceding convolution, the residual
add of a torchvision ResNet block made a module the rules can see). Both are applied for the duration
of one ``explain`` call only and undone on exit, also after an error (zennit's ``with`` blocks); the
model's parameters are restored bit for bit (checked by the contract and zoo tests).

Composites (``composite=``):

* ``"epsilon_plus_flat"``: flat rule on the first layer, z+ on the other convolutions, epsilon on
  linear layers (the recommended default of Kohlbrenner et al. 2020);
* ``"epsilon_gamma_box"``: z^B (box) rule on the first layer with the pixel range of the model's
  preprocessing, gamma on the other convolutions, epsilon on linear layers (Montavon et al. 2019);
* ``"alpha_beta"``: alpha2-beta1 on convolutions, epsilon on linear layers;
* ``"epsilon"``: the epsilon rule everywhere (LRP-0 as ``epsilon -> 0``: then relevance equals
  gradient x input, and on a bias-free ReLU network it sums to the output exactly).

The output relevance is the target's logit, so conservative rules give relevance maps that sum to it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from zennit.attribution import Gradient
from zennit.canonizers import Canonizer, SequentialMergeBatchNorm
from zennit.composites import (
    Composite,
    EpsilonAlpha2Beta1,
    EpsilonGammaBox,
    EpsilonPlusFlat,
    LayerMapComposite,
)
from zennit.rules import Epsilon, Norm, Pass
from zennit.torchvision import ResNetCanonizer
from zennit.types import Activation, AvgPool, Convolution

from cnnlens.attribution.core.base import Attributed, ModelLike, OnePass, TargetPicker
from cnnlens.attribution.core.registry import register
from cnnlens.attribution.methods.gradient import pixel_bounds
from cnnlens.errors import InputError

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "alpha_beta", "epsilon")


def canonizers(module: nn.Module) -> list[Canonizer]:
    """ResNet's canonizer (batch norm merged, residual add split) for torchvision ResNets, else the
    generic merge of every batch norm that follows a convolution in a ``Sequential``."""
    if any(isinstance(m, (BasicBlock, Bottleneck)) for m in module.modules()):
        return [ResNetCanonizer()]
    return [SequentialMergeBatchNorm()]


def composite(
    name: str, module: nn.Module, inputs: torch.Tensor, model: ModelLike, epsilon: float, gamma: float
) -> Composite:
    """The zennit composite ``name``, with the canonizers ``module`` needs."""
    canons = canonizers(module)
    if name == "epsilon_plus_flat":
        return EpsilonPlusFlat(epsilon=epsilon, canonizers=canons)
    if name == "epsilon_gamma_box":
        low, high = pixel_bounds(model, inputs)
        return EpsilonGammaBox(low=low, high=high, epsilon=epsilon, gamma=gamma, canonizers=canons)
    if name == "alpha_beta":
        return EpsilonAlpha2Beta1(epsilon=epsilon, canonizers=canons)
    layer_map: list[tuple[Any, Any]] = [
        (Activation, Pass()),
        (AvgPool, Norm()),
        (Convolution, Epsilon(epsilon=epsilon)),
        (nn.Linear, Epsilon(epsilon=epsilon)),
    ]
    return LayerMapComposite(layer_map=layer_map, canonizers=canons)


@register
class LRP(OnePass):
    """Layer-wise Relevance Propagation with a zennit composite and the canonizers the model needs.

    Args:
        composite: ``"epsilon_plus_flat"``, ``"epsilon_gamma_box"``, ``"alpha_beta"`` or ``"epsilon"``.
        epsilon: Stabiliser of the epsilon rule.
        gamma: Weight of the positive parameters in the gamma rule (``epsilon_gamma_box``).

    Shape:
        A ``(N, H, W)`` signed map: input relevance summed over the channels.

    References:
        Bach, Binder, Montavon, Klauschen, Müller, Samek. On Pixel-Wise Explanations for Non-Linear
        Classifier Decisions by Layer-Wise Relevance Propagation. PLoS ONE 2015. Anders, Neumann,
        Samek, Müller, Lapuschkin. Software for Dataset-wide XAI: From Local Explanations to Global
        Insights with Zennit, CoRelAy, and ViRelAy. arXiv:2106.13200, 2021.
    """

    name = "lrp"
    family = "gradient"
    summary = "relevance propagated by LRP rules (zennit composites, batch norm merged, residuals split)"
    reference = "Bach et al. 2015"
    needs_gradients = True
    signed = True
    explains_functions = False  # the output relevance is one class's logit

    def __init__(
        self,
        model: ModelLike,
        *,
        composite: str = "epsilon_plus_flat",
        epsilon: float = 1e-6,
        gamma: float = 0.25,
        batch_size: int | None = None,
    ):
        super().__init__(model, batch_size=batch_size)
        if composite not in COMPOSITES:
            raise InputError(f"composite must be one of {', '.join(COMPOSITES)}, got {composite!r}")
        if not epsilon >= 0:
            raise InputError(f"epsilon must be >= 0, got {epsilon}")
        if not gamma >= 0:
            raise InputError(f"gamma must be >= 0, got {gamma}")
        self.composite = composite
        self.epsilon = epsilon
        self.gamma = gamma

    def _attribute_picking(self, inputs: torch.Tensor, picker: TargetPicker, batch_size: int) -> Attributed:
        rules = composite(self.composite, self.module, inputs, self.model, self.epsilon, self.gamma)
        maps, totals = [], []
        with Gradient(model=self.module, composite=rules) as attributor, torch.enable_grad():
            for start in range(0, len(inputs), batch_size):
                x = inputs[start : start + batch_size].detach().clone()

                def relevance(logits: torch.Tensor, start: int = start) -> torch.Tensor:
                    logits = logits.detach().float()
                    targets = picker.take(logits, start)
                    one_hot = torch.zeros_like(logits).scatter_(1, targets[:, None], 1.0)
                    return one_hot * logits  # the output relevance: the target's logit

                _, rel = attributor(x, relevance)
                if not bool(torch.isfinite(rel).all()):
                    raise InputError(
                        f"LRP ({self.composite}) gave non-finite relevance on {type(self.module).__name__}: "
                        "zennit's rules cover convolutions, linear layers and pooling, not its other "
                        "layers (attention, layer norm?); use deeplift or integrated_gradients"
                    )
                maps.append(rel.sum(dim=1))
                totals.append(rel.double().sum(dim=(1, 2, 3)))
        return Attributed(torch.cat(maps), {"relevance_sum": torch.cat(totals).float().cpu()})
