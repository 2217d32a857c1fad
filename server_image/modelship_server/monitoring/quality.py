"""Online quality of a model's results: the last N joined (prediction, label) pairs and the
metrics over them, with scikit-learn's definitions (pure functions; sklearn is not needed).

Classification: accuracy; precision, recall and F1 micro-averaged (over all decisions) and
macro-averaged (the mean over every class seen in the labels or the predictions; 0 where a
ratio has no denominator, as sklearn's zero_division default). Regression: MAE and RMSE.
"""

from __future__ import annotations

import collections

import numpy as np

CLASSIFICATION = ("accuracy", "precision_micro", "recall_micro", "f1_micro", "precision_macro", "recall_macro", "f1_macro")
REGRESSION = ("mae", "rmse")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def classification_metrics(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    y_pred = np.asarray(predicted).ravel()
    y_true = np.asarray(labels).ravel()
    if y_true.size == 0:
        return {}
    classes = np.union1d(y_true, y_pred)
    tp = np.array([np.sum((y_pred == k) & (y_true == k)) for k in classes], dtype=np.float64)
    pred_n = np.array([np.sum(y_pred == k) for k in classes], dtype=np.float64)
    true_n = np.array([np.sum(y_true == k) for k in classes], dtype=np.float64)
    precision = _ratio(tp, pred_n)
    recall = _ratio(tp, true_n)
    f1 = _ratio(2 * precision * recall, precision + recall)
    p_micro = float(tp.sum() / pred_n.sum())
    r_micro = float(tp.sum() / true_n.sum())
    f_micro = 2 * p_micro * r_micro / (p_micro + r_micro) if p_micro + r_micro > 0 else 0.0
    return {
        "accuracy": float(np.mean(y_pred == y_true)),
        "precision_micro": p_micro, "recall_micro": r_micro, "f1_micro": f_micro,
        "precision_macro": float(precision.mean()), "recall_macro": float(recall.mean()), "f1_macro": float(f1.mean()),
    }


def regression_metrics(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    err = np.asarray(predicted, np.float64).ravel() - np.asarray(labels, np.float64).ravel()
    if err.size == 0:
        return {}
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err * err)))}


class QualityWindow:
    """The last `size` joined pairs of one model (a sliding window; O(size) memory)."""

    def __init__(self, size: int, kind: str) -> None:
        self.kind = kind  # "classification" or "regression"
        self.size = size
        self.pairs: collections.deque[tuple[float, float]] = collections.deque(maxlen=size)

    def add(self, predicted: np.ndarray, labels: np.ndarray) -> None:
        self.pairs.extend(zip(np.asarray(predicted).ravel().tolist(), np.asarray(labels).ravel().tolist()))

    def metrics(self) -> dict[str, float]:
        pairs = list(self.pairs)
        if not pairs:
            return {}
        pred, true = np.array([p for p, _ in pairs]), np.array([t for _, t in pairs])
        return classification_metrics(pred, true) if self.kind == "classification" else regression_metrics(pred, true)
