"""Metrics against hand-computed values on tiny examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qwave.eval.metrics import aggregate, classification_metrics, expected_calibration_error


def one_hot(pred: list[int], n_classes: int, confidence: float = 0.9) -> np.ndarray:
    rest = (1 - confidence) / (n_classes - 1)
    proba = np.full((len(pred), n_classes), rest)
    proba[np.arange(len(pred)), pred] = confidence
    return proba


def test_macro_f1_and_accuracy_match_hand_counts() -> None:
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = [0, 0, 1, 1, 2, 2]
    m = classification_metrics(y, one_hot(pred, 3), ["a", "b", "c"])
    # class a: tp 2 fp 0 fn 1 -> f1 = 4/5; class b: tp 1 fp 1 fn 1 -> 1/2; class c: tp 1 fp 1 fn 0 -> 2/3
    f1 = [0.8, 0.5, 2 / 3]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert m["weighted_f1"] == pytest.approx((3 * f1[0] + 2 * f1[1] + f1[2]) / 6)
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["nll"] == pytest.approx(-(4 * math.log(0.9) + 2 * math.log(0.05)) / 6)


def test_ece_closed_form_single_bin() -> None:
    y = np.array([0, 1, 0, 1])
    proba = one_hot([0, 0, 0, 0], 2, confidence=0.8)  # every sample in one bin, accuracy 0.5, confidence 0.8
    assert expected_calibration_error(y, proba) == pytest.approx(0.3)


def test_ece_zero_when_confidence_equals_accuracy() -> None:
    y = np.array([0] * 3 + [1])
    proba = one_hot([0, 0, 0, 0], 2, confidence=0.75)
    assert expected_calibration_error(y, proba) == pytest.approx(0.0)


def test_perfect_ranking_gives_auc_one() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    m = classification_metrics(y, one_hot(list(y), 3))
    assert m["roc_auc_macro"] == pytest.approx(1.0)
    assert m["macro_f1"] == pytest.approx(1.0)


def test_aggregate_mean_std_and_t_interval() -> None:
    agg = aggregate([1.0, 2.0, 3.0, None, float("nan")])
    assert agg["n"] == 3 and agg["mean"] == pytest.approx(2.0) and agg["std"] == pytest.approx(1.0)
    assert agg["ci95"] == pytest.approx(4.302652729911275 / math.sqrt(3))  # t_{0.975, 2} = 4.3027
    assert aggregate([])["mean"] is None and aggregate([5.0])["ci95"] is None


def test_seeds_are_averaged_within_each_fold_before_the_interval_over_folds() -> None:
    from qwave.eval.metrics import aggregate_over_folds

    folds = [1, 1, 2, 2, 3, 3, 3]
    values = [0.5, 0.7, 0.8, 0.8, 0.2, 0.3, None]  # fold means 0.6, 0.8, 0.25 (the None run is left out)
    agg = aggregate_over_folds(folds, values)
    means = [0.6, 0.8, 0.25]
    assert agg["n"] == 3 and agg["n_runs"] == 6
    assert agg["mean"] == pytest.approx(sum(means) / 3)
    assert agg["std"] == pytest.approx(float(np.std(means, ddof=1)))
    assert agg["ci95"] == pytest.approx(4.302652729911275 * np.std(means, ddof=1) / math.sqrt(3))
    independent = aggregate(values[:6])  # what treating the 6 runs as independent samples would claim
    assert independent["n"] == 6 and independent["ci95"] < agg["ci95"]


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="proba must be"):
        classification_metrics(np.array([0, 1]), np.ones((3, 2)) / 2)
    with pytest.raises(ValueError, match="codes 0..1"):
        classification_metrics(np.array([0, 2]), np.ones((2, 2)) / 2)


def test_fast_macro_f1_equals_scikit_learn_on_random_labels() -> None:
    from sklearn.metrics import f1_score

    from qwave.eval.metrics import macro_f1

    rng = np.random.default_rng(0)
    for n_classes in (2, 5, 17):
        y, pred = rng.integers(0, n_classes, 60), rng.integers(0, n_classes - 1, 60)
        assert macro_f1(y, pred) == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
