"""How a network's attribution is spread over its feature blocks, image by image and over a data set.

Seed 000 computes SHAP values of every feature of every feature-extraction layer of a two-class
VGG19 classifier and sums them per layer ("visualise the SHAP values of a feature map block by
summing all maps in a block"). :func:`block_totals` does that for a batch of images with one
:class:`~cnnlens.attribution.methods.layer.LayerMethod` at every selected block, from one batched
pass: per image and block, the sum of the absolute unit attributions (``l1``) and their signed sum.

Why the absolute sum is the block's share. The blocks are not parallel features: each one is a
complete cut through the network, so for a complete method (layer Integrated Gradients, layer
GradientSHAP) the *signed* sum at every block equals the same number, ``f(x) - E f(baseline)``
(up to sampling and quadrature error). Signed sums therefore cannot tell blocks apart (each would get
``1 / B`` of the total); the signed totals are kept only as a completeness check. The absolute mass
``sum |phi_u|`` differs between blocks: it is the attribution a block's units carry before they
cancel out, ``>= |f(x) - E f(b)|``, with equality when all its units push the same way.
:func:`share_table` reports each block's share ``l1_b / sum_b' l1_b'`` per image, averaged per
class, with bootstrap confidence intervals over images (:func:`scipy.stats.bootstrap`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from cnnlens.attribution.core.base import ModelLike
from cnnlens.attribution.core.registry import create
from cnnlens.attribution.methods.layer import LayerMethod, LayerSelection, select_layers
from cnnlens.errors import InputError
from cnnlens.probing.common import probing
from cnnlens.validation import check_positive_int

#: Registered layer methods the study accepts (the SHAP family first: the default).
STUDY_METHODS = ("layer_gradshap", "layer_ig", "layer_gradxact")


def study_method(name: str, model: ModelLike, **params: Any) -> LayerMethod:
    """The registered layer method ``name`` (one of :data:`STUDY_METHODS`) on ``model``."""
    if name not in STUDY_METHODS:
        raise InputError(
            f"--method must be a layer attribution method ({', '.join(STUDY_METHODS)}), got {name!r}"
        )
    method = create(name, model, **params)
    if not isinstance(method, LayerMethod):  # pragma: no cover - the registry's names are layer methods
        raise InputError(f"{name} is not a layer attribution method")
    return method


@dataclass
class BlockTotals:
    """Per image and block: the absolute and the signed sum of the unit attributions.

    Attributes:
        blocks: Dotted block names, in the order the network runs them.
        units: Units (channels x positions) of each block.
        l1: ``(N, B)`` sum of ``|phi_u|`` over the units (channels x positions) of each block.
        signed: ``(N, B)`` sum of ``phi_u``.
        targets: ``(N,)`` the explained class of each image.
        logits: ``(N, K)`` the model's logits.
    """

    blocks: list[str]
    units: list[int]
    l1: np.ndarray
    signed: np.ndarray
    targets: np.ndarray
    logits: np.ndarray

    def shares(self) -> np.ndarray:
        """``(N, B)`` each block's share of the image's absolute attribution (rows sum to 1; NaN rows
        for an image with no attribution at all)."""
        total = self.l1.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, self.l1 / np.where(total > 0, total, 1.0), np.nan)


def block_totals(
    method: LayerMethod,
    inputs: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    layers: LayerSelection = None,
    batch_size: int = 32,
) -> BlockTotals:
    """Attribute each image's target score to every selected block and sum per block.

    Args:
        method: A layer method (:func:`study_method`); its model is held in eval mode with frozen
            parameters for the call and restored afterwards.
        inputs: ``(N, C, H, W)`` preprocessed images.
        target: ``(N,)`` class per image; ``None``: each image's top class.
        layers: The blocks (see :func:`~cnnlens.attribution.methods.layer.select_layers`; default: the
            stages of ResNet/EfficientNet-style networks, else every convolution, as in VGG).
        batch_size: Points per forward pass (GradientSHAP samples and IG steps are batched).
    """
    check_positive_int("batch_size", batch_size)
    with probing(method.model, inputs) as probe:
        x = probe.inputs
        chosen = select_layers(probe.module, layers)
        if target is not None and len(target) != len(x):
            raise InputError(f"{len(target)} targets for {len(x)} images")

        def choose(logits: torch.Tensor) -> torch.Tensor:
            return logits.argmax(1) if target is None else target.to(logits.device)

        attributions, targets, logits = method.attribute_layers(x, choose, chosen, batch_size)
    names = [n for n in attributions if n in chosen]  # the order the network ran them
    l1 = torch.stack([attributions[n].abs().flatten(1).sum(1) for n in names], dim=1)
    signed = torch.stack([attributions[n].flatten(1).sum(1) for n in names], dim=1)
    return BlockTotals(
        blocks=names,
        units=[int(np.prod(attributions[n].shape[1:])) for n in names],
        l1=l1.double().cpu().numpy(),
        signed=signed.double().cpu().numpy(),
        targets=targets.cpu().numpy().astype(np.int64),
        logits=logits.float().cpu().numpy(),
    )


def mean_ci(
    values: np.ndarray, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column means of ``values`` ``(n, B)`` and their percentile-bootstrap confidence bounds.

    NaN rows are dropped. One row: the bounds are NaN (no spread to resample). Constant columns give
    bounds equal to the mean.
    """
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be between 0 and 1, got {confidence}")
    check_positive_int("n_resamples", n_resamples)
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v).any(axis=1)]
    mean = v.mean(axis=0) if len(v) else np.full(v.shape[1], np.nan)
    if len(v) < 2:
        nan = np.full(v.shape[1], np.nan)
        return mean, nan, nan.copy()
    res = stats.bootstrap(
        (v,),
        np.mean,
        axis=0,
        vectorized=True,
        paired=False,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    low = np.minimum(np.asarray(res.confidence_interval.low), mean)
    high = np.maximum(np.asarray(res.confidence_interval.high), mean)
    return mean, low, high


def share_table(
    shares: np.ndarray,
    groups: np.ndarray,
    blocks: Sequence[str],
    group_names: Sequence[str],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per (group, block): images, mean share and its confidence bounds.

    Args:
        shares: ``(N, B)`` per-image shares (:meth:`BlockTotals.shares`).
        groups: ``(N,)`` group index per image (the explained class); ``-1`` rows are left out.
        blocks: Block names (``B``).
        group_names: Name of each group index.
        confidence: Level of the intervals.
        n_resamples: Bootstrap resamples.
        seed: Seeds the resampling (same data and seed: same bounds).
    """
    rows: list[dict[str, Any]] = []
    for g, name in enumerate(group_names):
        part = shares[groups == g]
        if not len(part):
            continue
        mean, low, high = mean_ci(part, confidence=confidence, n_resamples=n_resamples, seed=seed)
        for b, block in enumerate(blocks):
            rows.append(
                {
                    "class": name,
                    "block_index": b,
                    "block": block,
                    "images": len(part),
                    "share": float(mean[b]),
                    "ci_low": float(low[b]),
                    "ci_high": float(high[b]),
                }
            )
    return rows


__all__ = ["STUDY_METHODS", "BlockTotals", "block_totals", "mean_ci", "share_table", "study_method"]
