"""The first convolution's weights as pictures (seed 003: "visualize first-layer weights directly";
"conv1 is Gabor filters"), and the strongest channels' activation maps of one image.

Only the first layer's filters live in pixel space: a deeper layer's filter weighs the channels of the
layer below, so its raw weights are not an image (:func:`first_layer_filters` refuses them and points
to the tools that do show what a deeper unit responds to).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlens.attribution.core.base import ModelLike
from cnnlens.errors import InputError
from cnnlens.models.layers import resolve_layer
from cnnlens.probing.stream import module_of, streaming
from cnnlens.validation import check_positive_int

#: Why a deeper layer's weights are not shown.
NOT_IMAGES = (
    "raw weights of {name} are not images: they weigh the {cin} channels of the layer below, not "
    "pixels; see what its units respond to with `cnnlens probe patches` (top dataset patches) or "
    "`cnnlens probe visualize` (activation maximisation)"
)


def first_conv(module: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first ``nn.Conv2d`` of the model (in module order) and its name."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    raise InputError("the model has no Conv2d layer: no filters to show")


@dataclass(frozen=True)
class Filters:
    """A conv layer's filters as pictures.

    Attributes:
        layer: The layer's dotted name.
        weight: ``(O, C, kh, kw)`` the raw weights.
        images: ``(O, kh, kw, 3)`` each filter min-max scaled to [0, 1] on its own (grey filters of a
            one-channel input are repeated over RGB).
    """

    layer: str
    weight: torch.Tensor
    images: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        w = self.weight.double()
        norms = w.flatten(1).norm(dim=1)
        colour = w.abs().sum(dim=(2, 3))  # (O, C): weight mass per input channel
        return {
            "layer": self.layer,
            "shape": list(self.weight.shape),
            "l2_norm": norms.tolist(),
            "mean_abs": float(w.abs().mean()),
            # share of each filter's weight mass on its strongest input channel: 1/C for a grey filter
            "colour_share": (colour.max(dim=1).values / colour.sum(dim=1).clamp_min(1e-12)).tolist(),
        }


def first_layer_filters(model: ModelLike, layer: str | None = None) -> Filters:
    """The filters of the first convolution (or of ``layer``, which must take the image itself).

    Raises:
        InputError: ``layer`` is not a ``Conv2d`` taking 1 or 3 channels at the model's input
            (:data:`NOT_IMAGES`), or the model has no convolution.
    """
    module = module_of(model)
    first_name, first = first_conv(module)
    name, conv = (first_name, first) if layer is None else resolve_layer(module, layer)
    if not isinstance(conv, nn.Conv2d):
        raise InputError(f"{name} is a {type(conv).__name__}, not a Conv2d: no filters to show")
    if conv is not first or conv.in_channels not in (1, 3):
        raise InputError(NOT_IMAGES.format(name=name, cin=conv.in_channels))
    w = conv.weight.detach().float().cpu()
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    hi = w.amax(dim=(1, 2, 3), keepdim=True)
    scaled = (w - lo) / (hi - lo).clamp_min(1e-12)
    if scaled.shape[1] == 1:
        scaled = scaled.expand(-1, 3, -1, -1)
    return Filters(name, conv.weight.detach().cpu().clone(), scaled.permute(0, 2, 3, 1).numpy())


@dataclass(frozen=True)
class LayerActivations:
    """The strongest channels of one layer for one image.

    Attributes:
        layer: Dotted name.
        channels: The channel indices, by decreasing mean activation.
        means: Their mean activation over the feature map.
        maps: ``(k, h, w)`` their activation maps.
        shape: ``(C, h, w)`` of the layer's output.
    """

    layer: str
    channels: list[int]
    means: list[float]
    maps: np.ndarray
    shape: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "shape": list(self.shape),
            "channels": self.channels,
            "mean_activation": self.means,
            "max_activation": [float(m.max()) for m in self.maps],
        }


def strongest_activations(
    model: ModelLike, image: torch.Tensor, layers: list[str], *, top: int = 8
) -> list[LayerActivations]:
    """For one preprocessed image, each layer's ``top`` channels by mean activation and their maps.

    Args:
        model: The classifier.
        image: ``(1, C, H, W)`` or ``(C, H, W)`` preprocessed image.
        layers: Dotted names of layers with ``(N, C, h, w)`` outputs.
        top: Channels per layer (fewer if the layer has fewer).

    Raises:
        InputError: No layer given, ``top < 1``, or a layer without a feature map.
        UnknownNameError: An unknown layer (the closest names are suggested).
    """
    check_positive_int("top", top)
    if not layers:
        raise InputError("give at least one layer")
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if len(image) != 1:
        raise InputError(f"give one image, got a batch of {len(image)}")
    module = module_of(model)
    out = []
    for layer in layers:
        name, _ = resolve_layer(module, layer)
        with streaming(model, name) as outputs:
            a = outputs(image)[0]
        means = a.mean(dim=(1, 2))
        order = torch.argsort(means, descending=True, stable=True)[: min(top, len(means))]
        out.append(
            LayerActivations(
                name,
                order.tolist(),
                means[order].tolist(),
                a[order].numpy(),
                (int(a.shape[0]), int(a.shape[1]), int(a.shape[2])),
            )
        )
    return out
