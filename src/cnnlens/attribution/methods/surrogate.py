"""Surrogate methods: switch superpixels on and off, fit a simple model of the score to the switches.

Both methods cut each image into superpixels (scikit-image SLIC or quickshift, or a plain grid),
evaluate the network on images where some superpixels are replaced by a baseline fill, and fit a
linear model of the target score on the on/off indicators. The map paints every superpixel with its
coefficient. Perturbed images are built ``batch_size`` at a time from the indicator rows, so memory
does not grow with ``n_samples``; the sampling uses a local generator seeded with ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
import torchvision.transforms.functional as TF
from skimage.segmentation import quickshift, slic
from sklearn.linear_model import Ridge

from cnnlens.attribution.core.base import Attributed, Attribution, ModelLike
from cnnlens.attribution.core.registry import register
from cnnlens.errors import InputError
from cnnlens.validation import check_int, check_real, check_score

SEGMENTATIONS = ("slic", "quickshift", "grid")
FILLS = ("mean", "blur", "zero")


def _unit_range(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` normalised image as an ``(H, W, C)`` float array rescaled to ``[0, 1]``."""
    arr = image.detach().float().permute(1, 2, 0).cpu().numpy().astype(np.float64)
    low, high = arr.min(), arr.max()
    return (arr - low) / (high - low) if high > low else np.zeros_like(arr)


def superpixels(image: torch.Tensor, segmentation: str = "slic", n_segments: int = 50) -> torch.Tensor:
    """Superpixel labels ``0..d-1`` of one ``(C, H, W)`` image: ``(H, W)`` long tensor.

    ``"slic"`` (compactness 10) and ``"quickshift"`` (LIME's settings: kernel size 4, max distance
    200, ratio 0.2; RGB only) run on the image rescaled to ``[0, 1]``; ``"grid"`` cuts it into about
    ``n_segments`` squares.
    """
    height, width = image.shape[-2:]
    if segmentation == "grid":
        side = max(1, round(math.sqrt(height * width / n_segments)))
        rows = torch.arange(height) // side
        cols = torch.arange(width) // side
        labels = rows[:, None] * (int(cols.max()) + 1) + cols[None, :]
    else:
        arr = _unit_range(image)
        if segmentation == "slic":
            channel_axis = -1 if arr.shape[-1] > 1 else None
            raw = slic(
                arr if channel_axis else arr[..., 0],
                n_segments=n_segments,
                compactness=10.0,
                start_label=0,
                channel_axis=channel_axis,
            )
        else:
            if arr.shape[-1] != 3:
                raise InputError(f"quickshift needs RGB images, got {arr.shape[-1]} channels; use slic")
            raw = quickshift(arr, kernel_size=4, max_dist=200, ratio=0.2)
        labels = torch.from_numpy(np.asarray(raw, dtype=np.int64))
    return torch.unique(labels, return_inverse=True)[1].to(image.device)


def fill_image(image: torch.Tensor, segments: torch.Tensor, fill: str) -> torch.Tensor:
    """What hidden superpixels show: ``"mean"`` (each superpixel's mean colour, as in LIME),
    ``"blur"`` (Gaussian blur, sigma 5% of the image side) or ``"zero"`` (0, the dataset mean colour
    of normalised inputs). ``(C, H, W)``."""
    if fill == "zero":
        return torch.zeros_like(image)
    if fill == "blur":
        sigma = max(0.05 * max(image.shape[-2:]), 0.5)
        size = min(2 * math.ceil(3 * sigma) + 1, 2 * (min(image.shape[-2:]) // 2) - 1)
        return TF.gaussian_blur(image[None], kernel_size=max(size, 1), sigma=sigma)[0]
    flat = segments.flatten()
    count = torch.bincount(flat).clamp(min=1).to(image.dtype)
    sums = torch.zeros(image.shape[0], len(count), dtype=image.dtype, device=image.device)
    sums.index_add_(1, flat, image.flatten(1))
    return (sums / count)[:, segments]


@dataclass
class Problem:
    """One image's surrogate fit: its superpixels, the generator of its samples, and the target score
    of any on/off switches ``z`` (``(n, superpixels)``, 1 shows a superpixel, 0 fills it): ``(n,)``."""

    segments: torch.Tensor
    generator: torch.Generator
    scores: Callable[[torch.Tensor], np.ndarray]

    @property
    def superpixels(self) -> int:
        return int(self.segments.max()) + 1


class SuperpixelSurrogate(Attribution):
    """Shared machinery of LIME and KernelSHAP (not registered itself)."""

    family = "surrogate"
    signed = True
    bf16_faithful = False

    def __init__(
        self,
        model: ModelLike,
        *,
        n_samples: int = 1000,
        segmentation: str = "slic",
        n_segments: int = 50,
        fill: str = "mean",
        score: str = "probability",
        seed: int = 0,
        batch_size: int | str | None = None,
        **settings: str,
    ):
        super().__init__(model, batch_size=batch_size, **settings)
        if check_int("n_samples", n_samples) < 2:
            raise InputError(f"n_samples must be at least 2, got {n_samples}")
        if segmentation not in SEGMENTATIONS:
            raise InputError(f"segmentation must be one of {', '.join(SEGMENTATIONS)}, got {segmentation!r}")
        if check_int("n_segments", n_segments) < 1:
            raise InputError(f"n_segments must be positive, got {n_segments}")
        if fill not in FILLS:
            raise InputError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")
        self.n_samples = int(n_samples)
        self.segmentation = segmentation
        self.n_segments = int(n_segments)
        self.fill = fill
        self.score = check_score(score)
        self.seed = check_int("seed", seed)

    def _batches(
        self, image: torch.Tensor, base: torch.Tensor, segments: torch.Tensor, z: torch.Tensor, size: int
    ) -> Iterator[torch.Tensor]:
        for chunk in z.split(size):
            mask = chunk.to(image.device, image.dtype)[:, segments][:, None]
            yield base + (image - base) * mask

    def evaluate(
        self, image: torch.Tensor, target: int, segments: torch.Tensor, batch_size: int, z: torch.Tensor
    ) -> np.ndarray:
        """Target score with superpixel ``j`` shown where ``z[i, j]`` is 1, filled where 0: ``(n,)``."""
        base = fill_image(image, segments, self.fill)
        batches = self._batches(image, base, segments, z, batch_size)
        return self.passes.scores(batches, target, self.score).double().cpu().numpy()

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> Attributed:
        maps, extras = [], []
        for image, t in zip(inputs, targets.tolist()):
            segments = superpixels(image, self.segmentation, self.n_segments)
            generator = torch.Generator().manual_seed(self.seed)
            scores = partial(self.evaluate, image, t, segments, batch_size)
            values, info = self.fit(Problem(segments, generator, scores))
            maps.append(values.to(image.device, torch.float32)[segments])
            extras.append({"segments": segments.cpu(), **info})
        merged: dict[str, Any] = {k: [e[k] for e in extras] for k in extras[0]}
        merged["segments"] = torch.stack(merged["segments"])
        return Attributed(torch.stack(maps), merged)

    def fit(self, problem: Problem) -> tuple[torch.Tensor, dict[str, Any]]:
        """One value per superpixel of ``problem``, and the method's extras for this image."""
        raise NotImplementedError


@register
class LIME(SuperpixelSurrogate):
    """LIME on superpixels: a locally weighted ridge regression of the score on superpixel switches.

    ``n_samples`` on/off vectors are drawn uniformly (the first keeps every superpixel), weighted
    by the exponential kernel ``sqrt(exp(-d^2 / kernel_width^2))`` of their cosine distance ``d`` to
    the all-on vector, and a scikit-learn ``Ridge(alpha)`` is fitted with those sample weights (LIME's
    image defaults: kernel width 0.25, alpha 1).

    Shape:
        A ``(N, H, W)`` signed map: each pixel carries its superpixel's ridge coefficient.
        ``extras``: ``segments`` ``(N, H, W)``, ``weights`` (one ``(d,)`` tensor per image),
        ``intercept``, ``r2`` (weighted fit score) and ``top_mask`` (the ``top_k`` superpixels with the
        largest positive weights, ``(H, W)`` bool per image, as in the LIME figure).

    References:
        Ribeiro, Singh, Guestrin. "Why Should I Trust You?": Explaining the Predictions of Any
        Classifier. KDD 2016.
    """

    name = "lime"
    quick_params: ClassVar[dict[str, Any]] = {"n_samples": 256}
    summary = "weighted ridge fit of the score on superpixel on/off switches"
    reference = "Ribeiro et al. 2016"
    bf16_faithful = True  # measured: docs/decisions.md, "Precision"

    def __init__(
        self,
        model: ModelLike,
        *,
        kernel_width: float = 0.25,
        alpha: float = 1.0,
        top_k: int = 5,
        **params: Any,
    ):
        super().__init__(model, **params)  # the superpixel settings, batch size and runner settings
        width, ridge_alpha, k = (
            check_real("kernel_width", kernel_width),
            check_real("alpha", alpha),
            check_int("top_k", top_k),
        )
        if width <= 0 or ridge_alpha < 0 or k < 1:
            raise InputError(
                f"need kernel_width > 0, alpha >= 0 and top_k >= 1, got {kernel_width}, {alpha}, {top_k}"
            )
        self.kernel_width = width
        self.alpha = ridge_alpha
        self.top_k = k

    def fit(self, problem: Problem) -> tuple[torch.Tensor, dict[str, Any]]:
        d, segments = problem.superpixels, problem.segments
        z = torch.randint(0, 2, (self.n_samples, d), generator=problem.generator)
        z[0] = 1
        y = problem.scores(z)
        zf = z.double().numpy()
        cosine = zf.sum(1) / np.maximum(np.sqrt(zf.sum(1)) * math.sqrt(d), 1e-12)
        weights = np.sqrt(np.exp(-((1.0 - cosine) ** 2) / self.kernel_width**2))
        ridge = Ridge(alpha=self.alpha, fit_intercept=True).fit(zf, y, sample_weight=weights)
        coef = torch.from_numpy(np.asarray(ridge.coef_, dtype=np.float64))
        top = [j for j in np.argsort(-ridge.coef_)[: self.top_k] if ridge.coef_[j] > 0]
        info = {
            "weights": coef.float(),
            "intercept": float(ridge.intercept_),
            "r2": float(ridge.score(zf, y, sample_weight=weights)),
            "top_mask": torch.isin(segments.cpu(), torch.tensor(top, dtype=torch.long)),
        }
        return coef, info


def shapley_kernel(d: int, sizes: np.ndarray) -> np.ndarray:
    """Shapley kernel weight ``(d - 1) / (C(d, s) s (d - s))`` of coalitions of each size ``s``."""
    comb = np.array([math.comb(d, int(s)) for s in sizes], dtype=np.float64)
    return (d - 1) / (comb * sizes * (d - sizes))


def coalitions(d: int, n_samples: int, generator: torch.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """Coalitions (``(n, d)`` 0/1) and their regression weights for KernelSHAP.

    With ``2^d - 2 <= n_samples`` every coalition but the empty and the full one is listed, weighted
    by the Shapley kernel (the regression is then exact). Otherwise ``n_samples // 2`` coalitions
    are sampled with sizes drawn from the kernel's distribution over sizes, each paired with its
    complement (antithetic sampling), all with equal weight.
    """
    if 2**d - 2 <= n_samples:
        codes = torch.arange(1, 2**d - 1)
        rows = (codes[:, None] >> torch.arange(d)) & 1
        return rows, shapley_kernel(d, rows.sum(1).numpy().astype(np.float64))
    sizes = np.arange(1, d, dtype=np.float64)
    p = torch.from_numpy((d - 1) / (sizes * (d - sizes)))
    half = max(n_samples // 2, 1)
    drawn = torch.multinomial(p / p.sum(), half, replacement=True, generator=generator) + 1
    order = torch.rand(half, d, generator=generator).argsort(1)
    rows = (order < drawn[:, None]).long()
    rows = torch.cat([rows, 1 - rows])
    return rows, np.ones(len(rows))


def constrained_least_squares(z: np.ndarray, y: np.ndarray, weights: np.ndarray, total: float) -> np.ndarray:
    """Minimise ``sum_i w_i (y_i - z_i . phi)^2`` subject to ``sum(phi) == total`` (exactly).

    The constraint is eliminated by writing the last value as ``total`` minus the others.
    """
    d = z.shape[1]
    if d == 1:
        return np.array([total])
    a = z[:, :-1] - z[:, -1:]
    b = y - z[:, -1] * total
    root = np.sqrt(weights)
    head = np.linalg.lstsq(a * root[:, None], b * root, rcond=None)[0]
    return np.append(head, total - head.sum())


@register
class KernelSHAP(SuperpixelSurrogate):
    """KernelSHAP on superpixels: Shapley values from a Shapley-kernel weighted regression.

    The regression is constrained so the values add up exactly to ``f(x) - f(baseline)``, where the
    baseline hides every superpixel (``fill``). Coalitions are enumerated when ``2^d - 2 <=
    n_samples`` (exact Shapley values), else sampled in complementary pairs
    (:func:`coalitions`). Costs ``n_samples + 2`` evaluations at most.

    Shape:
        A ``(N, H, W)`` signed map: each pixel carries its superpixel's Shapley value. ``extras``:
        ``segments``, ``values`` (one ``(d,)`` tensor per image), ``fx``, ``f_baseline`` and
        ``sum_gap`` (``sum(values) - (fx - f_baseline)``, zero up to rounding).

    References:
        Lundberg, Lee. A Unified Approach to Interpreting Model Predictions. NeurIPS 2017.
    """

    name = "kernelshap"
    quick_params: ClassVar[dict[str, Any]] = {"n_samples": 256}
    summary = "Shapley values of superpixels by Shapley-kernel regression"
    reference = "Lundberg & Lee 2017"
    bf16_faithful = True  # measured: docs/decisions.md, "Precision"

    def fit(self, problem: Problem) -> tuple[torch.Tensor, dict[str, Any]]:
        d = problem.superpixels
        rows, weights = coalitions(d, self.n_samples, problem.generator)
        ends = torch.stack([torch.ones(d, dtype=torch.long), torch.zeros(d, dtype=torch.long)])
        y = problem.scores(torch.cat([ends, rows]))
        fx, fb = float(y[0]), float(y[1])
        values = constrained_least_squares(rows.double().numpy(), y[2:] - fb, weights, fx - fb)
        info = {
            "values": torch.from_numpy(values).float(),
            "fx": fx,
            "f_baseline": fb,
            "sum_gap": float(values.sum() - (fx - fb)),
        }
        return torch.from_numpy(values), info
