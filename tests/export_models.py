"""Small models trained on the bundled tables in every single-model format, saved as artifacts, for the export tests
(``tests/export/conftest.py`` holds one cache of them for the session: each (table, format) is trained once, on first
use)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qwave import artifact
from qwave.data import TableSpec, fit_normalizer, load_table
from qwave.data.source import table_path
from qwave.formats import QuantPlan
from qwave.formats.base import quantize_rows_int8
from qwave.nn import MLPClassifier, pack_model, quantize_model
from qwave.nn.mlp import activation_for
from qwave.train import TrainConfig, train_model

# Every single-model format of ``qwave size --formats`` (``qwave/formats/``), then two options that change the recipe:
# grouped int4 scales (W4A8 per group of 64 inputs) and the weight-only float-activation ternary.
FORMATS = ["fp32", "fp16", "bf16", "int8", "int7", "int6", "int5", "int4", "int3", "int2", "ternary", "binary", "qesc",
           "int4:group_size=64", "ternary:activations=float"]
FAST = {"fp32", "fp16", "int8", "int4", "ternary", "binary", "qesc"}  # the rest of the matrix is marked slow
INTEGER = {f for f in FORMATS if f.split(":")[0] not in ("fp32", "fp16", "bf16") and "float" not in f}
TABLES = ("esc50", "fsdd")
TRAIN_ROWS = 600  # rows each test model trains on; every row of the table is then exported and compared


def matrix() -> list:
    """(table, format) pairs of every bundled table and format; those outside ``FAST`` marked slow."""
    return [pytest.param(table, spec, marks=() if spec in FAST else pytest.mark.slow)
            for table in TABLES for spec in FORMATS]


def format_options(spec: str) -> tuple[str, dict]:
    name, _, option = spec.partition(":")
    if not option:
        return name, {}
    key, value = option.split("=")
    return name, {key: int(value) if value.isdigit() else value}


class Trained:
    """Rows of a bundled table and a cache of small artifacts trained on them."""

    def __init__(self, table: str, root: Path, normalize: str = "standard") -> None:
        self.table, self.root, self.normalize = table, root, normalize
        ds = load_table(TableSpec(path=table_path(f"bundled:{table}")))
        self.ds = ds
        self.X = np.ascontiguousarray(ds.X, np.float32)
        self._paths: dict[str, Path] = {}

    def artifact(self, spec: str) -> Path:
        if spec not in self._paths:
            name, options = format_options(spec)
            torch.manual_seed(0)
            ds = self.ds
            model = MLPClassifier(ds.n_features, ds.n_classes, (32, 16), 0.1,
                                  normalize=fit_normalizer(ds.X, self.normalize),
                                  activation=activation_for([name]))
            if name != "fp32":
                model = quantize_model(model, QuantPlan.parse(name, **options))
            fit = np.random.default_rng(0).permutation(len(ds.y))[:TRAIN_ROWS]  # a small model, quickly trained
            train_model(model, ds.X[fit], ds.y[fit], ds.X[fit[:100]], ds.y[fit[:100]], ds.n_classes,
                        TrainConfig(epochs=2, batch_size=256, patience=2, warmup_epochs=0), seed=0)
            path = self.root / spec.replace(":", "_").replace("=", "")
            artifact.save(pack_model(model), path, classes=ds.classes)
            self._paths[spec] = path
        return self._paths[spec]


def edge_rows(path: Path) -> tuple[np.ndarray, torch.Tensor]:
    """Float32 input rows whose normalised values sit at the corners of the first layer's activation recipe
    (``quantize_rows_int8``): all 0 (scale 0), all negative (zero point 127), all positive (zero point 0), and mixed
    signs from small to large zero points; built through the artifact's stored ``(x - shift) / scale``. Checks that
    the rows reach those corners; returns them with their activation scales ``[rows, 1]``."""
    norm = artifact.load(path).norm
    if norm.mode not in ("standard", "min_max"):
        raise ValueError(f"edge rows need a shift / scale normaliser, not {norm.mode!r}")
    shift, scale = norm.shift.float().numpy(), norm.scale.float().numpy()
    n = shift.shape[0]
    ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
    wanted = [np.zeros(n, np.float32), np.full(n, -3.0, np.float32), np.full(n, 2.0, np.float32),
              ramp - 0.01, ramp - 0.5, 3 * ramp - 2.9, np.where(ramp > 0.5, -ramp, ramp / 7)]
    rows = np.ascontiguousarray(np.stack([shift + v * scale for v in wanted]), np.float32)
    _, zero, act_scale = quantize_rows_int8(norm(torch.from_numpy(rows)))
    assert act_scale[0].item() == 0 and zero[1].item() == 127 and zero[2].item() == 0 and 0 < zero[3:].min() < 127
    return rows, act_scale
