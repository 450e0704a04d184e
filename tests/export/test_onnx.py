"""ONNX export: the file runs in stock ONNX Runtime and gives qwave's logits (integer formats to the bit, within the
stated tolerance), holds the packed bytes themselves, and names its classes."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from export_models import INTEGER, edge_rows, matrix

import qwave
from qwave import artifact
from qwave.cli import main
from qwave.errors import ArtifactError

pytest.importorskip("onnx", reason="the onnx extra is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")

from qwave.export.onnx import export_onnx, session  # noqa: E402

# Integer formats: the same integer dots and float32 epilogue as qwave, so the logits should be equal; allowed: one
# float32 rounding of the epilogue (relative 2^-22). Float formats and the weight-only option: another summation
# order, within 1e-5 relative to the largest logit.
INTEGER_RTOL = 2.0**-22
FLOAT_RTOL = 1e-5


@pytest.mark.parametrize(("table", "spec"), matrix())
def test_onnx_export_gives_qwaves_logits_on_every_bundled_row(trained, tmp_path, table, spec):
    models = trained[table]
    path = models.artifact(spec)
    done = export_onnx(path, tmp_path / "m.onnx")
    got = session(done.path).run(["logits"], {"x": models.X})[0]
    want = qwave.load(path).logits(models.X)
    scale = np.abs(want).max()
    if spec in INTEGER:
        np.testing.assert_allclose(got, want, rtol=0, atol=INTEGER_RTOL * scale)
        assert np.array_equal(got.argmax(1), want.argmax(1))
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=FLOAT_RTOL * scale)
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.999


@pytest.mark.parametrize("spec", ["int8", "ternary", "int4:group_size=64", "int3"])
def test_onnx_export_gives_qwaves_logits_at_the_activation_recipes_corners(trained, tmp_path, spec):
    """Rows of all zeros (scale 0), all negative (zero point 127), all positive (zero point 0) and mixed signs into
    the first layer: the zero-point correction gives qwave's logits; the rows are checked to reach those corners."""
    path = trained["fsdd"].artifact(spec)
    X, _ = edge_rows(path)
    model = qwave.load(path)
    got = session(export_onnx(path, tmp_path / "m.onnx").path).run(["logits"], {"x": X})[0]
    want = model.logits(X)
    np.testing.assert_allclose(got, want, rtol=0, atol=INTEGER_RTOL * np.abs(want).max())
    assert np.array_equal(got.argmax(1), want.argmax(1))


@pytest.mark.parametrize("spec", ["fp32", "int8"])
def test_onnx_l2_normaliser_agrees_to_float_rounding(trained, tmp_path, spec):
    """The l2 norm sums in another order than PyTorch's: the normalised rows differ in the last bit, which can move an
    int8 activation code by one step, so only the float tolerance on the logits and the argmax agreement hold."""
    models = trained["fsdd-l2"]
    path = models.artifact(spec)
    got = session(export_onnx(path, tmp_path / "m.onnx").path).run(["logits"], {"x": models.X})[0]
    want = qwave.load(path).logits(models.X)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-2 * np.abs(want).max())
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.999


@pytest.mark.parametrize("spec", ["int8", "int4", "int3", "ternary", "binary", "qesc", "fp16"])
def test_onnx_file_holds_the_packed_weights_not_a_wider_copy(trained, tmp_path, spec):
    import onnx

    path = trained["fsdd"].artifact(spec)
    done = export_onnx(path, tmp_path / "m.onnx")
    model = onnx.load(str(done.path))
    weights = sum(len(t.raw_data) for t in model.graph.initializer
                  if t.name.startswith(("packed", "codes", "weight")))
    stored = qwave.load(path).model
    packed = sum(t.numel() * t.element_size() for m in stored.body if hasattr(m, "packed")
                 for t in m.packed.values() if t.dtype.is_floating_point is False or spec == "fp16")
    assert weights == packed
    assert done.bytes == done.path.stat().st_size
    assert json.loads({p.key: p.value for p in model.metadata_props}["classes"]) == trained["fsdd"].ds.classes


def test_onnx_int8_agrees_with_qwave_on_the_bundled_esc50_rows(trained, tmp_path):
    models = trained["esc50"]
    path = models.artifact("int8")
    got = session(export_onnx(path, tmp_path / "m.onnx").path).run(["logits"], {"x": models.X})[0]
    agree = (got.argmax(1) == qwave.load(path).logits(models.X).argmax(1)).mean()
    assert agree >= 0.999


def test_exporting_a_damaged_artifact_fails_with_the_load_error(trained, tmp_path, capsys):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(trained["fsdd"].artifact("int8"), damaged)
    weights = damaged / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as loading:
        qwave.load(damaged)
    for target in ("onnx", "c"):
        assert main(["export", str(damaged), "--to", target, "--out", str(tmp_path / f"out_{target}")]) == 2
        assert capsys.readouterr().err.strip() == f"qwave export: error: {loading.value}"
    assert not (tmp_path / "out_onnx").exists() and not (tmp_path / "out_c").exists()


def test_a_missing_onnx_package_is_one_line_naming_the_extra(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)
    path = trained["fsdd"].artifact("int8")
    assert main(["export", str(path), "--to", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "qwave[onnx]" in err


def test_a_moe_artifact_is_refused_naming_what_is_missing(tmp_path, capsys):

    from qwave.moe.model import MoEClassifier, quantize_moe
    from qwave.nn.surgery import pack_model

    torch.manual_seed(0)
    moe = quantize_moe(MoEClassifier(6, 3, ["8", "bitnet"], hidden=[8], router_hidden=8))
    artifact.save(pack_model(moe.eval()), tmp_path / "moe", classes=["a", "b", "c"])
    assert main(["export", str(tmp_path / "moe"), "--to", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'moe' architecture does not export yet" in err and "router" in err


def test_export_command_prints_the_file_bytes_beside_the_stored_bytes(trained, tmp_path, capsys):
    from qwave.size import artifact_report

    path = trained["fsdd"].artifact("ternary")
    out = tmp_path / "m.onnx"
    assert main(["export", str(path), "--to", "onnx", "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert f"{out.stat().st_size:,} bytes" in line and f"{artifact_report(path).stored_bytes:,} stored" in line
