"""Evaluating models and explanations.

* Models: classification metrics (:mod:`cnnlens.evaluation.classification`).
* Explanations: faithfulness, localisation, sanity, robustness and complexity metrics behind one
  contract (:class:`Metric`), found through the metric registry, and the benchmark
  (:mod:`cnnlens.evaluation.benchmark`).
"""

from cnnlens.evaluation import complexity, faithfulness, localisation, robustness, sanity  # noqa: F401
from cnnlens.evaluation.classification import (
    ClassificationMetrics,
    Evaluation,
    classification_metrics,
    confusion_matrix,
    evaluate,
    write_evaluation,
)
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
    "ClassificationMetrics",
    "Evaluation",
    "Metric",
    "MetricResult",
    "Sample",
    "classification_metrics",
    "confusion_matrix",
    "create_metric",
    "evaluate",
    "get_metric",
    "metric_names",
    "metrics_markdown",
    "register_metric",
    "write_evaluation",
]
