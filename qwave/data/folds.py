"""Outer cross-validation folds (official or stratified, groups kept together) and the inner validation split.

The reported fold is never seen by fitting, early stopping or model selection: ``inner_split`` carves its
validation rows from a fold's ``train`` indices only.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from qwave.data.table import Dataset
from qwave.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FOLD_MODES = ("auto", "official", "stratified")


@dataclass(frozen=True)
class Fold:
    """One outer fold: ``train`` (fitting and inner validation) and its complement ``test`` (reported)."""

    k: int
    train: np.ndarray
    test: np.ndarray


def make_folds(ds: Dataset, mode: str = "auto", n_folds: int = 5, seed: int = 0) -> list[Fold]:
    """Official folds from ``ds.fold``, or seeded stratified K folds (grouped when ``ds.group`` exists)."""
    if mode not in FOLD_MODES:
        raise ConfigError(f"cv.folds={mode!r} is not one of {', '.join(FOLD_MODES)}.")
    if mode == "official" or (mode == "auto" and ds.fold is not None):
        return _official_folds(ds)
    return _stratified_folds(ds, n_folds, seed)


def _official_folds(ds: Dataset) -> list[Fold]:
    if ds.fold is None:
        raise DataError(f"{ds.source}: official folds requested but the table has no fold column.")
    values = np.unique(ds.fold)
    if len(values) < 2:
        raise DataError(f"{ds.source}: fold column has the single value {values[0]}; need two folds or more.")
    if ds.group is not None:
        codes = np.unique(ds.group, return_inverse=True)[1]
        pairs = np.unique(np.stack([codes, ds.fold]), axis=1)
        spread = len(pairs[0]) - len(np.unique(pairs[0]))
        if spread:
            log.warning("%s: %d group(s) span more than one official fold", ds.source, spread)
    folds = []
    for k in values:
        test = ds.fold == k
        folds.append(Fold(int(k), np.flatnonzero(~test), np.flatnonzero(test)))
        missing = set(range(ds.n_classes)) - set(ds.y[~test].tolist())
        if missing:
            log.warning("%s: training rows of fold %d lack class(es) %s", ds.source, k,
                        ", ".join(ds.classes[c] for c in sorted(missing)))
    return folds


def _stratified_folds(ds: Dataset, n_folds: int, seed: int) -> list[Fold]:
    if n_folds < 2:
        raise ConfigError(f"cv.n_folds must be at least 2, got {n_folds}.")
    counts = np.bincount(ds.y, minlength=ds.n_classes)
    small = np.flatnonzero(counts < n_folds)
    if len(small):
        c = small[np.argmin(counts[small])]
        raise DataError(
            f"{ds.source}: label class {ds.classes[c]!r} has {counts[c]} rows, fewer than cv.n_folds={n_folds} "
            "stratified folds; lower cv.n_folds."
        )
    rows = np.zeros(len(ds.y))
    if ds.group is None:
        splits = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(rows, ds.y)
    else:
        n_groups = len(np.unique(ds.group))
        if n_groups < n_folds:
            raise DataError(f"{ds.source}: group column has {n_groups} groups, fewer than cv.n_folds={n_folds} "
                            "folds; lower cv.n_folds.")
        splits = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed).split(rows, ds.y, ds.group)
    return [Fold(k, train.astype(np.int64), test.astype(np.int64)) for k, (train, test) in enumerate(splits, 1)]


def inner_split(
    ds: Dataset, train_idx: np.ndarray, val_fraction: float = 0.15, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``train_idx`` into (fit, val) indices: stratified, grouped when ``ds.group`` exists, seeded.

    Ungrouped: each class with m >= 2 rows puts round(val_fraction * m), clipped to 1..m-1, rows in val.
    Grouped: the first fold of a seeded StratifiedGroupKFold with round(1 / val_fraction) folds (fewer when
    there are fewer groups or rows per class), so no group is in both sets.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"cv.val_fraction must be in (0, 1), got {val_fraction}.")
    train_idx = np.asarray(train_idx, dtype=np.int64)
    y = ds.y[train_idx]
    if ds.group is None:
        rng = np.random.default_rng(seed)
        val = np.zeros(len(train_idx), dtype=bool)
        for c in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == c))
            n_val = min(max(round(val_fraction * len(members)), 1), len(members) - 1)
            val[members[:n_val]] = True
    else:
        groups = ds.group[train_idx]
        n_groups = len(np.unique(groups))
        if n_groups < 2:
            raise DataError(f"{ds.source}: the training rows hold {n_groups} group(s); a grouped validation "
                            "split needs at least two.")
        largest = np.bincount(y).max()
        strata = y if largest >= 2 else np.zeros_like(y)
        n_splits = max(min(round(1 / val_fraction), n_groups, largest), 2)
        splitter = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            _, val_pos = next(splitter.split(np.zeros(len(y)), strata, groups))
        val = np.zeros(len(train_idx), dtype=bool)
        val[val_pos] = True
    return np.sort(train_idx[~val]), np.sort(train_idx[val])
