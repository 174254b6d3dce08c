"""Localisation: does the map point at the object, given its mask?"""

from __future__ import annotations

from abc import abstractmethod

import torch
from scipy import ndimage

from cnnlens.errors import InputError
from cnnlens.evaluation.faithfulness import pixel_ranks
from cnnlens.evaluation.metrics import (
    Metric,
    MetricResult,
    Sample,
    as_map,
    as_mask,
    nan_result,
    register_metric,
)
from cnnlens.validation import check_fraction


def pointing_game(attribution: torch.Tensor, mask: torch.Tensor, tolerance: float = 15.0) -> float:
    """Whether the map's maximum falls on the object, allowing ``tolerance`` pixels of slack.

    A maximum is a hit when some mask pixel lies within ``tolerance`` pixels (Euclidean) of it. When
    several pixels share the maximum the result is the share of them that hit, so a constant map gets
    the object's (dilated) area share, not a free hit.

    Args:
        attribution: ``(H, W)`` map.
        mask: ``(H, W)`` boolean object mask.
        tolerance: Slack in pixels of the map.

    Returns:
        1.0 for a hit, 0.0 for a miss (a share in between for tied maxima).

    References:
        Zhang et al. Top-down Neural Attention by Excitation Backprop. ECCV 2016 / IJCV 2018.
    """
    distance = ndimage.distance_transform_edt(~mask.numpy())
    hits = torch.from_numpy(distance <= tolerance)
    peak = attribution == attribution.max()
    return float(hits[peak].float().mean())


def energy_in_mask(attribution: torch.Tensor, mask: torch.Tensor) -> float:
    """Share of the positive attribution that lies inside the mask (NaN when none is positive).

    References:
        Wang et al. Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks.
        CVPR workshops 2020.
    """
    positive = attribution.clamp(min=0)
    total = float(positive.sum())
    return float(positive[mask].sum()) / total if total > 0 else float("nan")


def top_region(attribution: torch.Tensor, fraction: float) -> torch.Tensor:
    """The ``round(fraction * H * W)`` highest pixels of the map (ties in raster order), ``(H, W)`` bool."""
    return pixel_ranks(attribution) < round(fraction * attribution.numel())


def region_iou(region: torch.Tensor, mask: torch.Tensor) -> float:
    """Intersection over union of two boolean masks."""
    union = int((region | mask).sum())
    return int((region & mask).sum()) / union if union else 0.0


def soft_dice(probability: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> float:
    """Soft Dice of a probability map in [0, 1] against a mask: ``2 sum(p m) / (sum p + sum m)``.

    Used for maps that are themselves predictions of the mask (the SPN of a saliency-aware network);
    1 for a perfect prediction, 0 when nothing overlaps.
    """
    p, m = probability.float(), mask.float()
    return float((2 * (p * m).sum() + eps) / (p.sum() + m.sum() + eps))


def iou_at(probability: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> float:
    """IoU of the map thresholded at ``threshold`` with the mask (1 when both are empty)."""
    region, truth = probability >= threshold, mask.bool()
    union = int((region | truth).sum())
    return int((region & truth).sum()) / union if union else 1.0


class _MaskMetric(Metric):
    """A localisation metric: the map against the object mask (higher is better)."""

    category = "localisation"
    higher_is_better = True
    needs = ("mask",)

    def _evaluate(self, sample: Sample) -> MetricResult:
        a = as_map(sample.attribution)
        return self._score(a, as_mask(sample.mask, tuple(a.shape)))

    @abstractmethod
    def _score(self, attribution: torch.Tensor, mask: torch.Tensor) -> MetricResult:
        """The metric of an ``(H, W)`` map and the ``(H, W)`` boolean mask of the same size."""


@register_metric
class PointingGame(_MaskMetric):
    """Pointing game: is the map's maximum on the object (within ``tolerance`` pixels)?

    References:
        Zhang et al. Top-down Neural Attention by Excitation Backprop. IJCV 2018.
    """

    name = "pointing_game"
    summary = "1 if the map's maximum is on the object (15 px tolerance)"
    reference = "Zhang et al. 2018"

    def __init__(self, *, tolerance: float = 15.0):
        if not isinstance(tolerance, (int, float)) or tolerance < 0:
            raise InputError(f"tolerance must be a non-negative number of pixels, got {tolerance!r}")
        self.tolerance = float(tolerance)

    def _score(self, attribution: torch.Tensor, mask: torch.Tensor) -> MetricResult:
        return MetricResult(pointing_game(attribution, mask, self.tolerance))


@register_metric
class EnergyPointingGame(_MaskMetric):
    """Energy-based pointing game: the share of positive attribution inside the mask.

    Undefined (NaN) for a map with no positive value.

    References:
        Wang et al. Score-CAM. CVPR workshops 2020.
    """

    name = "energy_pointing"
    summary = "share of the positive attribution inside the object mask"
    reference = "Wang et al. 2020"

    def __init__(self) -> None:
        pass

    def _score(self, attribution: torch.Tensor, mask: torch.Tensor) -> MetricResult:
        value = energy_in_mask(attribution, mask)
        return nan_result("no positive attribution") if value != value else MetricResult(value)


@register_metric
class TopKIoU(_MaskMetric):
    """IoU of the map's top ``fraction`` of pixels with the object mask.

    References:
        Zhou et al. Learning Deep Features for Discriminative Localization. CVPR 2016 (thresholded-map
        localisation).
    """

    name = "topk_iou"
    summary = "IoU of the top-k% pixels with the object mask"
    reference = "Zhou et al. 2016"

    def __init__(self, *, fraction: float = 0.2):
        self.fraction = check_fraction("fraction", fraction)

    def _score(self, attribution: torch.Tensor, mask: torch.Tensor) -> MetricResult:
        return MetricResult(region_iou(top_region(attribution, self.fraction), mask))
