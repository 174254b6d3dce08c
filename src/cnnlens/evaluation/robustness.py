"""Robustness: how much does the map move under small input noise?"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens.errors import InputError
from cnnlens.evaluation.metrics import MetricResult, Reexplain, ReexplainingMetric, register_metric
from cnnlens.validation import check_positive_int


@register_metric
class MaxSensitivity(ReexplainingMetric):
    """Max-sensitivity: the largest relative change of the map under uniform input noise.

    ``max_i ||a(x + d_i) - a(x)|| / ||a(x)||`` over ``n_samples`` draws ``d_i ~ U(-r, r)`` per input
    value, with ``r = radius * (max(x) - min(x))`` and a seeded generator. The norm is Frobenius; the
    division (as in Quantus) makes methods with different scales comparable. A map that does not
    depend on the input at all scores 0. Lower is better.

    References:
        Yeh et al. On the (In)fidelity and Sensitivity of Explanations. NeurIPS 2019.
    """

    name = "max_sensitivity"
    category = "robustness"
    higher_is_better = False
    summary = "largest relative change of the map under small uniform input noise"
    reference = "Yeh et al. 2019"

    def __init__(self, *, n_samples: int = 3, radius: float = 0.02, seed: int = 0):
        self.n_samples = check_positive_int("n_samples", n_samples)
        if not isinstance(radius, (int, float)) or radius <= 0:
            raise InputError(f"radius must be a positive share of the input range, got {radius!r}")
        self.radius = float(radius)
        self.seed = seed

    def _compare(
        self, a: torch.Tensor, x: torch.Tensor, model: nn.Module, explain: Reexplain
    ) -> MetricResult:
        generator = torch.Generator().manual_seed(self.seed)
        r = self.radius * float(x.max() - x.min())
        norm = max(float(a.norm()), 1e-12)
        changes = []
        for _ in range(self.n_samples):
            noise = (torch.rand(x.shape, generator=generator) * 2 - 1) * r
            b = explain(model, x + noise.to(x.device))
            changes.append(float((b - a).norm()) / norm)
        return MetricResult(max(changes), extras={"changes": changes})
