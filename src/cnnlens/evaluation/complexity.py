"""Complexity: how concentrated is the map?"""

from __future__ import annotations

import numpy as np
import torch

from cnnlens.errors import InputError
from cnnlens.evaluation.metrics import Metric, MetricResult, Sample, as_map, nan_result, register_metric


def gini(values: torch.Tensor | np.ndarray) -> float:
    """Gini index of non-negative values: 0 when all are equal, ``1 - 1/n`` when one holds everything.

    ``G = sum_k (2k - n - 1) v_(k) / (n sum_k v_k)`` with ``v_(k)`` sorted ascending, ``k = 1..n``.

    Raises:
        ValueError: Negative or non-finite values, or an empty array.

    References:
        Hurley, Rickard. Comparing Measures of Sparsity. IEEE Trans. Inf. Theory 2009.
    """
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if v.size == 0 or not np.isfinite(v).all() or v[0] < 0:
        raise InputError("gini needs a non-empty array of finite non-negative values")
    total = v.sum()
    if total == 0:
        return float("nan")
    k = np.arange(1, v.size + 1)
    return float(np.sum((2 * k - v.size - 1) * v) / (v.size * total))


@register_metric
class Sparseness(Metric):
    """Sparseness: the Gini index of the absolute map (higher: a more concentrated explanation).

    NaN for an all-zero map.

    References:
        Chalasani et al. Concise Explanations of Neural Networks using Adversarial Training. ICML 2020.
    """

    name = "sparseness"
    category = "complexity"
    higher_is_better = True
    summary = "Gini index of the absolute map"
    reference = "Chalasani et al. 2020"

    def __init__(self) -> None:
        pass

    def _evaluate(self, sample: Sample) -> MetricResult:
        value = gini(as_map(sample.attribution).abs())
        return nan_result("the map is all zero") if value != value else MetricResult(value)
