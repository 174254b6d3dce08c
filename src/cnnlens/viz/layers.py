"""Figures of the layer atlas and of the top channels of a layer (matplotlib, no global state)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from cnnlens.viz.overlay import overlay

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cnnlens.attribution.atlas import LayerAtlas
    from cnnlens.attribution.channels import ChannelShapley


def _grid(count: int, columns: int | None) -> tuple[int, int]:
    cols = columns or min(6, max(1, math.ceil(math.sqrt(count * 1.5))))
    return math.ceil(count / cols), cols


def _panels(
    view: Image.Image, maps: Sequence[np.ndarray], titles: Sequence[str], *, signed: bool, columns: int | None
) -> Figure:
    from matplotlib.figure import Figure

    rows, cols = _grid(len(maps) + 1, columns)
    fig = Figure(figsize=(2.4 * cols, 2.7 * rows))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.45 / rows, wspace=0.04, hspace=0.3)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    axes[0].imshow(view)
    axes[0].set_title(titles[0], fontsize=8)
    for ax, m, title in zip(axes[1:], maps, titles[1:]):
        ax.imshow(overlay(view, m, signed=signed, alpha=0.55))
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
    return _panels(view, maps, titles, signed=atlas.signed, columns=columns)


def channels_figure(result: ChannelShapley, view: Image.Image, *, k: int = 6) -> Figure:
    """The ``k`` most positive and ``k`` most negative channels: their activation maps over the image.

    Each title gives the channel, its Shapley value and standard error.
    """
    pos, neg = result.top(k)
    chosen = pos + neg
    titles = [f"{result.layer}: {result.target_name}\nv(all)-v(none)={result.full - result.empty:+.3g}"]
    for c in chosen:
        sign = "+" if c in pos else "-"
        titles.append(f"{sign} ch {c}: {float(result.values[c]):+.3g} ± {float(result.stderr[c]):.2g}")
    maps = [result.activations[c].numpy() for c in chosen]
    return _panels(view, maps, titles, signed=False, columns=min(k + 1, 7))
