"""Evaluating models and explanations. Classification metrics live in
:mod:`cnnlens.evaluation.classification`."""

from cnnlens.evaluation.classification import (
    ClassificationMetrics,
    Evaluation,
    classification_metrics,
    confusion_matrix,
    evaluate,
    write_evaluation,
)

__all__ = [
    "ClassificationMetrics",
    "Evaluation",
    "classification_metrics",
    "confusion_matrix",
    "evaluate",
    "write_evaluation",
]
