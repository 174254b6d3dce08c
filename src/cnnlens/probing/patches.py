"""What a channel responds to: the image patches where it fires most, cropped to the unit's receptive
field (the part of the input its gradient reaches)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import torch
from torch import nn

from cnnlens.attribution.core.base import ModelLike
from cnnlens.attribution.engine.runner import PassRunner, feature_map
from cnnlens.errors import InputError
from cnnlens.models.hooks import capture_outputs
from cnnlens.probing.common import probing
from cnnlens.validation import check_positive_int

log = logging.getLogger(__name__)

#: Share of a unit's input-gradient mass its patch holds (:func:`channel_patches`).
PATCH_MASS = 0.8

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Patch:
    """Where one channel fires most in one image, and the input pixels that unit sees.

    Boxes are ``(left, top, right, bottom)`` in model-input pixels, right and bottom exclusive (PIL's
    ``Image.crop`` convention), clipped to the image.

    Attributes:
        channel: The channel.
        image: Index of the image in the batch it was found in.
        activation: The channel's largest value in that image.
        position: ``(row, column)`` of that value in the layer's feature map.
        box: The patch: the square around the centroid of the unit's input-gradient magnitude that
            holds the requested share of it (its effective receptive field on this image).
        field: The unit's whole receptive field: the bounding box of the pixels with a non-zero
            gradient (at deep layers often the whole image).
    """

    channel: int
    image: int
    activation: float
    position: tuple[int, int]
    box: Box
    field: Box

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "image": self.image,
            "activation": self.activation,
            "position": list(self.position),
            "box": list(self.box),
            "field": list(self.field),
        }


def channel_patches(
    model: ModelLike,
    images: torch.Tensor,
    layer: str | nn.Module,
    channels: list[int],
    *,
    per_channel: int = 1,
    mass: float = PATCH_MASS,
    batch_size: int = 32,
) -> dict[int, list[Patch]]:
    """For each channel, the ``per_channel`` images where it fires most, with the patch around its peak.

    The peak is the largest value of the channel's feature map in an image. One backward pass from
    that unit to the input gives the pixels its value depends on: their bounding box is the unit's
    receptive field (:attr:`Patch.field`), and the square around the centroid of the gradient
    magnitude that holds ``mass`` of it is the patch (:attr:`Patch.box`; ``mass=1`` covers every
    pixel with a non-zero gradient). Units are batched: each copy of an image in a batch
    back-propagates from its own unit.

    Args:
        model: The classifier.
        images: ``(N, C, H, W)`` preprocessed images (the explained image, or a set of probe images).
        layer: Dotted name or module of the layer whose channels these are.
        channels: Channel indices.
        per_channel: Images kept per channel, by decreasing peak activation (at most ``N``).
        mass: Share of the unit's input-gradient magnitude inside its patch, in ``(0, 1]``.
        batch_size: Images per forward pass.

    Returns:
        ``{channel: [Patch, ...]}``, strongest first.

    Raises:
        ValueError: A channel out of range, ``per_channel`` or ``batch_size`` below 1, ``mass``
            outside ``(0, 1]``, or a layer without a ``(N, C, h, w)`` output.

    References:
        Luo, Li, Urtasun, Zemel. Understanding the Effective Receptive Field in Deep Convolutional
        Neural Networks. NeurIPS 2016.
    """
    check_positive_int("per_channel", per_channel)
    check_positive_int("batch_size", batch_size)
    if not 0 < mass <= 1:
        raise InputError(f"mass is a share of the gradient in (0, 1], got {mass}")
    with probing(model, images) as probe:
        module, x = probe.module, probe.inputs
        name, target = probe.layer(layer)
        peaks, where, width = _peaks(module, name, target, x, channels, batch_size)
        units = []
        for k, c in enumerate(channels):
            for n in torch.topk(peaks[:, k], min(per_channel, len(x))).indices.tolist():
                i, j = divmod(int(where[n, k]), width)
                units.append(Unit(n, c, i, j, float(peaks[n, k])))
        found = _locate(module, name, target, x, units, mass, batch_size)
    out: dict[int, list[Patch]] = {c: [] for c in channels}
    for patch in found:
        out[patch.channel].append(patch)
    return out


@dataclass(frozen=True)
class Unit:
    """One unit of a layer in one image: image index, channel, feature-map row and column, its value."""

    image: int
    channel: int
    row: int
    col: int
    value: float


def unit_patches(
    model: ModelLike,
    images: torch.Tensor,
    layer: str | nn.Module,
    units: list[Unit],
    *,
    mass: float = PATCH_MASS,
    batch_size: int = 32,
) -> list[Patch]:
    """The patch and receptive field of each given unit (see :func:`channel_patches`): one backward
    pass from each unit to its image, batched.

    Args:
        model: The classifier.
        images: ``(N, C, H, W)`` preprocessed images; :attr:`Unit.image` indexes them.
        layer: Dotted name or module of the units' layer.
        units: The units, e.g. the winners of a pass over a dataset.
        mass: Share of the unit's input-gradient magnitude inside its patch, in ``(0, 1]``.
        batch_size: Units per backward pass.

    Returns:
        One :class:`Patch` per unit, in order.
    """
    check_positive_int("batch_size", batch_size)
    if not 0 < mass <= 1:
        raise InputError(f"mass is a share of the gradient in (0, 1], got {mass}")
    with probing(model, images) as probe:
        name, target = probe.layer(layer)
        return _locate(probe.module, name, target, probe.inputs, units, mass, batch_size)


def _locate(
    module: nn.Module,
    name: str,
    target: nn.Module,
    x: torch.Tensor,
    units: list[Unit],
    mass: float,
    batch_size: int,
) -> list[Patch]:
    gradients = _unit_gradients(module, name, target, x, units, batch_size)
    found = []
    for u, (grad, fmap) in zip(units, gradients):
        field = _support_box(grad) or _cell((u.row, u.col), fmap, grad.shape)
        box = _intersection(_mass_box(grad, mass) or field, field)
        found.append(Patch(u.channel, u.image, u.value, (u.row, u.col), box, field))
    return found


def _peaks(
    module: nn.Module, name: str, layer: nn.Module, x: torch.Tensor, channels: list[int], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per image and channel the largest value and its flat position ``(N, K)``, and the map width."""
    values, where, width = [], [], 0
    with torch.inference_mode():
        for chunk in x.split(batch_size):
            with capture_outputs({name: layer}) as store:
                module(chunk)
            out = feature_map(store, name, "channel patches")
            bad = [c for c in channels if not 0 <= c < out.shape[1]]
            if bad:
                raise InputError(f"channels {bad} are not in layer {name!r}, which has {out.shape[1]}")
            peak = out[:, channels].flatten(2).float().max(dim=2)
            values.append(peak.values.cpu())
            where.append(peak.indices.cpu())
            width = out.shape[-1]
    return torch.cat(values), torch.cat(where), width


def _unit_gradients(
    module: nn.Module,
    name: str,
    layer: nn.Module,
    x: torch.Tensor,
    units: list[Unit],
    batch_size: int,
) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    """Each unit's ``(H, W)`` input-gradient magnitude (summed over colours) and the map's ``(h, w)``."""
    runner = PassRunner(module, x.device)
    found: list[tuple[torch.Tensor, tuple[int, int]]] = []
    for start in range(0, len(units), batch_size):
        chunk = units[start : start + batch_size]
        n, c, i, j = (
            torch.tensor([getattr(u, f) for u in chunk]) for f in ("image", "channel", "row", "col")
        )
        unit = partial(_unit_value, name, c, i, j)
        passes = runner.gradient_passes(
            x[n.to(x.device)], unit, len(chunk), layers={name: layer}, purpose="channel patches"
        )
        for p in passes:
            fmap = (int(p.activations[name].shape[-2]), int(p.activations[name].shape[-1]))
            found += [(g, fmap) for g in cast(torch.Tensor, p.input_grad).abs().sum(dim=1).double().cpu()]
    return found


def _unit_value(
    name: str,
    c: torch.Tensor,
    i: torch.Tensor,
    j: torch.Tensor,
    _logits: torch.Tensor,
    store: dict[str, torch.Tensor],
    _start: int,
) -> torch.Tensor:
    """The activation of unit ``(c, i, j)`` of layer ``name`` for each input of the pass."""
    return store[name][torch.arange(len(c)), c, i, j]


def _support_box(grad: torch.Tensor) -> Box | None:
    """The bounding box of the non-zero pixels of ``grad`` (``None`` if all are zero)."""
    rows = torch.nonzero(grad.any(dim=1)).flatten()
    cols = torch.nonzero(grad.any(dim=0)).flatten()
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _mass_box(grad: torch.Tensor, mass: float) -> Box | None:
    """The smallest square around the centroid of ``grad`` holding ``mass`` of it, clipped."""
    h, w = grad.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=grad.dtype), torch.arange(w, dtype=grad.dtype), indexing="ij"
    )
    total = grad.sum()
    if total <= 0:
        return None
    cy, cx = float((grad * ys).sum() / total), float((grad * xs).sum() / total)
    reach = torch.maximum((ys - cy).abs(), (xs - cx).abs()).flatten()
    order = torch.argsort(reach, stable=True)
    held = torch.cumsum(grad.flatten()[order], dim=0)
    k = min(int(torch.searchsorted(held, mass * held[-1])), len(held) - 1)
    r = float(reach[order[k]]) + 1e-6
    top, bottom = max(0, math.ceil(cy - r)), min(h, math.floor(cy + r) + 1)
    left, right = max(0, math.ceil(cx - r)), min(w, math.floor(cx + r) + 1)
    return left, top, right, bottom


def _intersection(a: Box, b: Box) -> Box:
    return max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])


def _cell(position: tuple[int, int], fmap: tuple[int, int], size: torch.Size) -> Box:
    """The input pixels under one feature-map cell (for a unit with no input gradient: a dead ReLU)."""
    (r, q), (fh, fw), (h, w) = position, fmap, size
    top, left = r * h // fh, q * w // fw
    return left, top, max(left + 1, (q + 1) * w // fw), max(top + 1, (r + 1) * h // fh)
