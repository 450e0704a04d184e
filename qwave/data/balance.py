"""Class-imbalance helper: inverse-frequency loss weights."""

from __future__ import annotations

import numpy as np
import torch


def class_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    """Weight n / (C * count_c) per class, so the mean weight over the n samples is 1.

    C counts the classes present in ``y``; an absent class gets weight 0 (it never appears in the loss).
    """
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = len(y) / (present.sum() * counts[present])
    return torch.from_numpy(weights).to(torch.float32)

