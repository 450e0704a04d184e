"""Class-imbalance helpers: inverse-frequency loss weights and a class-balanced sampler."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler


def class_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    """Weight n / (C * count_c) per class, so the mean weight over the n samples is 1.

    C counts the classes present in ``y``; an absent class gets weight 0 (it never appears in the loss).
    """
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = len(y) / (present.sum() * counts[present])
    return torch.from_numpy(weights).to(torch.float32)


def balanced_sampler(y: np.ndarray, seed: int) -> WeightedRandomSampler:
    """Draw len(y) samples with replacement, each class equally likely; seeded for reproducibility."""
    y = np.asarray(y, dtype=np.int64)
    per_sample = 1.0 / np.bincount(y)[y]
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(torch.from_numpy(per_sample), num_samples=len(y), replacement=True,
                                 generator=generator)
