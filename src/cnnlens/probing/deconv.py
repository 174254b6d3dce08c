"""Zeiler & Fergus's projection of one unit's strongest activation back to pixels.

The image runs forward; in the chosen layer's output every activation but the unit's largest one is
set to zero, and that single value is sent back to the input through the deconvnet: the
convolutions transposed (their gradient), max pooling through its switches (the locations that won
the forward pass, which is what the gradient of max pooling does), and at every rectifier the
signal itself rectified, whatever the unit did in the forward pass. The rule is the one the
attribution suite applies for its ``deconvnet`` method
(:func:`~cnnlens.attribution.methods.guided.backprop_rule`); here it starts from one unit of an
inner layer instead of a class score.

References:
    Zeiler, Fergus. Visualizing and Understanding Convolutional Networks. ECCV 2014.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cnnlens.attribution.core.base import ModelLike
from cnnlens.attribution.methods.guided import backprop_rule
from cnnlens.errors import InputError
from cnnlens.probing.common import probing
from cnnlens.probing.units import check_unit, layer_output

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Projection:
    """What :func:`deconv_projection` found for one image.

    Attributes:
        layer: The layer's dotted name.
        unit: The unit (channel).
        activation: Its largest value in the image.
        position: ``(row, column)`` of that value in the feature map.
        feature_size: ``(h, w)`` of the feature map.
        pixels: ``(C, H, W)`` the projection at the input (signed, in the input's units).
        box: ``(left, top, right, bottom)`` the pixels the projection reaches (right/bottom
            exclusive): the part of the unit's receptive field its signal arrives in.
    """

    layer: str
    unit: int
    activation: float
    position: tuple[int, int]
    feature_size: tuple[int, int]
    pixels: torch.Tensor
    box: Box

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (without the pixels)."""
        return {
            "layer": self.layer,
            "unit": self.unit,
            "activation": self.activation,
            "position": list(self.position),
            "feature_size": list(self.feature_size),
            "box": list(self.box),
        }


def deconv_projection(model: ModelLike, image: torch.Tensor, layer: str, unit: int) -> Projection:
    """Project ``unit``'s largest activation in ``image`` back to pixels with the deconvnet rule.

    Args:
        model: The classifier (its ReLU/ReLU6 modules carry the rule).
        image: ``(1, C, H, W)`` or ``(C, H, W)`` a preprocessed image.
        layer: Dotted name of a layer with a ``(N, K, h, w)`` output.
        unit: The unit (channel) of that layer.

    Raises:
        InputError: More than one image, an unknown layer, a unit out of range, a model without
            ReLU modules.
    """
    if image.dim() == 4 and image.shape[0] != 1:
        raise InputError(f"deconv projects one image at a time, got a batch of {image.shape[0]}")
    with probing(model, image) as probe:
        name, module = probe.layer(layer)
        x = probe.inputs.clone().requires_grad_(True)
        with backprop_rule(probe.module, "deconvnet"):
            out = layer_output(probe.module, name, module, x)
            fmap = out[0, check_unit(unit, int(out.shape[1]), name)]
            flat = int(fmap.argmax())
            row, col = divmod(flat, fmap.shape[1])
            (grad,) = torch.autograd.grad(fmap[row, col], x)
    pixels = grad[0].detach()
    return Projection(
        name,
        unit,
        float(fmap[row, col].detach()),
        (row, col),
        (int(fmap.shape[0]), int(fmap.shape[1])),
        pixels,
        support_box(pixels),
    )


def support_box(pixels: torch.Tensor, floor: float = 1e-3) -> Box:
    """The bounding box of the pixels whose magnitude (summed over channels) is above ``floor`` of the
    largest; the whole image when the projection is zero."""
    energy = pixels.abs().sum(0)
    h, w = energy.shape
    top = float(energy.max())
    if top <= 0:
        return (0, 0, w, h)
    rows = torch.nonzero((energy > floor * top).any(1)).flatten()
    cols = torch.nonzero((energy > floor * top).any(0)).flatten()
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
