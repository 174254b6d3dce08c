"""Figures of network dissection, feature visualisation and deconvnet projections (matplotlib's
object API, no global state)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cnnlens.probing.deconv import Projection
    from cnnlens.probing.dissection import Dissection
    from cnnlens.probing.visualization import Visualization

#: Bar colours of the concept kinds in the dissection histogram.
KIND_COLOURS = {"shape": "tab:blue", "colour": "tab:red", "texture": "tab:green", "object": "tab:purple"}


def dissection_figure(result: Dissection) -> Figure:
    """Left: detector units per concept (seed 003's histogram), coloured by the concept's kind.
    Right: every unit's best IoU, sorted, with the detector threshold."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.22, top=0.9, wspace=0.28)
    hist_ax, iou_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
    counts = result.histogram()
    kinds = result.kinds or {}
    names = list(counts)
    hist_ax.bar(
        range(len(names)),
        list(counts.values()),
        color=[KIND_COLOURS.get(kinds.get(n, ""), "tab:gray") for n in names],
    )
    hist_ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    hist_ax.set_ylabel("detector units")
    shown = sorted({kinds.get(n, "") for n in names} - {""})
    if shown:
        from matplotlib.patches import Patch

        handles = [Patch(color=KIND_COLOURS.get(k, "tab:gray"), label=k) for k in shown]
        hist_ax.legend(handles=handles, fontsize=8)
    hist_ax.set_title(f"{result.layer}: {result.summary()}", fontsize=10)
    if not names:
        hist_ax.text(0.5, 0.5, "no detector unit", ha="center", va="center", transform=hist_ax.transAxes)
    best = result.best_iou.sort(descending=True).values.numpy()
    iou_ax.plot(np.arange(len(best)), best, color="black", lw=1.2)
    iou_ax.axhline(result.min_iou, color="tab:red", ls="--", lw=1, label=f"IoU = {result.min_iou:g}")
    iou_ax.set_xlabel("units, by best IoU")
    iou_ax.set_ylabel("best IoU")
    iou_ax.set_title(f"top quantile {result.quantile:g}, {result.images} images", fontsize=10)
    iou_ax.legend(fontsize=8)
    return fig


def _rgb(image: torch.Tensor) -> np.ndarray:
    arr = image.detach().cpu().clamp(0, 1).numpy()
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def visualization_figure(results: Sequence[Visualization]) -> Figure:
    """One column per result: the optimised image over its objective curve."""
    from matplotlib.figure import Figure

    cols = len(results)
    fig = Figure(figsize=(2.6 * cols, 5.0))
    fig.subplots_adjust(left=0.2 / cols + 0.02, right=0.98, bottom=0.08, top=0.93, wspace=0.35, hspace=0.35)
    axes = fig.subplots(2, cols, squeeze=False, gridspec_kw={"height_ratios": [1.5, 1]})
    for k, r in enumerate(results):
        img = _rgb(r.image)
        axes[0, k].imshow(img, cmap="gray" if img.ndim == 2 else None)
        axes[0, k].set_title(r.objective, fontsize=8)
        axes[0, k].set_axis_off()
        axes[1, k].plot(r.curve, color="tab:blue", lw=1)
        axes[1, k].set_xlabel("step", fontsize=8)
        axes[1, k].tick_params(labelsize=7)
    axes[1, 0].set_ylabel("objective", fontsize=8)
    return fig


def projection_image(pixels: torch.Tensor) -> np.ndarray:
    """A signed projection ``(C, H, W)`` shown as Zeiler & Fergus do: 0 is grey, the largest
    magnitude is black or full intensity (``(H, W, 3)`` or ``(H, W)`` in [0, 1])."""
    scale = float(pixels.abs().max()) or 1.0
    return _rgb(0.5 + 0.5 * pixels / scale)


def deconv_figure(view: Image.Image, projection: Projection) -> Figure:
    """The image with the unit's peak location, the projection, and the image patch the projection
    reaches next to the projection's own patch."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(10, 2.9))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.84, wspace=0.06)
    axes = fig.subplots(1, 4)
    left, top, right, bottom = projection.box
    arr = np.asarray(view)
    shown = projection_image(projection.pixels)
    h, w = arr.shape[:2]
    fh, fw = projection.feature_size
    row, col = projection.position
    cy, cx = (row + 0.5) * h / fh, (col + 0.5) * w / fw
    axes[0].imshow(arr, cmap="gray" if arr.ndim == 2 else None)
    axes[0].add_patch(
        Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, ec="yellow", lw=1.2)
    )
    axes[0].plot([cx], [cy], marker="+", color="red", ms=10, mew=2)
    axes[0].set_title("image, peak and projected field", fontsize=8)
    axes[1].imshow(shown, cmap="gray" if shown.ndim == 2 else None)
    axes[1].set_title(f"{projection.layer} unit {projection.unit} projected", fontsize=8)
    axes[2].imshow(arr[top:bottom, left:right], cmap="gray" if arr.ndim == 2 else None)
    axes[2].set_title(f"image patch {right - left}x{bottom - top}", fontsize=8)
    axes[3].imshow(shown[top:bottom, left:right], cmap="gray" if shown.ndim == 2 else None)
    axes[3].set_title("projection patch", fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(f"activation {projection.activation:.3g} at ({row}, {col}) of the {fh}x{fw} map", fontsize=9)
    return fig
