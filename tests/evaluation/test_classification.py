"""Classification metrics against scikit-learn on fixed predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from cnnlens.evaluation.classification import classification_metrics, confusion_matrix

RNG = np.random.default_rng(7)
Y_TRUE = RNG.integers(0, 4, 200)
Y_PRED = np.where(RNG.random(200) < 0.6, Y_TRUE, RNG.integers(0, 4, 200))
Y_PRED[Y_PRED == 3] = 2  # class 3 is never predicted: its precision has a zero denominator


def test_metrics_match_scikit_learn() -> None:
    m = classification_metrics(Y_TRUE.tolist(), Y_PRED.tolist(), ["a", "b", "c", "d"])
    np.testing.assert_array_equal(m.confusion, skm.confusion_matrix(Y_TRUE, Y_PRED, labels=range(4)))
    assert m.accuracy == pytest.approx(skm.accuracy_score(Y_TRUE, Y_PRED))
    p, r, f, support = skm.precision_recall_fscore_support(Y_TRUE, Y_PRED, labels=range(4), zero_division=0)
    np.testing.assert_allclose(m.per_class["precision"], p)
    np.testing.assert_allclose(m.per_class["sensitivity"], r)
    np.testing.assert_allclose(m.per_class["f1"], f)
    np.testing.assert_array_equal(m.support, support)
    specificity = [skm.recall_score(c != Y_TRUE, c != Y_PRED) for c in range(4)]  # recall of "not c"
    np.testing.assert_allclose(m.per_class["specificity"], specificity)
    macro = skm.precision_recall_fscore_support(Y_TRUE, Y_PRED, average="macro", zero_division=0)
    assert [m.macro[k] for k in ("precision", "sensitivity", "f1")] == pytest.approx(list(macro[:3]))
    assert m.per_class["precision"][3] == 0.0


def test_to_dict_and_binary_closed_form() -> None:
    # 2 classes: TP=3, FN=1, FP=2, TN=4 for class "pos"
    y_true = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    y_pred = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]
    m = classification_metrics(y_true, y_pred, ["neg", "pos"])
    row = m.to_dict()["per_class"][1]
    assert row == {
        "class": "pos",
        "support": 4,
        "precision": 3 / 5,
        "sensitivity": 3 / 4,
        "specificity": 4 / 6,
        "f1": 2 * 3 / (2 * 3 + 2 + 1),
    }
    assert m.to_dict()["accuracy"] == 0.7


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="same length"):
        confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        confusion_matrix([0, 2], [0, 1], 2)
