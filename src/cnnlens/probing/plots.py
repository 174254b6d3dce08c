"""Figures of the probing tools: filters, activation maps, top patches, neighbours, 2-D feature maps
(matplotlib ``Figure`` objects, no global state)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cnnlens.probing.filters import Filters, LayerActivations
    from cnnlens.probing.top_patches import UnitPatches


def _figure(rows: int, cols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * cols, height * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    return fig, axes


def filters_figure(filters: Filters, *, columns: int | None = None) -> Figure:
    """Every filter of the layer as a small picture (each scaled to [0, 1] on its own)."""
    count = len(filters.images)
    cols = columns or min(16, max(1, math.ceil(math.sqrt(count))))
    rows = math.ceil(count / cols)
    fig, axes = _figure(rows, cols, 0.8, 0.8)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.35 / rows, wspace=0.08, hspace=0.08)
    for ax, img in zip(axes.ravel(), filters.images):
        ax.imshow(img, interpolation="nearest")
    shape = " x ".join(map(str, filters.weight.shape))
    fig.suptitle(f"{filters.layer} filters ({shape})", fontsize=9)
    return fig


def activations_figure(view: np.ndarray, layers: Sequence[LayerActivations]) -> Figure:
    """One row per layer: the image, then its strongest channels' activation maps."""
    cols = 1 + max(len(la.channels) for la in layers)
    fig, axes = _figure(len(layers), cols, 1.6, 1.8)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.93, wspace=0.05, hspace=0.35)
    for row, la in zip(axes, layers):
        row[0].imshow(view)
        row[0].set_title(f"{la.layer}\n{' x '.join(map(str, la.shape))}", fontsize=7)
        for ax, c, mean, m in zip(row[1:], la.channels, la.means, la.maps):
            ax.imshow(m, cmap="viridis", interpolation="nearest")
            ax.set_title(f"ch {c}  mean {mean:.2g}", fontsize=7)
    return fig


def patches_figure(units: Sequence[UnitPatches], layer: str) -> Figure:
    """One row per unit: its top patches, strongest first, with their peak activations."""
    cols = max(1, max((len(u.crops) for u in units), default=1))
    fig, axes = _figure(max(1, len(units)), cols, 1.0, 1.15)
    fig.subplots_adjust(
        left=0.06, right=0.99, bottom=0.01, top=1 - 0.5 / max(1, len(units)), wspace=0.06, hspace=0.3
    )
    for row, u in zip(axes, units):
        row[0].text(
            -0.25,
            0.5,
            f"ch {u.channel}",
            rotation=90,
            va="center",
            ha="right",
            transform=row[0].transAxes,
            fontsize=8,
        )
        for ax, p, crop in zip(row, u.patches, u.crops):
            ax.imshow(crop, interpolation="nearest")
            ax.set_title(f"{p.activation:.3g}", fontsize=6)
    fig.suptitle(f"top dataset patches of {layer}", fontsize=9)
    return fig


def neighbours_figure(
    query: np.ndarray,
    rows: Sequence[tuple[str, Sequence[tuple[np.ndarray, str]]]],
) -> Figure:
    """One row per space (its title, then pictures with captions, nearest first), each after the query."""
    cols = 1 + max(len(pics) for _, pics in rows)
    fig, axes = _figure(len(rows), cols, 1.4, 1.6)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.05, hspace=0.45)
    for row, (title, pics) in zip(axes, rows):
        row[0].imshow(query)
        row[0].set_title(f"query\n{title}", fontsize=7)
        for ax, (pic, caption) in zip(row[1:], pics):
            ax.imshow(pic)
            ax.set_title(caption, fontsize=6)
    return fig


def embedding_figure(coords: np.ndarray, labels: np.ndarray, names: Sequence[str], title: str) -> Figure:
    """The 2-D map, one colour per class, with a legend."""
    from matplotlib import colormaps

    fig, axes = _figure(1, 1, 6.5, 5.5)
    ax = axes[0][0]
    classes = sorted({int(c) for c in labels})
    cmap = colormaps["tab20" if len(classes) > 10 else "tab10"]
    for i, c in enumerate(classes):
        sel = labels == c
        name = names[c] if 0 <= c < len(names) else "unlabelled"
        ax.scatter(coords[sel, 0], coords[sel, 1], s=6, color=cmap(i % cmap.N), label=name, linewidths=0)
    if len(classes) <= 20:
        ax.legend(fontsize=7, markerscale=2, loc="best", frameon=False)
    ax.set_title(title, fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.93)
    return fig
