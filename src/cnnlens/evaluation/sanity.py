"""Sanity check: does the map change when the model's parameters are randomised?

Cascading model-parameter randomisation re-initialises the layers from the top (the classifier) down,
recomputing the map after each stage on a **deep copy** of the model (the user's model is never
touched), and measures how similar the new maps are to the original one. A map that barely changes
does not depend on what the model learned, and fails.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from scipy import stats
from skimage.metrics import structural_similarity
from torch import nn

from cnnlens.errors import InputError
from cnnlens.evaluation.metrics import Column, MetricResult, Reexplain, ReexplainingMetric, register_metric
from cnnlens.validation import check_fraction, check_positive_int


def parameter_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules that own parameters directly, in registration (roughly forward) order."""
    return [(n, m) for n, m in module.named_modules() if any(True for _ in m.parameters(recurse=False))]


def cascade_stages(module: nn.Module, stages: int) -> list[list[str]]:
    """The layer names randomised at each stage: the layers top-down, split into ``stages`` groups."""
    names = [n for n, _ in reversed(parameter_layers(module))]
    if not names:
        raise InputError(f"{type(module).__name__} has no parameters to randomise")
    groups = np.array_split(np.asarray(names, dtype=object), min(stages, len(names)))
    return [[str(n) for n in g] for g in groups]


@torch.no_grad()
def randomise_layer(layer: nn.Module, generator: torch.Generator) -> None:
    """Replace the layer's own parameters by Gaussian noise of the same scale (in place)."""
    for p in layer.parameters(recurse=False):
        scale = float(p.std()) if p.numel() > 1 else float(p.abs().mean())
        noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        p.copy_(noise.to(p.device) * (scale if scale > 0 else 0.1))


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps; 1 for two equal constant maps, 0 if only one is constant."""
    fa, fb = a.flatten().numpy(), b.flatten().numpy()
    constant_a, constant_b = bool(np.ptp(fa) == 0), bool(np.ptp(fb) == 0)
    if constant_a or constant_b:
        return 1.0 if constant_a and constant_b and fa[0] == fb[0] else 0.0
    return float(stats.spearmanr(fa, fb).statistic)


def map_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM of two maps, each scaled to [0, 1] by its own minimum and maximum."""

    def scaled(m: torch.Tensor) -> np.ndarray:
        arr = m.numpy().astype(np.float64)
        span = float(np.ptp(arr))
        return (arr - arr.min()) / span if span > 0 else np.zeros_like(arr)

    side = min(a.shape)
    win = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(scaled(a), scaled(b), data_range=1.0, win_size=win))


@register_metric
class ModelRandomisation(ReexplainingMetric):
    """Cascading model-parameter randomisation (lower similarity is better).

    After each stage of randomisation (top layers first) the map is recomputed and compared with the
    original by two similarities: the Spearman rank correlation and the SSIM (each map scaled to
    [0, 1]). The value is the mean absolute Spearman correlation over the stages; the column
    ``randomisation_ssim`` (``extras["ssim_mean"]``) is the mean absolute SSIM. The map passes
    (``extras["passed"]``) when both are below their thresholds: a map whose ranks change but whose
    picture stays the same has not passed. The curve holds the Spearman correlation per stage,
    ``extras["ssim"]`` the SSIM per stage.

    References:
        Adebayo et al. Sanity Checks for Saliency Maps. NeurIPS 2018.
    """

    name = "randomisation"
    category = "sanity"
    higher_is_better = False
    summary = "rank correlation with maps of a top-down randomised model copy"
    reference = "Adebayo et al. 2018"
    columns = (
        Column(
            "randomisation_ssim",
            higher_is_better=False,
            summary="SSIM with maps of a top-down randomised model copy",
            extra="ssim_mean",
            curve="ssim",
        ),
    )

    def __init__(
        self, *, stages: int = 3, seed: int = 0, threshold: float = 0.5, ssim_threshold: float = 0.5
    ):
        self.stages = check_positive_int("stages", stages)
        self.seed = seed
        self.threshold = check_fraction("threshold", threshold)
        self.ssim_threshold = check_fraction("ssim_threshold", ssim_threshold)

    def _compare(
        self, a: torch.Tensor, x: torch.Tensor, model: nn.Module, explain: Reexplain
    ) -> MetricResult:
        model = copy.deepcopy(model)
        layers = dict(model.named_modules())
        generator = torch.Generator().manual_seed(self.seed)
        spearman: list[float] = []
        ssim: list[float] = []
        randomised: list[str] = []
        for stage in cascade_stages(model, self.stages):
            for name in stage:
                randomise_layer(layers[name], generator)
            randomised += stage
            b = explain(model, x)
            spearman.append(rank_correlation(a, b))
            ssim.append(map_ssim(a, b))
        value = float(np.mean(np.abs(spearman)))
        ssim_mean = float(np.mean(np.abs(ssim)))
        steps = [float(i + 1) for i in range(len(spearman))]
        extras = {
            "ssim": ssim,
            "ssim_mean": ssim_mean,
            "passed": value < self.threshold and ssim_mean < self.ssim_threshold,
            "last_layer": randomised[-1],
        }
        return MetricResult(value, curve=(steps, spearman), extras=extras)
