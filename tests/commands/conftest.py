"""A tiny table and one FP32 artifact trained on it by ``qwave train``, shared by the command tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwave.cli import main

TRAIN_FAST = ["--hidden", "16", "--epochs", "4", "--patience", "4", "--batch-size", "32"]


@pytest.fixture
def fp32_artifact(tiny_table: Path, tmp_path: Path) -> Path:
    out = tmp_path / "models" / "fp32"
    assert main(["train", "--data", str(tiny_table), "--out", str(out), "--test-fold", "1", *TRAIN_FAST]) == 0
    return out
