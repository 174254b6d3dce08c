"""Faithfulness: does removing what the map calls important change the model's score?

Deletion removes pixels from the image in the order of the map (most important first) and records the
target score; insertion starts from a baseline image and puts the pixels back in the same order. The
area under the curve (AUC, trapezoidal, x in [0, 1]) summarises it: low for deletion, high for
insertion means a faithful map. All perturbed images are evaluated in batches through a
:class:`~cnnlens.evaluation.passes.ScoreQueue` (float32, the pass runner), which the benchmark shares
between images, methods and metrics; the model's train/eval state is restored afterwards.

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
from cnnlens.evaluation.passes import ScoreQueue, check_queue_model
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

    One image's curve; the benchmark queues many images' curves in one
    :class:`~cnnlens.evaluation.passes.ScoreQueue` (the same images, the same passes).

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
    queue = ScoreQueue(model, batch_size=batch_size)
    rows = queue_curve(queue, inputs, ranks, baseline, fractions, mode)
    queue.run()
    return queue.scores(rows, target, score)


def queue_curve(
    queue: ScoreQueue,
    inputs: torch.Tensor,
    ranks: torch.Tensor,
    baseline: torch.Tensor,
    fractions: list[float],
    mode: str,
) -> list[int]:
    """Queue the images of :func:`perturbation_curve` (one per fraction); their row indices."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    start, end = (inputs, baseline) if mode == "deletion" else (baseline, inputs)
    return [queue.blend(start, end, ranks, round(f * ranks.numel())) for f in fractions]


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
    """A faithfulness metric: the target score as the map's top pixels are replaced by a baseline.

    Its passes can be queued with other samples' (:meth:`queue`); called on one sample it runs a queue
    of its own.
    """

    category = "faithfulness"
    needs = ("inputs", "model")
    baseline: str
    blur_sigma: float
    #: Perturbed images per forward pass when the metric runs its own queue (deletion and insertion
    #: take it as a parameter).
    batch_size: int = 16

    def _evaluate(self, sample: Sample) -> MetricResult:
        queue = ScoreQueue(required(sample.model, "model"), batch_size=self.batch_size)
        done = self.queue(sample, queue)
        queue.run()
        return done()

    def queue(self, sample: Sample, queue: ScoreQueue) -> Callable[[], MetricResult]:
        """Queue this sample's images on ``queue`` (whose model must be the sample's); returns what
        computes the result once ``queue`` has run."""
        self.check_needs(sample)
        check_queue_model(queue, required(sample.model, "model"))
        inputs = required(sample.inputs, "inputs")
        a = as_map(sample.attribution)
        x = queue.shared(inputs, as_input(inputs, tuple(a.shape)))
        ranks = queue.ranks(sample.attribution, lambda: pixel_ranks(a))
        base = queue.baseline(
            inputs,
            self.baseline,
            sample.preprocessing,
            self.blur_sigma,
            lambda: baseline_image(x, self.baseline, sample.preprocessing, self.blur_sigma),
        )
        curve = partial(queue_curve, queue, x, ranks, base)
        return self._queue(curve, partial(queue.scores, target=sample.target))

    @abstractmethod
    def _queue(
        self, curve: Callable[[list[float], str], list[int]], scores: Callable[..., list[float]]
    ) -> Callable[[], MetricResult]:
        """Queue the rows with ``curve(fractions, mode)`` (:func:`queue_curve` of this sample) and
        return what computes the metric from ``scores(rows, kind=...)`` once the queue has run."""


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

    def _queue(
        self, curve: Callable[[list[float], str], list[int]], scores: Callable[..., list[float]]
    ) -> Callable[[], MetricResult]:
        fractions = [k / self.steps for k in range(self.steps + 1)]
        rows = curve(fractions, self.mode)

        def done() -> MetricResult:
            ys = scores(rows, kind=self.score)
            return MetricResult(curve_auc(fractions, ys), curve=(fractions, ys))

        return done


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

    def _queue(
        self, curve: Callable[[list[float], str], list[int]], scores: Callable[..., list[float]]
    ) -> Callable[[], MetricResult]:
        rows = curve([0.0, self.fraction], "deletion")

        def done() -> MetricResult:
            full, removed = scores(rows, kind="probability")
            return MetricResult((full - removed) / full, extras={"score": full, "score_removed": removed})

        return done
