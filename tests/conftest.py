"""Shared test fixtures: the path to the real data in ../shared/data and a tiny synthetic embedding table."""

from __future__ import annotations

import functools
import random
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(autouse=True)
def _seeded_global_rngs(request) -> None:
    """Every test starts from global RNG states derived from its own id, so a test that draws from torch's, NumPy's
    or Python's global generator gives the same numbers alone, in any order and on every run."""
    seed = zlib.crc32(request.node.nodeid.encode())
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture
def shared_data() -> Path:
    """../shared/data relative to the repository root (may be absent)."""
    return SHARED_DATA


@pytest.fixture
def require_shared() -> Callable[[str], Path]:
    """``require_shared(name)``: the path of ../shared/data/<name>, skipping the test when it is absent."""

    def require(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.exists():
            pytest.skip(f"real data ../shared/data/{name} not present")
        return path

    return require


@pytest.fixture
def tiny_table(tmp_path: Path) -> Path:
    """A CSV of 3 classes x 20 rows: fold 1..4, group (2 rows each, one fold per group), name, 8 features."""
    rng = np.random.default_rng(0)
    rows = []
    for label in ["bird", "cat", "dog"]:
        for i in range(20):
            group = f"{label}-rec{i // 2}"
            rows.append({"fold": (i // 2) % 4 + 1, "name": f"{label}_{i}.wav", "group": group, "label": label})
    frame = pd.DataFrame(rows)
    y = np.repeat(np.arange(3), 20)
    features = rng.normal(size=(60, 8)) + y[:, None]
    frame = pd.concat([frame, pd.DataFrame(features, columns=[f"f{j}" for j in range(8)])], axis=1)
    path = tmp_path / "tiny.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def no_timing_floor(monkeypatch) -> None:
    """Benchmark jobs time their warm forwards for ``measure.ROUNDS`` rounds without the ``MIN_SECONDS`` floor:
    tests of what jobs compute and write need the timing path, not a stable speed (the floor alone was 22 of the
    tiny study's 28 s). ``tests/bench/test_measure.py`` checks the timing rules themselves."""
    from qwave.bench import measure, runner

    monkeypatch.setattr(runner, "timed_inference", functools.partial(measure.timed_inference, min_seconds=0.0))
