"""Evaluating models and explanations.

* Models: classification metrics (:mod:`cnnlens.evaluation.classification`).
* Explanations: faithfulness, localisation, sanity, robustness and complexity metrics behind one
  contract (:class:`Metric`), found through the metric registry, and the benchmark
  (:mod:`cnnlens.evaluation.benchmark`).
"""

from cnnlens.evaluation import (  # noqa: F401
    complexity,
    faithfulness,
    localisation,
    robustness,
    sanity,
    sensitivity,
)
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
    Column,
    Metric,
    MetricResult,
    Sample,
    column_names,
    create_metric,
    get_metric,
    metric_names,
    metric_of,
    metrics_markdown,
    register_metric,
)

__all__ = [
    "CATEGORIES",
    "ClassificationMetrics",
    "Column",
    "Evaluation",
    "Metric",
    "MetricResult",
    "Sample",
    "classification_metrics",
    "column_names",
    "confusion_matrix",
    "create_metric",
    "evaluate",
    "get_metric",
    "metric_names",
    "metric_of",
    "metrics_markdown",
    "register_metric",
    "write_evaluation",
]
