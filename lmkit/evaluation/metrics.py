"""Classification metrics in plain numpy: accuracy, per-class precision/recall/F1, macro and weighted F1,
Matthews correlation and the confusion matrix.

Definitions follow scikit-learn (tests compare against it): a precision or recall whose denominator is
zero counts as 0 (``zero_division=0``); macro and weighted averages run over the classes that occur in
the gold labels or the predictions; weighted F1 weighs each class by its gold support.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(gold: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: row = gold class, column = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(gold, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros(np.shape(numerator), dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def matthews_corrcoef(matrix: np.ndarray) -> float:
    """Multi-class Matthews correlation from a confusion matrix (Gorodkin 2004, R_K statistic);
    0 when either marginal is constant (the coefficient is undefined there)."""
    matrix = matrix.astype(np.float64)
    total = matrix.sum()
    correct = np.trace(matrix)
    gold_counts = matrix.sum(axis=1)       # t_k
    predicted_counts = matrix.sum(axis=0)  # p_k
    numerator = correct * total - predicted_counts @ gold_counts
    denominator = np.sqrt((total ** 2 - predicted_counts @ predicted_counts) * (total ** 2 - gold_counts @ gold_counts))
    return float(numerator / denominator) if denominator else 0.0


def classification_metrics(gold: np.ndarray, predicted: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Every metric of ``lmkit evaluate --task classify`` for class indices ``gold`` and ``predicted``.

    Returns {"metrics": flat aggregates, "per_class": {label: precision, recall, f1, support},
    "confusion": the matrix as nested lists}.
    """
    gold, predicted = np.asarray(gold, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if len(gold) == 0:
        raise ValueError("no examples to score")
    matrix = confusion_matrix(gold, predicted, len(labels))
    true_positives = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)            # gold count per class
    predicted_count = matrix.sum(axis=0)
    precision = _safe_divide(true_positives, predicted_count)
    recall = _safe_divide(true_positives, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    present = (support + predicted_count) > 0  # the classes scikit-learn averages over by default
    metrics = {
        "accuracy": float(true_positives.sum() / len(gold)),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "weighted_f1": float((f1 * support).sum() / support.sum()),
        "mcc": matthews_corrcoef(matrix),
    }
    per_class = {label: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                         "support": int(support[k])} for k, label in enumerate(labels)}
    return {"metrics": metrics, "per_class": per_class, "confusion": matrix.tolist()}
