"""The dataset patches each unit of a layer responds to most (seed 003: "pick a unit; run many images
through the network; visualize patches that produce the highest output values").

Two passes. The first streams the whole dataset once for all units of the layer together, keeping per
unit only a running top-k of ``(peak value, image, position)`` (:class:`RunningTopK`): no activation is
kept, so 50,000 images need the memory of 500. The second reads only the winning images again and
finds each winner's patch from its input gradient (:func:`~cnnlens.probing.patches.unit_patches`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlens.attribution.core.base import ModelLike
from cnnlens.data.stream import Batch
from cnnlens.errors import InputError
from cnnlens.models.layers import resolve_layer
from cnnlens.probing.patches import PATCH_MASS, Patch, Unit, unit_patches
from cnnlens.probing.stream import Progress, RunningTopK, check_units, module_of, pass_batches, streaming
from cnnlens.validation import check_positive_int


@dataclass
class TopActivations:
    """The result of the first pass: per unit its ``k`` strongest images.

    Attributes:
        layer: The layer's dotted name (or what was given).
        units: The channels tracked (row ``r`` of :attr:`top` is channel ``units[r]``).
        top: The running top-k over the images streamed.
        map_size: ``(h, w)`` of the layer's feature map.
        images_seen: Images that went through the model.
        failed: ``(index, message)`` of the images that could not be read.
    """

    layer: str
    units: list[int]
    top: RunningTopK
    map_size: tuple[int, int]
    images_seen: int
    failed: list[tuple[int, str]] = field(default_factory=list)

    def winners(self, units: Sequence[int] | None = None) -> list[Unit]:
        """The winning ``(image, channel, row, col, value)`` of the given channels (default all)."""
        rows = {u: r for r, u in enumerate(self.units)}
        found = []
        for u in self.units if units is None else units:
            for value, image, pos in self.top.rows(rows[u]):
                i, j = divmod(pos, self.map_size[1])
                found.append(Unit(image, u, i, j, value))
        return found

    def strongest(self, count: int) -> list[int]:
        """The ``count`` channels with the largest top value."""
        order = torch.argsort(self.top.values[:, 0], descending=True, stable=True)[:count]
        return [self.units[int(r)] for r in order]


def top_activations(
    model: ModelLike,
    batches: Iterable[Batch],
    layer: str | nn.Module,
    *,
    units: Sequence[int] | None = None,
    k: int = 9,
    progress: Progress | None = None,
) -> TopActivations:
    """One pass over ``batches``: for each unit (channel) of ``layer``, the ``k`` images where its peak
    (largest value over the feature map) is highest, with the peak's position.

    Args:
        model: The classifier.
        batches: The dataset, e.g. :func:`~cnnlens.data.stream.stream_batches` or
            :func:`~cnnlens.probing.stream.batches_of`.
        layer: Dotted name or module of a layer with an ``(N, C, h, w)`` output.
        units: Channels to track (default all).
        k: Images kept per unit.
        progress: Called with the number of images of each batch.

    Raises:
        InputError: ``k < 1``, units out of range, a layer without a feature map, or no image read.
    """
    check_positive_int("k", k)
    name, _ = resolve_layer(module_of(model), layer)
    tracked: list[int] | None = None
    top: RunningTopK | None = None
    seen, failed, size = 0, [], (0, 0)
    with streaming(model, layer) as outputs:
        for batch in pass_batches(batches, progress):
            failed += batch.failed
            a = outputs(batch.inputs)
            if tracked is None or top is None:
                tracked = check_units(units, a.shape[1], name)
                top = RunningTopK(len(tracked), k)
                size = (int(a.shape[2]), int(a.shape[3]))
            peak = a[:, tracked].flatten(2).max(dim=2)
            top.update(peak.values, batch.indices, peak.indices)
            seen += len(batch)
    if tracked is None or top is None:
        raise InputError("no image could be read: nothing to probe")
    return TopActivations(name, tracked, top, size, seen, failed)


@dataclass(frozen=True)
class UnitPatches:
    """One unit's top patches: each :class:`Patch` (``image`` is the dataset index) and its crop."""

    channel: int
    patches: list[Patch]
    crops: list[np.ndarray]

    def to_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, "patches": [p.to_dict() for p in self.patches]}


def crop_patches(
    model: ModelLike,
    found: TopActivations,
    units: Sequence[int],
    fetch: Callable[[Sequence[int]], Iterable[Batch]],
    view: Callable[[torch.Tensor], np.ndarray],
    *,
    mass: float = PATCH_MASS,
    batch_size: int = 32,
) -> list[UnitPatches]:
    """The second pass: read only the winning images of ``units`` again and crop each winner's patch.

    Args:
        model: The classifier of the first pass.
        found: The first pass's result.
        units: Channels to crop (of ``found.units``).
        fetch: Batches of the dataset images at the given indices (e.g. ``stream_batches(...,
            order=indices)``).
        view: One preprocessed ``(C, H, W)`` image -> ``(H, W, 3)`` uint8 picture.
        mass: Share of the input gradient inside a patch (see :func:`channel_patches`).
        batch_size: Units per backward pass.
    """
    missing = [u for u in units if u not in found.units]
    if missing:
        raise InputError(f"units {missing} were not tracked in the pass (tracked: {found.units})")
    winners = found.winners(units)
    wanted = sorted({w.image for w in winners})
    patches: dict[tuple[int, int, int], Patch] = {}
    pictures: dict[tuple[int, int, int], np.ndarray] = {}
    for batch in fetch(wanted):
        here = {int(n): r for r, n in enumerate(batch.indices)}
        mine = [w for w in winners if w.image in here]
        local = [Unit(here[w.image], w.channel, w.row, w.col, w.value) for w in mine]
        for w, p in zip(
            mine, unit_patches(model, batch.inputs, found.layer, local, mass=mass, batch_size=batch_size)
        ):
            key = (w.image, w.channel, w.row * found.map_size[1] + w.col)
            patches[key] = Patch(p.channel, w.image, p.activation, p.position, p.box, p.field)
            left, top, right, bottom = p.box
            pictures[key] = view(batch.inputs[here[w.image]])[top:bottom, left:right]
    out = []
    for u in units:
        keys = [(w.image, w.channel, w.row * found.map_size[1] + w.col) for w in winners if w.channel == u]
        keys = [key for key in keys if key in patches]  # an image unreadable on the second pass drops out
        out.append(UnitPatches(u, [patches[key] for key in keys], [pictures[key] for key in keys]))
    return out
