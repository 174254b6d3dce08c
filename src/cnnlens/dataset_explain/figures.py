"""The figure of a finished store: the mean map of each class (rows) for each method (columns)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def block_share_figure(rows: list[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """A PNG bar chart of each block's share per class (one bar per class and block, in network
    order), with the confidence interval of each mean as an error bar.

    ``rows`` are :func:`~cnnlens.probing.block_shares.share_table` rows (``class``, ``block_index``,
    ``block``, ``share``, ``ci_low``, ``ci_high``, ``images``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(dict.fromkeys(str(r["class"]) for r in rows))
    blocks = list(dict.fromkeys(str(r["block"]) for r in rows))
    at = {(str(r["class"]), str(r["block"])): r for r in rows}
    x = np.arange(len(blocks))
    width = 0.8 / max(1, len(classes))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(blocks) * max(1, len(classes)) ** 0.5 + 2), 3.6))
    for k, name in enumerate(classes):
        got = [at.get((name, b)) for b in blocks]
        mean = np.array([r["share"] if r else np.nan for r in got], dtype=float)
        low = np.array([r["ci_low"] if r else np.nan for r in got], dtype=float)
        high = np.array([r["ci_high"] if r else np.nan for r in got], dtype=float)
        err = np.nan_to_num(np.stack([mean - low, high - mean]), nan=0.0)
        n = next((r["images"] for r in got if r), 0)
        ax.bar(
            x + (k - (len(classes) - 1) / 2) * width,
            mean,
            width,
            yerr=err,
            capsize=2,
            label=f"{name} (n={n})",
        )
    ax.set_xticks(x)
    ax.set_xticklabels(blocks, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("share of |attribution|")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    try:
        return write_with(Path(path), lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
