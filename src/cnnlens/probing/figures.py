"""Figures of the layer atlas and of the top channels of a layer (matplotlib, no global state)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from cnnlens.viz.overlay import overlay

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from cnnlens.probing.atlas import LayerAtlas
    from cnnlens.probing.channels import ChannelShapley
    from cnnlens.probing.patches import Patch


def _grid(count: int, columns: int | None) -> tuple[int, int]:
    cols = columns or min(6, max(1, math.ceil(math.sqrt(count * 1.5))))
    return math.ceil(count / cols), cols


def _panels(
    view: Image.Image, maps: Sequence[np.ndarray], titles: Sequence[str], *, columns: int | None
) -> Figure:
    from matplotlib.figure import Figure

    rows, cols = _grid(len(maps) + 1, columns)
    fig = Figure(figsize=(2.4 * cols, 2.7 * rows))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.45 / rows, wspace=0.04, hspace=0.3)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    axes[0].imshow(view)
    axes[0].set_title(titles[0], fontsize=8)
    for ax, m, title in zip(axes[1:], maps, titles[1:]):
        ax.imshow(overlay(view, m, alpha=0.55))
        ax.set_title(title, fontsize=7)
    for ax in axes:
        ax.set_axis_off()
    return fig


def atlas_figure(atlas: LayerAtlas, view: Image.Image, *, columns: int | None = None) -> Figure:
    """All layers of the atlas in network order, each map over the image the model saw.

    Args:
        atlas: The layer atlas.
        view: The model-input view of the image (``Preprocessing.view``).
        columns: Panels per row (default: about square).

    Returns:
        A matplotlib ``Figure``; each panel's title is ``index. name`` and ``type C x h x w``, as in a
        model summary table.
    """
    titles = [f"input: {atlas.target_name} ({atlas.score:.2f})\n{atlas.method}"]
    titles += [
        f"{i}. {layer.name}\n{layer.kind} {' x '.join(map(str, layer.shape))}"
        for i, layer in enumerate(atlas.layers, 1)
    ]
    maps = [layer.upsampled.numpy() for layer in atlas.layers]
    return _panels(view, maps, titles, columns=columns)


def channels_figure(
    result: ChannelShapley,
    view: Image.Image,
    *,
    k: int = 6,
    patches: Mapping[int, Sequence[Patch]] | None = None,
    probes: Mapping[int, Sequence[Patch]] | None = None,
    probe_views: Sequence[Image.Image] = (),
    probe_names: Sequence[str] = (),
) -> Figure:
    """The ``k`` most positive and ``k`` most negative channels, one row each: what they respond to.

    Each row shows the channel's activation map over the image (titled with its Shapley value and
    standard error) with the receptive field of its peak outlined, that patch of the image, and the
    patches of the probe images where the channel fires most.

    Args:
        result: The channel Shapley values.
        view: The model-input view of the explained image (``Preprocessing.view``).
        k: Channels of each sign.
        patches: ``{channel: [patch]}`` in the explained image (:func:`channel_patches`).
        probes: ``{channel: [patches]}`` in the probe images, strongest first.
        probe_views: The model-input views of the probe images (``Patch.image`` indexes them).
        probe_names: A short name per probe image for the titles (default: ``#index``).

    Returns:
        A matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

    pos, neg = result.top(k)
    chosen = pos + neg
    here, found = patches or {}, probes or {}
    crops = {
        c: [(p, view, "peak here") for p in here.get(c, ())[:1]]
        + [(p, probe_views[p.image], _name(probe_names, p.image)) for p in found.get(c, ())]
        for c in chosen
    }
    rows, cols = max(1, len(chosen)), 1 + max((len(v) for v in crops.values()), default=0)
    height = 2.25 * rows + 0.6
    fig = Figure(figsize=(2.1 * max(cols, 2), height))
    fig.suptitle(
        f"{result.layer}: {result.target_name}, v(all) - v(none) = {result.full - result.empty:+.3g}",
        fontsize=9,
        y=1 - 0.12 / height,
    )
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.65 / height, hspace=0.35)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    if not chosen:
        axes[0, 0].imshow(view)
        axes[0, 0].set_title("no channel with a non-zero value", fontsize=7)
    for row, c in zip(axes, chosen):
        sign = "+" if c in pos else "-"
        title = f"{sign} ch {c}: {float(result.values[c]):+.3g} ± {float(result.stderr[c]):.2g}"
        row[0].imshow(overlay(view, result.activations[c].numpy(), alpha=0.55))
        row[0].set_title(title, fontsize=7)
        for p in here.get(c, ())[:1]:
            _outline(row[0], p.box)
        for ax, (p, image, name) in zip(row[1:], crops[c]):
            ax.imshow(image.crop(p.box))
            ax.set_title(f"{name}: {p.activation:.3g}", fontsize=7)
    return fig


def _name(names: Sequence[str], index: int) -> str:
    return names[index] if index < len(names) else f"#{index}"


def _outline(ax: Axes, box: tuple[int, int, int, int]) -> None:
    """Draw ``(left, top, right, bottom)`` (pixels, right and bottom exclusive) on an image axis."""
    from matplotlib.patches import Rectangle

    left, top, right, bottom = box
    ax.add_patch(
        Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, ec="white", lw=1.2)
    )
