"""The figure of a finished store: the mean map of each class (rows) for each method (columns)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from cnnlens.dataset_explain.store import MAPS
from cnnlens.outputs import write_with
from cnnlens.viz.overlay import choose_scale, colorize


def class_means_figure(store: str | Path, path: str | Path) -> Path:
    """Write a PNG grid of ``maps.zarr/class_mean/<method>`` (each map scaled on its own)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    group = zarr.open_group(str(Path(store) / MAPS), mode="r")
    means = group["class_mean"]
    names = [str(n) for n in means.attrs["class_names"]]  # type: ignore[union-attr]
    methods = [str(m) for m in group.attrs["methods"]]  # type: ignore[union-attr]
    counts: np.ndarray = np.asarray(means["count"][...])  # type: ignore[index,call-overload]
    fig, axes = plt.subplots(
        len(names), len(methods), figsize=(1.9 * len(methods) + 0.6, 1.9 * len(names) + 0.4), squeeze=False
    )
    shown: dict[str, list[np.ndarray | None]] = {}
    for method in methods:  # one colour scale per method, shared by its classes (compared side by side)
        column = [np.asarray(means[method][r]) for r in range(len(names))]  # type: ignore[index]
        shown[method] = [m if counts[r] and np.isfinite(m).all() else None for r, m in enumerate(column)]
    scales = {
        method: choose_scale(*[m for m in maps if m is not None])
        for method, maps in shown.items()
        if any(m is not None for m in maps)
    }
    for r, name in enumerate(names):
        for c, method in enumerate(methods):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            mean = shown[method][r]
            if mean is not None:
                ax.imshow(colorize(mean, scale=scales[method]))
            if r == 0:
                ax.set_title(method, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{name}\n(n={int(counts[r])})", fontsize=8)
    fig.tight_layout()
    try:
        return write_with(Path(path), lambda f: fig.savefig(f, format="png", dpi=90))
    finally:
        plt.close(fig)
