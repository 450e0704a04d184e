"""A tiny, quickly learnable table and a fast benchmark config for runner tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qwave.bench.config import BenchConfig, CVConfig, DataConfig, ModelConfig
from qwave.train import TrainConfig


@pytest.fixture
def separable_table(tmp_path):
    """90 rows, 3 classes, 3 official folds, groups of 2 rows (a group never spans two folds), 6 features.

    Feature 0 carries the row number so a test can tell exactly which rows reached training.
    """
    rng = np.random.default_rng(0)
    n = 90
    y = np.arange(n) % 3
    fold = (np.arange(n) // 2) % 3 + 1
    X = rng.normal(size=(n, 6)) + 3.0 * np.eye(3, 6)[y]
    X[:, 0] = np.arange(n)
    frame = pd.DataFrame(X, columns=[str(i) for i in range(6)])
    frame.insert(0, "name", [f"clip{i:03d}" for i in range(n)])
    frame.insert(0, "clip", [f"g{i // 2}" for i in range(n)])
    frame.insert(0, "label", [f"class_{c}" for c in y])
    frame.insert(0, "fold", fold)
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def fast_config(separable_table, tmp_path) -> BenchConfig:
    return BenchConfig(
        tag="t",
        models=["fp32"],
        data=DataConfig(path=str(separable_table), group="clip"),
        cv=CVConfig(folds="official"),
        model=ModelConfig(hidden=[16]),
        train=TrainConfig(epochs=4, batch_size=16, patience=10),
        output_dir=str(tmp_path / "out"),
        quiet=True,
        device="cpu",
    )
