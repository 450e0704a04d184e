"""Evaluation: classification metrics and their aggregation over folds and seeds."""

from qwave.eval.metrics import aggregate, classification_metrics, expected_calibration_error

__all__ = ["classification_metrics", "expected_calibration_error", "aggregate"]
