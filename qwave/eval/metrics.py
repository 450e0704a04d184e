"""Classification metrics from predicted probabilities, and mean / std / 95% CI over folds (seeds averaged within
each fold first: every seed is tested on the same fold, so its runs are not independent samples)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

INTERVAL = ("seeds averaged within each fold, then mean, std and 95% CI (t, folds - 1 degrees of freedom) over "
            "the fold means")


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, class_names: list[str] | None = None
) -> dict:
    """Accuracy, macro F1 (headline), weighted F1, ROC-AUC, ECE, NLL, per-class scores and confusion matrix.

    ``proba`` is [n, C] with rows summing to 1; the prediction is its argmax. Macro and weighted F1 average
    over the classes present in ``y_true`` or the predictions (scikit-learn's rule); per-class scores and the
    confusion matrix cover all C classes. ROC-AUC is the one-vs-rest mean over classes with both positives and
    negatives in ``y_true`` (None when there is none).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or len(proba) != len(y_true) or len(y_true) == 0:
        raise ValueError(f"proba must be [n, C] with n = len(y_true) = {len(y_true)} > 0, got {proba.shape}.")
    n_classes = proba.shape[1]
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError(f"y_true must hold codes 0..{n_classes - 1}, got {y_true.min()}..{y_true.max()}.")
    names = [str(c) for c in range(n_classes)] if class_names is None else list(class_names)
    if len(names) != n_classes:
        raise ValueError(f"class_names has {len(names)} names for {n_classes} probability columns.")
    pred = proba.argmax(axis=1)
    labels = list(range(n_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, pred, labels=labels, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, pred)),
        "macro_f1": float(f1_score(y_true, pred, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, pred, average="weighted", zero_division=0)),
        "roc_auc_macro": _roc_auc_ovr(y_true, proba),
        "ece": expected_calibration_error(y_true, proba),
        "nll": float(-np.mean(np.log(np.clip(proba[np.arange(len(y_true)), y_true], 1e-15, 1.0)))),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)
        },
        "confusion": confusion_matrix(y_true, pred, labels=labels).tolist(),
        "n": len(y_true),
    }


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro F1 over the classes present in ``y_true`` or ``y_pred`` (scikit-learn's rule, zero_division=0).

    A bincount version of ``f1_score(average="macro")`` cheap enough to call every epoch:
    ``F1_c = 2 tp_c / (2 tp_c + fp_c + fn_c)``.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if len(y_true) == 0:
        return 0.0
    n = int(max(y_true.max(), y_pred.max())) + 1
    tp = np.bincount(y_true[y_true == y_pred], minlength=n)
    true_count, pred_count = np.bincount(y_true, minlength=n), np.bincount(y_pred, minlength=n)
    present = (true_count + pred_count) > 0
    return float(np.mean(2 * tp[present] / (true_count[present] + pred_count[present])))


def _roc_auc_ovr(y_true: np.ndarray, proba: np.ndarray) -> float | None:
    scores = [
        roc_auc_score(y_true == c, proba[:, c])
        for c in range(proba.shape[1])
        if 0 < np.sum(y_true == c) < len(y_true)
    ]
    return float(np.mean(scores)) if scores else None


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 15) -> float:
    """ECE = sum_b |B_b| / n * |acc_b - conf_b| over equal-width confidence bins (lo, hi] on [0, 1]."""
    proba = np.asarray(proba, dtype=np.float64)
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.digitize(confidence, edges[1:-1], right=True)
    ece = 0.0
    for b in np.unique(bins):
        member = bins == b
        ece += member.mean() * abs(correct[member].mean() - confidence[member].mean())
    return float(ece)


def aggregate(values: list[float | None]) -> dict:
    """Mean, std (ddof=1), 95% CI half-width t_{0.975, n-1} * std / sqrt(n), n, min, max.

    None and NaN values (a metric undefined on some run) are left out and not counted in n; std is 0 for one
    value and ci95 is None below two values, as is every statistic when no value remains.
    """
    arr = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    n = len(arr)
    if n == 0:
        return {"mean": None, "std": None, "ci95": None, "n": 0, "min": None, "max": None}
    std = float(arr.std(ddof=1)) if n > 1 else 0.0
    ci95 = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else None
    return {"mean": float(arr.mean()), "std": std, "ci95": ci95, "n": n, "min": float(arr.min()),
            "max": float(arr.max())}


def aggregate_over_folds(folds: list, values: list[float | None]) -> dict:
    """``aggregate`` over folds of the per-fold means of ``values`` (one per run, ``folds[i]`` the run's fold).

    The test rows of a fold are the same for every seed, so seeds are averaged within each fold first and the
    interval is taken over the k fold means (k - 1 degrees of freedom; see ``INTERVAL``). ``n`` counts folds
    with a value, ``n_runs`` the runs behind them.
    """
    by_fold: dict = {}
    for fold, value in zip(folds, values, strict=True):
        if value is not None and not math.isnan(value):
            by_fold.setdefault(fold, []).append(float(value))
    result = aggregate([float(np.mean(v)) for v in by_fold.values()])
    result["n_runs"] = sum(len(v) for v in by_fold.values())
    return result

