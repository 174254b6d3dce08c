"""Figures of an evaluation: the confusion matrix and a gallery of the worst misclassified images."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from cnnlens.data.images import load_image

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cnnlens.evaluation.classification import Evaluation


def confusion_figure(confusion: np.ndarray, class_names: list[str]) -> Figure:
    """The confusion matrix (rows: true class, columns: predicted), counts written in each cell.

    Shape:
        ``confusion``: ``(K, K)``.
    """
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    k = len(class_names)
    side = min(3 + 0.5 * k, 16)
    fig = Figure(figsize=(side, side), layout="constrained")
    ax = fig.subplots()
    ConfusionMatrixDisplay(confusion, display_labels=class_names).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45 if k > 4 else "horizontal"
    )
    ax.set_title("confusion matrix (rows: true)")
    return fig


def error_gallery(result: Evaluation, indices: list[int], columns: int = 4) -> Figure:
    """The images at ``indices`` as the model saw them, titled true -> predicted (confidence)."""
    from matplotlib.figure import Figure

    rows = max(1, math.ceil(len(indices) / columns))
    fig = Figure(figsize=(2.6 * columns, 2.9 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    names, pre = result.model.class_names, result.model.preprocessing
    for ax in axes:
        ax.axis("off")
    if not indices:
        axes[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    for ax, i in zip(axes, indices):
        p = int(result.predictions[i])
        ax.imshow(pre.view(load_image(result.samples[i].path)))
        ax.set_title(
            f"{names[int(result.labels[i])]} -> {names[p]}\n({result.probabilities[i, p]:.2f})", fontsize=9
        )
    return fig
