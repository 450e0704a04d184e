"""An MLP with LayerNorm between its layers exports to both targets (LayerNorm sums in another order than PyTorch, so
its logits agree to float32 rounding; the argmax on >= 99.9% of the rows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_models import Trained

import qwave
from qwave import artifact
from qwave.data import fit_normalizer
from qwave.nn import MLPClassifier, pack_model, quantize_model
from qwave.train import TrainConfig, train_model


@pytest.fixture(scope="module")
def layer_norm_artifact(tmp_path_factory) -> tuple:
    models = Trained("fsdd", tmp_path_factory.mktemp("ln"))
    ds = models.ds
    torch.manual_seed(0)
    model = MLPClassifier(ds.n_features, ds.n_classes, (32, 16), 0.1, layer_norm=True,
                          normalize=fit_normalizer(ds.X, "min_max"))
    model = quantize_model(model, "int8")
    fit = np.random.default_rng(0).permutation(len(ds.y))[:600]
    train_model(model, ds.X[fit], ds.y[fit], ds.X[fit[:100]], ds.y[fit[:100]], ds.n_classes,
                TrainConfig(epochs=2, batch_size=256, patience=2, warmup_epochs=0), seed=0)
    path = artifact.save(pack_model(model), models.root / "ln_int8", classes=ds.classes)
    return path, models.X


def agree(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-2 * np.abs(want).max())
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.999


def test_layer_norm_model_exports_to_onnx(layer_norm_artifact, tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from qwave.export.onnx import export_onnx, session

    path, X = layer_norm_artifact
    got = session(export_onnx(path, tmp_path / "m.onnx").path).run(["logits"], {"x": X})[0]
    agree(got, qwave.load(path).logits(X))


def test_layer_norm_model_exports_to_c(layer_norm_artifact, tmp_path):
    from qwave.export.c import compiler, export_c
    from qwave.export.speed import c_library, c_method

    if compiler() is None:
        pytest.skip("no C compiler (cc or $CC) on this machine")
    path, X = layer_norm_artifact
    got = c_method(*c_library(export_c(path, tmp_path / "c", measure=False).directory))(torch.from_numpy(X))
    agree(got, qwave.load(path).logits(X))
