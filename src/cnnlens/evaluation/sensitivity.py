"""Class sensitivity: does the map change with the class it explains?

A map that looks the same whatever class is asked for (deconvnet, guided backprop: Sixt et al. 2020)
cannot tell the user *why this class*. The metric explains the image again for another class, the
model's next most probable one, and correlates the two maps.
"""

from __future__ import annotations

import numpy as np
import torch

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
from cnnlens.evaluation.sanity import rank_correlation
from cnnlens.models.hooks import preserved_state
from cnnlens.validation import check_positive_int


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two maps; 1 for two equal constant maps, 0 if only one is constant."""
    fa, fb = a.flatten().double().numpy(), b.flatten().double().numpy()
    constant_a, constant_b = bool(np.ptp(fa) == 0), bool(np.ptp(fb) == 0)
    if constant_a or constant_b:
        return 1.0 if constant_a and constant_b and fa[0] == fb[0] else 0.0
    return float(np.corrcoef(fa, fb)[0, 1])


def other_class(logits: torch.Tensor, target: int, rank: int) -> int:
    """The class at position ``rank`` (1 = top) of ``logits`` once ``target`` is left out."""
    order = [int(c) for c in logits.flatten().argsort(descending=True) if int(c) != target]
    if rank > len(order):
        raise InputError(f"rank {rank} asks for more classes than the model's {len(order) + 1}")
    return order[rank - 1]


@register_metric
class ClassSensitivity(Metric):
    """Correlation of the map with the map of another class (lower is better).

    The other class is the model's most probable class besides the explained one (``rank=1``; ``2``
    is the next, and so on): for a top-1 target, the 2nd class. The value is the Pearson correlation
    of the two maps: about 1 for a method that ignores the class, lower the more the explained class
    shapes the map. ``extras`` hold the other class and the Spearman correlation.

    References:
        Sixt, Granz, Landgraf. When Explanations Lie: Why Many Modified BP Attributions Fail.
        ICML 2020 (class-insensitive maps); Böhle et al. CVPR 2021 (grid pointing game).
    """

    name = "class_sensitivity"
    category = "sanity"
    higher_is_better = False
    summary = "correlation with the map of the model's next most probable class"
    reference = "Sixt et al. 2020"
    needs = ("inputs", "model", "explain")

    def __init__(self, *, rank: int = 1):
        self.rank = check_positive_int("rank", rank)

    def _evaluate(self, sample: Sample) -> MetricResult:
        a = as_map(sample.attribution)
        x = as_input(sample.inputs, tuple(a.shape))
        model = required(sample.model, "model")
        device = next((p.device for p in model.parameters()), x.device)
        with preserved_state(model, freeze_parameters=False), torch.inference_mode():
            logits = model(x.to(device))
        other = other_class(logits[0].float().cpu(), sample.target, self.rank)
        b = as_map(required(sample.explain, "explain")(model, x, other))
        if b.shape != a.shape:
            raise InputError(f"explain returned shape {tuple(b.shape)}, expected {tuple(a.shape)}")
        extras = {"other_class": other, "spearman": rank_correlation(a, b)}
        return MetricResult(pearson(a, b), extras=extras)
