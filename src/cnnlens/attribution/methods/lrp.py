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

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from zennit.attribution import Gradient
from zennit.canonizers import AttributeCanonizer, Canonizer, CompositeCanonizer, SequentialMergeBatchNorm
from zennit.composites import (
    Composite,
    EpsilonAlpha2Beta1,
    EpsilonGammaBox,
    EpsilonPlusFlat,
    LayerMapComposite,
)
from zennit.layer import Sum
from zennit.rules import Epsilon, Norm, Pass
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
from zennit.types import Activation, AvgPool, Convolution

from cnnlens.attribution.core.base import Attributed, ModelLike, OnePass, TargetPicker
from cnnlens.attribution.core.registry import register
from cnnlens.attribution.methods.gradient import pixel_bounds
from cnnlens.errors import InputError

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "alpha_beta", "epsilon")


class CheckedMergeBatchNorm(SequentialMergeBatchNorm):
    """zennit's merge of a batch norm into the linear layer registered right before it, only where the
    channels agree.

    zennit pairs modules by registration order, which is not always the forward order: DenseNet's
    final ``norm5`` (1024 channels, after a concatenation) follows a 32-channel convolution, and
    zennit's merge then fails half-way with the earlier merges applied and no handle to undo them.
    Here a pair whose channels differ is left alone, and merges made before any error are undone.
    """

    def register(self, linears: Any, batch_norm: nn.Module) -> None:
        """zennit's merge leaves the batch norm computing ``x / sqrt(1 + eps)``: negligible at
        torchvision's eps of 1e-5, but timm's TensorFlow ports use 1e-3, and over lite0's 49 batch
        norms the logits moved by 2e-3 of their range. The merged norm gets eps 0 (restored on remove),
        so it is exactly the identity."""
        super().register(linears, batch_norm)
        self.batch_norm_eps = float(getattr(batch_norm, "eps"))  # noqa: B009 (a batch norm's float)
        setattr(batch_norm, "eps", 0.0)  # noqa: B010

    def remove(self) -> None:
        super().remove()
        self.batch_norm.eps = self.batch_norm_eps

    def apply(self, root_module: nn.Module) -> list[Any]:
        instances: list[Any] = []
        last = None
        try:
            for leaf in units(root_module, self.batch_norm_type):
                width = getattr(last, "out_channels", getattr(last, "out_features", None))
                if (
                    isinstance(last, self.linear_type)
                    and isinstance(leaf, self.batch_norm_type)
                    and width == getattr(leaf, "num_features", None)
                ):
                    instance = self.copy()
                    instance.register((last,), leaf)
                    instances.append(instance)
                last = leaf
        except Exception:
            for instance in instances:
                instance.remove()
            raise
        return instances


def units(root: nn.Module, kinds: Any) -> Iterator[nn.Module]:
    """The leaves of ``root`` in registration order, except that a module of ``kinds`` counts as one
    unit with whatever it holds: timm's ``BatchNormAct2d`` is a batch norm with its activation as a
    child, which zennit's leaf walk would step into and so never merge."""
    for child in root.children():
        if isinstance(child, kinds) or not any(True for _ in child.children()):
            yield child
        else:
            yield from units(child, kinds)


def _timm_skip_blocks() -> tuple[type[nn.Module], ...]:
    try:
        from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
    except ImportError:  # another timm layout: those blocks keep the gradient's add
        return ()
    return (DepthwiseSeparableConv, InvertedResidual)


class TimmSkipCanonizer(AttributeCanonizer):
    """The residual add of timm's EfficientNet / MobileNet blocks (``InvertedResidual``,
    ``DepthwiseSeparableConv`` with ``has_skip``) made a zennit ``Sum``, which the composites give
    the ``Norm`` rule: relevance is split between the branch and the shortcut in proportion to their
    contributions, as zennit's ResNet canonizers do for torchvision's blocks. Without it the add passes
    the whole relevance to both inputs and it grows with every block. The block's own forward runs
    with the skip switched off (restored in ``finally``), so the canonizer does not copy timm's code.
    """

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module) -> dict[str, Any] | None:
        blocks = _timm_skip_blocks()
        if blocks and isinstance(module, blocks) and getattr(module, "has_skip", False):
            return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        self.has_skip = False
        try:
            branch = type(self).forward(self, x)
        finally:
            self.has_skip = True
        return self.canonizer_sum(torch.stack([x, self.drop_path(branch)], dim=-1))


def canonizers(module: nn.Module) -> list[Canonizer]:
    """Batch norms merged into the preceding convolution; for torchvision ResNets and timm's
    EfficientNet / MobileNet blocks also the residual add made a module the rules see (zennit's ResNet
    canonizers, :class:`TimmSkipCanonizer`)."""
    adds: list[Canonizer] = []
    if any(isinstance(m, (BasicBlock, Bottleneck)) for m in module.modules()):
        adds += [ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer()]
    blocks = _timm_skip_blocks()
    if blocks and any(isinstance(m, blocks) and getattr(m, "has_skip", False) for m in module.modules()):
        adds.append(TimmSkipCanonizer())
    if adds:
        return [CompositeCanonizer((CheckedMergeBatchNorm(), *adds))]
    return [CheckedMergeBatchNorm()]


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
        (Sum, Norm()),
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

    ``extras["relevance_sum"]`` is the total input relevance and ``extras["target_logit"]`` the output
    relevance it started from: a conservative composite keeps them equal, others say how far they are.

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
        maps, totals, outputs = [], [], []
        with torch.no_grad():
            plain = self.module(inputs[:1])
        with Gradient(model=self.module, composite=rules) as attributor, torch.enable_grad():
            with torch.no_grad():  # canonizing must not change the function
                merged = self.module(inputs[:1])
            if float((merged - plain).abs().max()) > 1e-3 * float(plain.abs().max()) + 1e-5:
                raise InputError(
                    f"LRP's canonizers changed the output of {type(self.module).__name__} (by up to "
                    f"{float((merged - plain).abs().max()):.3g}): a batch norm it merged does not follow "
                    "the layer it was merged into; use deeplift or integrated_gradients"
                )
            for start in range(0, len(inputs), batch_size):
                x = inputs[start : start + batch_size].detach().clone()

                def relevance(logits: torch.Tensor, start: int = start) -> torch.Tensor:
                    logits = logits.detach().float()
                    targets = picker.take(logits, start)
                    one_hot = torch.zeros_like(logits).scatter_(1, targets[:, None], 1.0)
                    outputs.append(logits.gather(1, targets[:, None])[:, 0].cpu())
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
        extras = {"relevance_sum": torch.cat(totals).float().cpu(), "target_logit": torch.cat(outputs)}
        return Attributed(torch.cat(maps), extras)
