"""Faithfulness: does removing what the map calls important change the model's score?

Deletion removes pixels from the image in the order of the map (most important first) and records the
target score; insertion starts from a baseline image and puts the pixels back in the same order. The
area under the curve (AUC, trapezoidal, x in [0, 1]) summarises it: low for deletion, high for
insertion means a faithful map. All perturbed images are evaluated in batches under
``torch.inference_mode``; the model's train/eval state is restored afterwards.

References:
    Petsiuk, Das, Saenko. RISE: Randomized Input Sampling for Explanation of Black-box Models.
    BMVC 2018 (deletion and insertion).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from functools import partial, partialmethod

import numpy as np
import torch
from torchvision.transforms import functional as TF

from cnnlens.attribution.core.base import target_scores
from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import InputError
from cnnlens.evaluation.metrics import (
    Metric,
    MetricResult,
    Sample,
    as_input,
    as_map,
    register_metric,
    required,
)
from cnnlens.models.hooks import preserved_state
from cnnlens.validation import check_fraction, check_positive_int, check_score

BASELINES = ("blur", "black", "mean")
MODES = ("deletion", "insertion")


def pixel_ranks(attribution: torch.Tensor) -> torch.Tensor:
    """The rank of every pixel when sorted by decreasing attribution (0 = most important), ``(H, W)``.

    Ties keep raster order (a stable sort), so the ranking is deterministic.
    """
    flat = attribution.flatten()
    order = torch.sort(flat, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(flat.numel())
    return ranks.view(attribution.shape)


def baseline_image(
    inputs: torch.Tensor,
    kind: str,
    preprocessing: Preprocessing | None = None,
    blur_sigma: float = 5.0,
) -> torch.Tensor:
    """What removed pixels are replaced by, same shape as ``inputs`` ``(1, C, H, W)``.

    Args:
        inputs: The preprocessed image.
        kind: ``"blur"`` (Gaussian blur of the image), ``"black"`` (pixel value 0 before normalisation;
            0 in input units without ``preprocessing``) or ``"mean"`` (the image's per-channel mean).
        preprocessing: The model's normalisation.
        blur_sigma: Standard deviation of the blur in pixels.
    """
    if kind == "blur":
        kernel = 2 * math.ceil(2 * blur_sigma) + 1
        return TF.gaussian_blur(inputs, [kernel, kernel], [blur_sigma, blur_sigma])
    if kind == "black":
        if preprocessing is None:
            return torch.zeros_like(inputs)
        mean = torch.tensor(preprocessing.mean, dtype=inputs.dtype, device=inputs.device)
        std = torch.tensor(preprocessing.std, dtype=inputs.dtype, device=inputs.device)
        return (-mean / std).view(1, -1, 1, 1).expand_as(inputs).clone()
    if kind == "mean":
        return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs).clone()
    raise InputError(f"baseline must be one of {', '.join(BASELINES)}, got {kind!r}")


def perturbation_curve(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    target: int,
    ranks: torch.Tensor,
    baseline: torch.Tensor,
    fractions: list[float],
    *,
    mode: str = "deletion",
    score: str = "probability",
    batch_size: int = 16,
) -> list[float]:
    """Target scores after removing (deletion) or inserting (insertion) the top pixels.

    Args:
        model: The classifier.
        inputs: ``(1, C, H, W)`` image.
        target: Class index whose score is recorded.
        ranks: ``(H, W)`` pixel ranks (:func:`pixel_ranks`).
        baseline: ``(1, C, H, W)`` replacement image (:func:`baseline_image`).
        fractions: Shares of the pixels changed at each point, in [0, 1].
        mode: ``"deletion"`` (image -> baseline) or ``"insertion"`` (baseline -> image).
        score: ``"probability"`` (softmax) or ``"logit"``.
        batch_size: How many perturbed images one forward pass evaluates.

    Returns:
        One score per fraction.
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    start, end = (inputs, baseline) if mode == "deletion" else (baseline, inputs)
    device = next((p.device for p in model.parameters()), inputs.device)
    start, end, ranks = start.to(device), end.to(device), ranks.to(device)
    counts = torch.tensor([round(f * ranks.numel()) for f in fractions], device=device)
    scores: list[float] = []
    with preserved_state(model, freeze_parameters=False), torch.inference_mode():
        for chunk in counts.split(batch_size):
            changed = (ranks[None] < chunk.view(-1, 1, 1))[:, None]
            batch = torch.where(changed, end, start)
            t = torch.full((len(batch),), target, device=device)
            scores += target_scores(model(batch), t, score).tolist()
    return scores


def curve_auc(x: list[float] | np.ndarray, y: list[float] | np.ndarray) -> float:
    """Area under a curve by the trapezoidal rule.

    Raises:
        ValueError: Fewer than two points, different lengths or decreasing ``x``.
    """
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.ndim != 1 or xs.shape != ys.shape or len(xs) < 2:
        raise InputError(f"a curve needs two 1-D arrays of equal length >= 2, got {xs.shape} and {ys.shape}")
    if np.any(np.diff(xs) < 0):
        raise InputError("the x values of a curve must be non-decreasing")
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))


def _check_common(baseline: str, score: str, batch_size: int, blur_sigma: float) -> None:
    if baseline not in BASELINES:
        raise InputError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    check_score(score)
    check_positive_int("batch_size", batch_size)
    if not blur_sigma > 0:
        raise InputError(f"blur_sigma must be positive, got {blur_sigma!r}")


class _RemovalMetric(Metric):
    """A faithfulness metric: the target score as the map's top pixels are replaced by a baseline."""

    category = "faithfulness"
    needs = ("inputs", "model")
    baseline: str
    blur_sigma: float

    def _evaluate(self, sample: Sample) -> MetricResult:
        a = as_map(sample.attribution)
        x = as_input(sample.inputs, tuple(a.shape))
        base = baseline_image(x, self.baseline, sample.preprocessing, self.blur_sigma)
        model = required(sample.model, "model")
        return self._score(partial(perturbation_curve, model, x, sample.target, pixel_ranks(a), base))

    @abstractmethod
    def _score(self, curve: Callable[..., list[float]]) -> MetricResult:
        """The metric from ``curve(fractions, **options)``: :func:`perturbation_curve` of this sample."""


class _CurveMetric(_RemovalMetric):
    """Deletion or insertion (Petsiuk et al. 2018, see the module): the curve over ``steps + 1``
    points and its AUC."""

    reference = "Petsiuk et al. 2018"
    mode: str

    def __init__(
        self,
        *,
        steps: int = 10,
        baseline: str = "black",
        score: str = "probability",
        blur_sigma: float = 5.0,
        batch_size: int = 16,
    ):
        _check_common(baseline, score, batch_size, blur_sigma)
        self.steps = check_positive_int("steps", steps)
        self.baseline = baseline
        self.score = score
        self.blur_sigma = blur_sigma
        self.batch_size = batch_size

    def _score(self, curve: Callable[..., list[float]]) -> MetricResult:
        fractions = [k / self.steps for k in range(self.steps + 1)]
        ys = curve(fractions, mode=self.mode, score=self.score, batch_size=self.batch_size)
        return MetricResult(curve_auc(fractions, ys), curve=(fractions, ys))


@register_metric
class Deletion(_CurveMetric):
    """Deletion curve AUC: the score as the most important pixels are removed first (lower is better).

    Shape:
        ``Sample.attribution`` ``(H, W)``, ``Sample.inputs`` ``(1, C, H, W)``.
    """

    name = "deletion"
    higher_is_better = False
    summary = "AUC of the target score as top pixels are removed"
    mode = "deletion"


@register_metric
class Insertion(_CurveMetric):
    """Insertion curve AUC: the score as the most important pixels are put back first on a baseline
    (higher is better)."""

    name = "insertion"
    higher_is_better = True
    summary = "AUC of the target score as top pixels are inserted on a blurred image"
    mode = "insertion"
    #: Deletion's parameters; only the default baseline differs (the signature shows it).
    __init__ = partialmethod(_CurveMetric.__init__, baseline="blur")


@register_metric
class TopKDrop(_RemovalMetric):
    """Share of the target probability lost when the top ``fraction`` of pixels is removed.

    ``(p(x) - p(x with the top pixels replaced by the baseline)) / p(x)``; higher is better (the map
    found what the score depends on). Negative when removing the region raises the score.

    References:
        Samek et al. Evaluating the visualization of what a deep neural network has learned. IEEE TNNLS
        2017 (region perturbation).
    """

    name = "topk_drop"
    higher_is_better = True
    summary = "share of the probability lost when the top-k% pixels are removed"
    reference = "Samek et al. 2017"

    def __init__(self, *, fraction: float = 0.2, baseline: str = "black", blur_sigma: float = 5.0):
        _check_common(baseline, "probability", 1, blur_sigma)
        self.fraction = check_fraction("fraction", fraction)
        self.baseline = baseline
        self.blur_sigma = blur_sigma

    def _score(self, curve: Callable[..., list[float]]) -> MetricResult:
        full, removed = curve([0.0, self.fraction])
        return MetricResult((full - removed) / full, extras={"score": full, "score_removed": removed})
