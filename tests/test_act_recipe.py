"""W·A8 artifacts saved before the 128-level zero-point activations keep their symmetric recipe: the manifest's
format options say which recipe a layer was saved with, and a layer without the option runs the old one exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from artifact_files import reseal

from qwave import artifact
from qwave.formats import get_format
from qwave.nn import MLPClassifier, pack_model, quantize_model


def _symmetric_reference(x: np.ndarray, codes: np.ndarray, w_scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """One W8A8 layer as qwave computed it before: s = max|x|/127 (float32), q = rint(x/s), exact integer dots."""
    s = (np.abs(x).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    q = np.where(s > 0, np.clip(np.rint(x / np.where(s > 0, s, 1)), -127, 127), 0).astype(np.int64)
    acc = q @ codes.astype(np.int64).T
    return (s.astype(np.float64) * acc * w_scale.astype(np.float64).T + bias).astype(np.float32)


def _model(fmt: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return pack_model(quantize_model(MLPClassifier(24, 5, (16,), normalize=None), fmt).eval())


@pytest.mark.parametrize("fmt", ["int8", "int4", "ternary"])
def test_new_artifacts_record_the_zero_point_recipe(tmp_path, fmt):
    artifact.save(_model(fmt), tmp_path / "a", classes=list("abcde"))
    layers = artifact.read_manifest(tmp_path / "a")["layers"]
    assert {spec["options"]["act_recipe"] for spec in layers.values()} == {"zero_point"}


def test_an_int8_artifact_without_the_option_runs_the_symmetric_recipe_exactly(tmp_path):
    model = _model("int8")
    artifact.save(model, tmp_path / "a", classes=list("abcde"))

    def drop_recipe(manifest: dict) -> None:
        for spec in manifest["layers"].values():
            spec["options"].pop("act_recipe")

    reseal(tmp_path / "a", drop_recipe)
    old = artifact.load(tmp_path / "a")
    x = torch.randn(9, 24, generator=torch.Generator().manual_seed(1)) * 3
    layers = [m for m in old.modules() if hasattr(m, "fmt")]
    assert [m.fmt.act_recipe for m in layers] == ["symmetric", "symmetric"]
    fmt = get_format("int8")
    h = x.numpy()
    for i, layer in enumerate(layers):
        q = fmt.unpack(layer.packed, layer.shape)
        h = _symmetric_reference(h, q.codes.numpy(), q.scale.float().numpy(), layer.bias.detach().numpy())
        if i == 0:
            h = np.maximum(h, 0)
    with torch.no_grad():
        got = old(x).numpy()
    np.testing.assert_allclose(got, h, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        new = model(x).numpy()
    assert not np.allclose(got, new, rtol=0, atol=1e-6)  # the recipes differ on signed inputs


def test_export_refuses_an_artifact_of_the_symmetric_recipe_in_one_line(tmp_path):
    from qwave.export.model import ExportError, read_model

    artifact.save(_model("int4"), tmp_path / "a", classes=list("abcde"))
    reseal(tmp_path / "a", lambda m: [spec["options"].pop("act_recipe") for spec in m["layers"].values()])
    with pytest.raises(ExportError, match="symmetric") as err:
        read_model(tmp_path / "a")
    assert "\n" not in str(err.value) and "body.0" in str(err.value)
