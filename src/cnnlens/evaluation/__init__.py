"""Evaluating explanations: faithfulness, localisation, sanity, robustness and complexity metrics
behind one contract (:class:`Metric`), found through the metric registry, and the benchmark."""

from cnnlens.evaluation import complexity, faithfulness, localisation, robustness, sanity  # noqa: F401
from cnnlens.evaluation.metrics import (
    CATEGORIES,
    Metric,
    MetricResult,
    Sample,
    create_metric,
    get_metric,
    metric_names,
    metrics_markdown,
    register_metric,
)

__all__ = [
    "CATEGORIES",
    "Metric",
    "MetricResult",
    "Sample",
    "create_metric",
    "get_metric",
    "metric_names",
    "metrics_markdown",
    "register_metric",
]
