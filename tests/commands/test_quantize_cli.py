"""``qwave quantize``: one packed artifact per format, calibration without the held-out fold, the PTQ gate."""

from __future__ import annotations

import json

import pytest
import torch

from qwave import artifact
from qwave.cli import main
from qwave.nn import PackedLinear

# the jobs run the timing path without its 0.5 s floor (see the fixture)
pytestmark = pytest.mark.usefixtures("no_timing_floor")


def _formats(directory):
    return [m.fmt.name for m in artifact.load(directory).modules() if isinstance(m, PackedLinear)]


def test_quantize_writes_one_artifact_per_format_and_mixed(fp32_artifact, tiny_table, tmp_path):
    out = tmp_path / "models"
    code = main(["quantize", str(fp32_artifact), "--formats", "8,4", "--layer-formats", "1,8",
                 "--calib", str(tiny_table), "--out", str(out)])
    assert code == 0
    assert _formats(out / "int8") == ["int8", "int8"]
    assert _formats(out / "int4") == ["int4", "int4"]
    assert _formats(out / "mixed_binary_int8") == ["binary", "int8"]
    extra = json.loads((out / "int8" / "manifest.json").read_text())["extra"]
    assert extra["ptq_report"]["rows"] == 42  # 60 rows minus the 18 of held-out fold 1
    assert extra["test_fold"] == "1" and extra["method"] == "ptq"
    # the int8 artifact is the FP32 model quantized: its logits stay close to the original's
    x = torch.randn(5, 8)
    diff = (artifact.load(out / "int8")(x) - artifact.load(fp32_artifact)(x)).abs().max()
    assert diff < 0.05


def test_strict_gate_fails_with_the_format_and_agreement(fp32_artifact, tiny_table, tmp_path, capsys):
    code = main(["quantize", str(fp32_artifact), "--formats", "1", "--calib", str(tiny_table),
                 "--out", str(tmp_path / "q"), "--min-agreement", "1.0", "--strict"])
    err = capsys.readouterr().err
    assert code == 2 and "binary" in err and "agreement" in err and "QAT" in err
    assert not (tmp_path / "q" / "binary").exists()


def test_quantizing_a_quantized_artifact_is_a_clear_error(fp32_artifact, tmp_path, capsys):
    assert main(["quantize", str(fp32_artifact), "--formats", "8", "--out", str(tmp_path / "a")]) == 0
    code = main(["quantize", str(tmp_path / "a" / "int8"), "--formats", "4", "--out", str(tmp_path / "b")])
    assert code == 2
    assert "already quantized (int8)" in capsys.readouterr().err


@pytest.mark.parametrize("formats", [",", " , ", ""])
def test_formats_naming_no_format_is_an_error_not_a_silent_success(fp32_artifact, tmp_path, capsys, formats):
    assert main(["quantize", str(fp32_artifact), "--formats", formats, "--out", str(tmp_path / "q")]) == 2
    assert "names no format" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("options", [[], ["--min-agreement", "0.9"], ["--group-size", "4"], ["--weight-only"]])
def test_quantize_gives_the_benchmarks_ptq_model_with_and_without_explicit_options(tiny_table, tmp_path, options):
    """An FP32 model of the benchmark's fold pipeline quantized by ``qwave quantize`` on its fit rows is the
    benchmark's ``ptq4`` model of the same fold and seed, tensor for tensor (defaults and options alike)."""
    import numpy as np
    import pandas as pd
    from safetensors.torch import load_file

    from qwave.bench.config import BenchConfig, DataConfig, ModelConfig
    from qwave.bench.models import resolve_kind
    from qwave.bench.runner import fit_fold, load_dataset
    from qwave.train import TrainConfig

    model = ModelConfig(hidden=[16], group_size=int(options[1]) if "--group-size" in options else None,
                        weight_only="--weight-only" in options)
    cfg = BenchConfig(data=DataConfig(str(tiny_table), fold="fold", id="name"), model=model,
                      train=TrainConfig(epochs=3, patience=3, batch_size=32), device="cpu")
    ds = load_dataset(cfg)
    test = ds.fold.astype(str) == "1"
    rows = (np.flatnonzero(~test), np.flatnonzero(test), cfg, 0, torch.device("cpu"))
    fp32 = fit_fold(ds, resolve_kind("fp32"), *rows, target=tmp_path / "fp32")
    ptq4 = fit_fold(ds, resolve_kind("ptq4"), *rows, target=tmp_path / "ptq4")
    calib = tmp_path / "fit_rows.csv"
    pd.read_csv(tiny_table).iloc[fp32.fit].to_csv(calib, index=False)
    out = tmp_path / "q"
    assert main(["quantize", str(tmp_path / "fp32"), "--formats", "4", "--calib", str(calib), "--out", str(out),
                 *options]) == 0
    mine, bench = load_file(out / "int4" / "model.safetensors"), load_file(tmp_path / "ptq4" / "model.safetensors")
    assert mine.keys() == bench.keys() and all(torch.equal(mine[k], bench[k]) for k in mine)
    assert json.loads((out / "int4" / "manifest.json").read_text())["extra"]["ptq_report"]["rows"] == len(ptq4.fit)
