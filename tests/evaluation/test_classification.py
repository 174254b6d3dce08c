"""Classification metrics against scikit-learn on fixed predictions."""

from __future__ import annotations

import warnings

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


def test_closed_form_with_a_class_never_predicted_and_one_never_seen() -> None:
    confusion = np.array(
        [
            [3, 1, 0, 0],
            [1, 2, 0, 0],
            [0, 2, 0, 0],  # "c": two samples, never predicted
            [0, 0, 0, 0],  # "d": no samples, no predictions
        ]
    )
    y_true = np.repeat(np.arange(4), confusion.sum(1))
    y_pred = np.concatenate([np.repeat(np.arange(4), row) for row in confusion])
    m = classification_metrics(y_true.tolist(), y_pred.tolist(), ["a", "b", "c", "d"])
    np.testing.assert_array_equal(m.confusion, confusion)
    assert m.confusion.dtype == np.int64
    # (TP, FP, FN, TN) per class: a (3, 1, 1, 4), b (2, 3, 1, 3), c (0, 0, 2, 7), d (0, 0, 0, 9);
    # 0/0 is 0
    expected = {
        "precision": [3 / 4, 2 / 5, 0.0, 0.0],
        "sensitivity": [3 / 4, 2 / 3, 0.0, 0.0],
        "specificity": [4 / 5, 3 / 6, 7 / 7, 9 / 9],
        "f1": [6 / 8, 4 / 8, 0 / 2, 0.0],
    }
    for name, values in expected.items():
        assert m.per_class[name].tolist() == pytest.approx(values, abs=1e-15), name
        assert m.macro[name] == pytest.approx(sum(values) / 4, abs=1e-15), name
    assert m.accuracy == pytest.approx(5 / 9, abs=1e-15)
    assert m.support.tolist() == [4, 3, 2, 0]


def test_no_samples_and_a_single_class_give_zeros_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = classification_metrics([], [], ["a", "b"])
        single = classification_metrics([0, 0, 0], [0, 0, 0], ["only"])
    assert empty.confusion.tolist() == [[0, 0], [0, 0]] and empty.confusion.dtype == np.int64
    assert empty.accuracy == 0.0 and empty.to_dict()["n"] == 0
    assert all(v.tolist() == [0.0, 0.0] for v in empty.per_class.values())
    assert single.confusion.tolist() == [[3]] and single.accuracy == 1.0
    assert {k: v.tolist() for k, v in single.per_class.items()} == {
        "precision": [1.0],
        "sensitivity": [1.0],
        "specificity": [0.0],  # no negatives: TN / (TN + FP) = 0 / 0
        "f1": [1.0],
    }
