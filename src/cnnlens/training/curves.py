"""The training-curve figure: loss and accuracy per epoch, training and validation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cnnlens.outputs import write_with


def plot_curves(
    history: list[dict[str, Any]], path: str | os.PathLike[str], best_epoch: int | None = None
) -> Path:
    """Draw loss (left) and accuracy (right) against the epoch and save a PNG.

    Args:
        history: :meth:`cnnlens.training.Trainer.fit`'s records.
        path: Where to write the PNG.
        best_epoch: Marked with a dashed line (the epoch of ``best.pt``).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5), layout="constrained")
    epochs = [r["epoch"] for r in history]
    for ax, key in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        for split, style in (("train", "o-"), ("val", "s--")):
            ax.plot(epochs, [r[f"{split}_{key}"] for r in history], style, label=split)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    target = Path(path)
    write_with(target, lambda f: fig.savefig(f, format="png", dpi=100))
    return target
