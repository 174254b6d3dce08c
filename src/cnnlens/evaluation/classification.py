"""Classification metrics of a trained model: Fan et al.'s table, the confusion matrix and the worst errors.

For each class ``c`` (one-vs-rest, from the confusion matrix ``C``, rows = true class):
``TP = C[c, c]``, ``FP = sum_r C[r, c] - TP``, ``FN = sum_k C[c, k] - TP``, ``TN = N - TP - FP - FN``;
precision ``TP / (TP + FP)``, sensitivity (recall) ``TP / (TP + FN)``, specificity ``TN / (TN + FP)``,
F1 ``2 TP / (2 TP + FP + FN)``; a ratio with a zero denominator is 0 (scikit-learn's
``zero_division=0``). Macro averages are unweighted means over classes. The confusion matrix,
precision, sensitivity, F1 and accuracy come from :mod:`sklearn.metrics`; specificity, which
scikit-learn has no function for, from the confusion matrix.

References:
    Sokolova, Lapalme. A systematic analysis of performance measures for classification tasks.
    Information Processing & Management 45(4), 2009.
    Fan, Li, Song, Yang. Explainable deep learning-based classification on small-sized dataset
    (project report; no year given): the per-class-averaged precision, sensitivity, specificity
    and F1 of its tables.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn import metrics as skm

from cnnlens.data.dataset import ImageDataset, eval_transform
from cnnlens.data.folders import Sample, scan_dataset
from cnnlens.data.split import run_split
from cnnlens.errors import InputError, unknown
from cnnlens.models.loaded import LoadedModel
from cnnlens.models.registry import load_model
from cnnlens.outputs import write_json, write_with

#: Each metric and whether higher is better (all of them here), so reports can sort and colour.
METRICS: dict[str, str] = {
    "precision": "higher",
    "sensitivity": "higher",
    "specificity": "higher",
    "f1": "higher",
}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(num.shape, dtype=np.float64), where=den > 0)


def _pairs(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (true, predicted) class pair once, with its count as the weight.

    Scikit-learn's metrics take labels, not a confusion matrix; the ``K * K`` weighted pairs give
    them the same counts as the ``N`` samples would.
    """
    k = confusion.shape[0]
    true, pred = np.divmod(np.arange(k * k), k)
    return true, pred, confusion.reshape(-1)


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts ``C[t, p]`` of true class ``t`` predicted as ``p``.

    Shape:
        ``(num_classes, num_classes)``, int64.

    Raises:
        ValueError: Lengths differ, or a label is outside ``[0, num_classes)``.
    """
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape or t.ndim != 1:
        raise InputError(f"y_true and y_pred must be 1-D of the same length, got {t.shape} and {p.shape}")
    if len(t) and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise InputError(
            f"labels must lie in [0, {num_classes}); got {t.min()}..{t.max()} and {p.min()}..{p.max()}"
        )
    if not len(t):  # scikit-learn refuses empty inputs
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    with warnings.catch_warnings():  # all labels are passed, so a 1 x 1 matrix has the right shape
        warnings.filterwarnings("ignore", "A single label was found", UserWarning)
        counts = skm.confusion_matrix(t, p, labels=np.arange(num_classes))
    return np.asarray(counts, dtype=np.int64)


@dataclass
class ClassificationMetrics:
    """Accuracy, per-class and macro precision/sensitivity/specificity/F1, and the confusion matrix."""

    class_names: list[str]
    confusion: np.ndarray
    per_class: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        k = self.confusion.shape[0]
        if self.total:
            true, pred, counts = _pairs(self.confusion)
            precision, sensitivity, f1, _ = skm.precision_recall_fscore_support(
                true, pred, labels=np.arange(k), sample_weight=counts, zero_division=0
            )
        else:  # scikit-learn refuses an empty matrix; every ratio is then 0/0, taken as 0
            precision, sensitivity, f1 = np.zeros(k), np.zeros(k), np.zeros(k)
        c = self.confusion.astype(np.float64)
        tp = np.diag(c)
        fp, fn = c.sum(0) - tp, c.sum(1) - tp
        tn = c.sum() - tp - fp - fn
        self.per_class = {
            "precision": np.asarray(precision, dtype=np.float64),
            "sensitivity": np.asarray(sensitivity, dtype=np.float64),
            "specificity": _ratio(tn, tn + fp),
            "f1": np.asarray(f1, dtype=np.float64),
        }

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    @property
    def support(self) -> np.ndarray:
        return self.confusion.sum(1)

    @property
    def accuracy(self) -> float:
        if not self.total:
            return 0.0
        true, pred, counts = _pairs(self.confusion)
        return float(skm.accuracy_score(true, pred, sample_weight=counts))

    @property
    def macro(self) -> dict[str, float]:
        return {k: float(v.mean()) for k, v in self.per_class.items()}

    def to_dict(self) -> dict[str, Any]:
        rows = [
            {
                "class": n,
                "support": int(self.support[i]),
                **{k: float(v[i]) for k, v in self.per_class.items()},
            }
            for i, n in enumerate(self.class_names)
        ]
        return {
            "n": self.total,
            "accuracy": self.accuracy,
            "macro": self.macro,
            "per_class": rows,
            "confusion": {
                "class_names": self.class_names,
                "rows_true_columns_predicted": self.confusion.tolist(),
            },
            "directions": METRICS,
        }


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]
) -> ClassificationMetrics:
    """The metrics of predictions ``y_pred`` against ``y_true`` (class indices into ``class_names``)."""
    names = list(class_names)
    return ClassificationMetrics(names, confusion_matrix(y_true, y_pred, len(names)))


@dataclass
class Evaluation:
    """A model's predictions on a set of samples, and their metrics."""

    model: LoadedModel
    samples: list[Sample]
    labels: np.ndarray
    probabilities: np.ndarray
    metrics: ClassificationMetrics
    source: str

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(1)

    def worst_errors(self, n: int = 16) -> list[int]:
        """Indices of misclassified samples, most confidently wrong first."""
        wrong = np.flatnonzero(self.predictions != self.labels)
        confidence = self.probabilities[wrong, self.predictions[wrong]]
        return [int(i) for i in wrong[np.argsort(-confidence, kind="stable")][:n]]

    def to_dict(self, n_errors: int = 16) -> dict[str, Any]:
        names = self.model.class_names
        errors = [
            {
                "path": str(self.samples[i].path),
                "true": names[int(self.labels[i])],
                "predicted": names[int(self.predictions[i])],
                "confidence": float(self.probabilities[i, self.predictions[i]]),
            }
            for i in self.worst_errors(n_errors)
        ]
        return {
            "model": self.model.name,
            "data": self.source,
            **self.metrics.to_dict(),
            "worst_errors": errors,
        }


def predict(model: LoadedModel, samples: list[Sample], batch_size: int = 64) -> np.ndarray:
    """Class probabilities of each sample under the model's own preprocessing.

    Shape:
        ``(len(samples), num_classes)``.
    """
    ds = ImageDataset(samples, eval_transform(model.preprocessing), cache=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size)
    chunks = [model.logits(batch["image"], batch_size).softmax(1) for batch in loader]
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, model.num_classes))


def _relabel(samples: list[Sample], data_names: list[str], model: LoadedModel) -> list[Sample]:
    index = {n: i for i, n in enumerate(model.class_names)}
    missing = [n for n in data_names if n not in index]
    if missing:
        raise unknown("class", missing[0], model.class_names, "The data's class names must be the model's")
    return [Sample(s.path, index[data_names[s.label]], s.mask, s.split) for s in samples]


def evaluate(
    model: str | os.PathLike[str] | LoadedModel,
    data: str | os.PathLike[str] | None = None,
    *,
    split: str = "test",
    batch_size: int = 64,
    strict: bool = False,
) -> Evaluation:
    """Evaluate a trained model on a dataset, or on the held-out split of its own run.

    Args:
        model: A run folder, a checkpoint or a loaded model.
        data: A class-folder dataset or manifest whose class names are the model's; ``None``: the
            run's ``split`` images (``model`` must then be a run folder).
        split: Which split of the run to use without ``data``.
        batch_size: Images per forward pass.
        strict: Stop on unreadable files instead of skipping them.

    Raises:
        ValueError: No data given and ``model`` is not a run folder, or the split is empty.
        UnknownNameError: A class of ``data`` is not one of the model's classes.
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    if data is None:
        samples, source = _run_split(model, split, strict)
    else:
        dataset = scan_dataset(data, strict=strict)
        samples, source = _relabel(dataset.samples, dataset.class_names, loaded), str(data)
    probs = predict(loaded, samples, batch_size)
    labels = np.array([s.label for s in samples], dtype=np.int64)
    metrics = classification_metrics(labels.tolist(), probs.argmax(1).tolist(), loaded.class_names)
    return Evaluation(loaded, samples, labels, probs, metrics, source)


def _run_split(model: object, split: str, strict: bool) -> tuple[list[Sample], str]:
    if not isinstance(model, (str, os.PathLike)):
        raise InputError(f"{model} is not a training run folder; give the data to evaluate on as well")
    return run_split(model, split, strict=strict)


#: The files :func:`write_evaluation` writes (into ``RUN/eval-<name>/`` by ``cnnlens evaluate``).
EVALUATION_FILES = frozenset({"metrics.json", "confusion.json", "confusion.png", "misclassified.png"})


def write_evaluation(result: Evaluation, out: str | os.PathLike[str], n_errors: int = 16) -> dict[str, Path]:
    """Write ``metrics.json``, ``confusion.json``, ``confusion.png`` and ``misclassified.png`` to ``out``."""
    from cnnlens.evaluation.figures import confusion_figure, error_gallery

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    body = result.to_dict(n_errors)
    paths = {
        "metrics": folder / "metrics.json",
        "confusion_json": folder / "confusion.json",
        "confusion_png": folder / "confusion.png",
        "misclassified": folder / "misclassified.png",
    }
    write_json(paths["metrics"], body)
    write_json(paths["confusion_json"], body["confusion"])
    confusion = confusion_figure(result.metrics.confusion, result.model.class_names)
    write_with(paths["confusion_png"], lambda f: confusion.savefig(f, format="png", dpi=100))
    gallery = error_gallery(result, result.worst_errors(n_errors))
    write_with(
        paths["misclassified"], lambda f: gallery.savefig(f, format="png", dpi=100, bbox_inches="tight")
    )
    return paths
