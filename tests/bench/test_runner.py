"""End-to-end benchmark runs on a tiny table: output files, no test-fold leakage, determinism, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import qwave.bench.runner as runner
from qwave.bench.config import DataConfig
from qwave.bench.runner import run_benchmark
from qwave.errors import ConfigError

TIMING_KEYS = {"train", "inference_seconds", "inference_ms_per_sample", "first_call_seconds", "peak_rss_mb",
               "peak_rss_delta_mb", "history"}


def test_run_writes_every_documented_output(fast_config):
    rows = run_benchmark(fast_config)
    root = Path(fast_config.output_dir) / "t"
    for k in (1, 2, 3):
        fold = root / "fp32" / f"fold_{k}"
        for name in ("metrics.json", "predictions.csv", "confusion.png", "curves.png", "artifact/manifest.json"):
            assert (fold / name).is_file(), name
        metrics = json.loads((fold / "metrics.json").read_text())
        preds = pd.read_csv(fold / "predictions.csv")
        assert len(preds) == metrics["n_test"] == 30
        assert {"id", "label", "pred", "p_class_0"} <= set(preds.columns)
        assert metrics["artifact_agreement"]["top1_agreement"] == 1.0
        assert np.isclose(metrics["accuracy"], (preds.label == preds.pred).mean())
    summary = json.loads((root / "fp32" / "summary.json").read_text())
    assert summary["n_runs"] == 3 and summary["folds"] == [1, 2, 3]
    table = pd.read_csv(root / "summary.csv")
    assert list(table.model) == ["fp32"] and rows[0]["runs"] == 3
    assert not list(root.rglob(".*.tmp")), "no temporary file may be left behind"


def test_test_fold_rows_never_reach_training_or_validation(fast_config, monkeypatch):
    seen = []
    real_train = runner.train_model

    def spy(model, X_fit, y_fit, X_val, y_val, *args, **kwargs):
        seen.append((X_fit[:, 0].astype(int), X_val[:, 0].astype(int)))
        return real_train(model, X_fit, y_fit, X_val, y_val, *args, **kwargs)

    monkeypatch.setattr(runner, "train_model", spy)
    run_benchmark(fast_config)
    table = pd.read_csv(fast_config.data.path)
    for (fit_rows, val_rows), k in zip(seen, (1, 2, 3), strict=True):
        test_rows = set(np.flatnonzero(table.fold == k))
        assert not test_rows & set(fit_rows) and not test_rows & set(val_rows)
        assert not set(fit_rows) & set(val_rows)
        assert set(fit_rows) | set(val_rows) | test_rows == set(range(len(table)))
        fit_groups, val_groups = set(table["clip"][fit_rows]), set(table["clip"][val_rows])
        assert not fit_groups & val_groups and not (fit_groups | val_groups) & set(table["clip"][list(test_rows)])


def test_normaliser_is_fitted_on_fit_rows_only(fast_config, monkeypatch):
    captured = []
    real_train = runner.train_model

    def spy(model, X_fit, *args, **kwargs):
        captured.append((model.norm.shift.clone().numpy(), X_fit.mean(0)))
        return real_train(model, X_fit, *args, **kwargs)

    monkeypatch.setattr(runner, "train_model", spy)
    run_benchmark(fast_config)
    assert len(captured) == 3
    for shift, fit_mean in captured:
        np.testing.assert_allclose(shift, fit_mean, rtol=1e-5, atol=1e-4)


def _without_timing(path: Path) -> dict:
    record = json.loads(path.read_text())
    return {key: value for key, value in record.items() if key not in TIMING_KEYS}


def test_same_config_and_seed_give_identical_metrics(fast_config, tmp_path):
    run_benchmark(fast_config)
    fast_config.output_dir = str(tmp_path / "again")
    run_benchmark(fast_config)
    for k in (1, 2, 3):
        first = _without_timing(tmp_path / "out/t/fp32" / f"fold_{k}/metrics.json")
        second = _without_timing(tmp_path / "again/t/fp32" / f"fold_{k}/metrics.json")
        assert first == second


def test_resume_skips_finished_folds(fast_config, monkeypatch):
    run_benchmark(fast_config)
    fast_config.resume = True

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(runner, "run_fold", forbidden)
    rows = run_benchmark(fast_config)
    assert rows[0]["runs"] == 3


def test_several_seeds_are_aggregated(fast_config):
    fast_config.seeds = [0, 1]
    rows = run_benchmark(fast_config)
    assert rows[0]["runs"] == 6
    assert (Path(fast_config.output_dir) / "t/fp32/fold_2_seed_1/metrics.json").is_file()


@pytest.mark.parametrize("models", [[], ["int99"], ["ptqnope"]])
def test_unknown_model_is_a_config_error(fast_config, models):
    fast_config.models = models
    with pytest.raises(ConfigError, match="models"):
        run_benchmark(fast_config)


def test_quantized_mixed_and_ptq_models_deploy_and_agree_with_their_simulation(fast_config):
    fast_config.models = ["8", "1-1", "ptq4", "ptq1"]
    fast_config.plots = False
    rows = run_benchmark(fast_config)
    root = Path(fast_config.output_dir) / "t"
    assert {r["model"] for r in rows} == {"8", "1-1", "ptq4", "ptq1"}
    for name in ("8", "1-1", "ptq4"):
        metrics = json.loads((root / name / "fold_1" / "metrics.json").read_text())
        assert metrics["artifact_agreement"]["top1_agreement"] >= 0.995
    manifest = json.loads((root / "1-1" / "fold_1" / "artifact" / "manifest.json").read_text())
    assert "binary" in json.dumps(manifest["layers"])
    ptq = json.loads((root / "ptq4" / "fold_1" / "metrics.json").read_text())
    assert ptq["method"] == "ptq" and 0.0 <= ptq["ptq_report"]["agreement"] <= 1.0
    fp32_bytes = json.loads((root / "8" / "fold_1" / "metrics.json").read_text())["stored_bytes"]
    assert ptq["stored_bytes"] < fp32_bytes


def test_binary_qat_learns_because_hidden_activations_are_signed(fast_config):
    fast_config.models = ["1"]
    fast_config.plots = False
    fast_config.train.epochs = 60
    fast_config.train.patience = 60
    fast_config.train.lr = 1e-2
    run_benchmark(fast_config)
    root = Path(fast_config.output_dir) / "t" / "1"
    accuracy = np.mean([json.loads((root / f"fold_{k}" / "metrics.json").read_text())["accuracy"] for k in (1, 2, 3)])
    manifest = json.loads((root / "fold_1" / "artifact" / "manifest.json").read_text())
    assert manifest["architecture"]["config"]["activation"] == "hardtanh"
    assert accuracy > 0.6  # with model.activation=relu the same run reaches 0.39 (chance is 1/3)


@pytest.mark.parametrize(("mode", "bytes_per_row"), [("int8", 6), ("sign", 1)])
def test_input_quantization_is_fitted_on_training_rows_and_reported(fast_config, mode, bytes_per_row):
    fast_config.data.input_quant = mode
    fast_config.plots = False
    rows = run_benchmark(fast_config)
    metrics = json.loads((Path(fast_config.output_dir) / "t" / "fp32" / "fold_1" / "metrics.json").read_text())
    assert metrics["input_quant"]["bytes_per_embedding"] == bytes_per_row  # 6 features: 6 int8 codes or 6 bits
    assert metrics["input_quant"]["float32_bytes_per_embedding"] == 24
    assert rows[0]["input_quant"] == mode and rows[0]["input_bytes_per_embedding"] == bytes_per_row


def test_unknown_input_quantization_names_the_option(fast_config):
    fast_config.data.input_quant = "int4"
    with pytest.raises(ConfigError, match="data.input_quant='int4'"):
        run_benchmark(fast_config)


def test_input_quantizer_is_fitted_on_the_fit_rows_only_like_the_normaliser(fast_config, monkeypatch):
    fitted, trained = [], []
    real_fit, real_train = runner.fit_input_quantizer, runner.train_model

    def spy_fit(X_train, mode):
        fitted.append(set(X_train[:, 0].astype(int)))
        return real_fit(X_train, mode)

    def spy_train(model, X_fit, *args, **kwargs):
        trained.append(set(np.rint(X_fit[:, 0]).astype(int)))  # int8 codes of row numbers 0..89 decode within 0.18
        return real_train(model, X_fit, *args, **kwargs)

    monkeypatch.setattr(runner, "fit_input_quantizer", spy_fit)
    monkeypatch.setattr(runner, "train_model", spy_train)
    fast_config.data.input_quant = "int8"
    fast_config.plots = False
    run_benchmark(fast_config)
    table = pd.read_csv(fast_config.data.path)
    for rows, fit_rows, k in zip(fitted, trained, (1, 2, 3), strict=True):
        assert rows == fit_rows and not rows & set(np.flatnonzero(table.fold == k))
        assert len(rows) < (table.fold != k).sum()  # the inner validation rows are left out


def test_the_inner_validation_split_uses_the_tables_group_column_by_default(fast_config, monkeypatch):
    table = pd.read_csv(fast_config.data.path).rename(columns={"clip": "group"})
    table.to_csv(fast_config.data.path, index=False)
    fast_config.data = DataConfig(path=fast_config.data.path)  # defaults: the column ``group`` when present
    seen = []
    real_train = runner.train_model

    def spy(model, X_fit, y_fit, X_val, *args, **kwargs):
        seen.append((X_fit[:, 0].astype(int), X_val[:, 0].astype(int)))
        return real_train(model, X_fit, y_fit, X_val, *args, **kwargs)

    monkeypatch.setattr(runner, "train_model", spy)
    run_benchmark(fast_config)
    assert len(seen) == 3
    for fit_rows, val_rows in seen:
        assert not set(table["group"][fit_rows]) & set(table["group"][val_rows])
