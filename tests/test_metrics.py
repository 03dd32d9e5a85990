"""Metrics: values checked against hand-computed numbers, and degenerate inputs stay finite."""

import math

import numpy as np
import pytest

from jaxtl.metrics import classification_metrics, regression_metrics


def test_binary_classification_by_hand():
    # TP=2 (rows 1,2), FN=1 (row 3), FP=1 (row 4), TN=2 (rows 0,5)
    labels = [0, 1, 1, 1, 0, 0]
    preds = [0, 1, 1, 0, 1, 0]
    m = classification_metrics(labels, preds)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 / 3)  # precision 2/3, recall 2/3
    assert m["macro_f1"] == pytest.approx(2 / 3)  # class 0 is symmetric here
    assert m["mcc"] == pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))
    assert all(isinstance(v, float) for v in m.values())


def test_multiclass_has_no_binary_f1_and_counts_absent_classes():
    labels = np.array([0, 1, 2, 2])
    preds = np.array([0, 1, 2, 1])
    m = classification_metrics(labels, preds)
    assert set(m) == {"accuracy", "macro_f1", "mcc"}
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    # With a 4th label that never occurs, macro-F1 averages its 0 in.
    m4 = classification_metrics(labels, preds, num_labels=4)
    assert m4["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 4)


def test_degenerate_classification_is_finite():
    m = classification_metrics([0, 1, 0, 1], [1, 1, 1, 1])  # constant predictions
    assert m["mcc"] == 0.0 and m["accuracy"] == 0.5 and m["f1"] == pytest.approx(2 / 3)
    m = classification_metrics([0, 0], [0, 0], num_labels=2)  # no positives anywhere
    assert m == {"accuracy": 1.0, "macro_f1": pytest.approx(0.5), "mcc": 0.0, "f1": 0.0}
    assert not any(math.isnan(v) for v in m.values())


def test_regression_by_hand_and_constant_predictions():
    targets = [1.0, 2.0, 3.0, 4.0]
    preds = [1.0, 3.0, 2.0, 5.0]
    m = regression_metrics(targets, preds)
    assert m["mse"] == pytest.approx((0 + 1 + 1 + 1) / 4)
    assert m["spearman"] == pytest.approx(0.8)  # ranks 1,3,2,4: 1 - 6*2/(4*15)
    assert m["pearson"] == pytest.approx(np.corrcoef(targets, preds)[0, 1])
    flat = regression_metrics(targets, [2.5] * 4)
    assert flat["pearson"] == 0.0 and flat["spearman"] == 0.0 and flat["mse"] == pytest.approx(1.25)
    assert regression_metrics([3.0], [1.0]) == {"pearson": 0.0, "spearman": 0.0, "mse": 4.0}


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="3 entries.*2"):
        classification_metrics([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        regression_metrics([], [])
    with pytest.raises(ValueError, match="NaN"):
        regression_metrics([1.0, 2.0], [1.0, float("nan")])
