"""Evaluation metrics over a whole split, computed by scikit-learn and SciPy (not re-derived here).

Inputs are host numpy arrays gathered after evaluation, with padding rows already removed
(``example_weight == 0`` rows of :meth:`jaxtl.data.batching.Batcher.eval_batches`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def _flat(name: str, values) -> np.ndarray:
    array = np.asarray(values).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name} is empty: no examples to score")
    return array


def classification_metrics(
    label_ids, pred_ids, *, num_labels: int | None = None
) -> dict[str, float]:
    """Accuracy, macro-F1 and Matthews correlation (MCC) of predicted label ids.

    Args:
      label_ids: int [N] true label ids.
      pred_ids: int [N] predicted label ids (argmax of the logits).
      num_labels: size of the label set. With 2 labels (or, when None, when every id is 0 or 1)
        the binary ``f1`` of label 1 is added, the usual GLUE metric for MRPC/QQP.

    Degenerate inputs give numbers, not NaN: MCC is 0.0 when either side is constant
    (scikit-learn's convention), and an F1 whose class is never predicted nor present counts 0.
    Macro-F1 averages over ``range(num_labels)`` when given (absent classes score 0), else over
    the ids that occur.
    """
    y_true = _flat("label_ids", label_ids).astype(np.int64)
    y_pred = _flat("pred_ids", pred_ids).astype(np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"label_ids has {y_true.size} entries but pred_ids has {y_pred.size}")
    classes = list(range(num_labels)) if num_labels is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on constant inputs; handled above
        result = {
            "accuracy": float(skm.accuracy_score(y_true, y_pred)),
            "macro_f1": float(
                skm.f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)
            ),
            "mcc": float(skm.matthews_corrcoef(y_true, y_pred)),
        }
        binary = (
            num_labels == 2
            if num_labels is not None
            else bool(np.all((y_true <= 1) & (y_true >= 0) & (y_pred <= 1) & (y_pred >= 0)))
        )
        if binary:
            result["f1"] = float(
                skm.f1_score(y_true, y_pred, pos_label=1, average="binary", zero_division=0)
            )
    return {key: 0.0 if math.isnan(value) else value for key, value in result.items()}


def regression_metrics(targets, preds) -> dict[str, float]:
    """Pearson and Spearman correlation and mean squared error of predicted scores.

    Args:
      targets: float [N] true values.
      preds: float [N] predicted values.

    A correlation is undefined when either side is constant (e.g. a model that has collapsed to
    one output, or a single example); it is reported as 0.0 — no linear or rank relation —
    rather than NaN, so "best checkpoint" comparisons and logs stay numeric.
    """
    y_true = _flat("targets", targets).astype(np.float64)
    y_pred = _flat("preds", preds).astype(np.float64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"targets has {y_true.size} entries but preds has {y_pred.size}")
    if not np.all(np.isfinite(y_pred)):
        raise ValueError("preds holds NaN or infinite values")

    def correlation(fn) -> float:
        if y_true.size < 2 or np.ptp(y_true) == 0 or np.ptp(y_pred) == 0:
            return 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = float(fn(y_true, y_pred)[0])
        return 0.0 if math.isnan(value) else value

    return {
        "pearson": correlation(stats.pearsonr),
        "spearman": correlation(stats.spearmanr),
        "mse": float(skm.mean_squared_error(y_true, y_pred)),
    }
