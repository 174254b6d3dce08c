"""The numbers the table records for each map, and the per-class aggregates of a finished store."""

from __future__ import annotations

import math

import numpy as np
import torch

from cnnlens.evaluation.localisation import energy_in_mask

#: The per-map columns of the table, ``<method>_<name>``.
MAP_NUMBERS = ("entropy", "energy_in_mask", "max_abs")


def map_entropy(attribution: np.ndarray) -> float:
    """Shannon entropy of ``|map| / sum |map|`` divided by ``log(H * W)``: 1 for a flat map, 0 when
    one pixel holds everything (NaN for an all-zero map)."""
    a = np.abs(attribution.astype(np.float64)).ravel()
    total = a.sum()
    if not total > 0 or a.size < 2:
        return float("nan")
    p = a[a > 0] / total
    return float(-(p * np.log(p)).sum() / math.log(a.size))


def map_numbers(attribution: np.ndarray, mask: np.ndarray | None) -> dict[str, float]:
    """The :data:`MAP_NUMBERS` of one ``(H, W)`` map (``mask``: ``(H, W)`` bool, or ``None``)."""
    energy = float("nan")
    if mask is not None and mask.any():
        energy = energy_in_mask(torch.from_numpy(attribution.astype(np.float32)), torch.from_numpy(mask))
    return {
        "entropy": map_entropy(attribution),
        "energy_in_mask": energy,
        "max_abs": float(np.abs(attribution).max()),
    }
