"""End-to-end benchmark runs on a tiny table: output files, no test-fold leakage, determinism, resume."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import qwave.bench.runner as runner
from qwave.bench.config import DataConfig
from qwave.bench.runner import run_benchmark
from qwave.errors import ConfigError

# the jobs run the timing path without its 0.5 s floor (see the fixture)
pytestmark = pytest.mark.usefixtures("no_timing_floor")

TIMING_KEYS = {"train", "inference_seconds", "inference_ms_per_sample", "first_call_seconds", "peak_rss_mb",
               "peak_rss_delta_mb", "history", "inference_repeats", "fp32_twin_ms_per_sample", "speed_vs_fp32"}


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


def test_several_seeds_are_averaged_within_each_fold_and_the_summary_says_so(fast_config):
    fast_config.seeds, fast_config.plots = [0, 1], False
    rows = run_benchmark(fast_config)
    root = Path(fast_config.output_dir) / "t/fp32"
    assert rows[0]["runs"] == 6 and (root / "fold_2_seed_1/metrics.json").is_file()
    f1 = {(k, s): json.loads((root / (f"fold_{k}_seed_{s}" if s else f"fold_{k}") / "metrics.json").read_text())
          ["macro_f1"] for k in (1, 2, 3) for s in (0, 1)}
    fold_means = [(f1[(k, 0)] + f1[(k, 1)]) / 2 for k in (1, 2, 3)]
    summary = json.loads((root / "summary.json").read_text())
    stats = summary["metrics"]["macro_f1"]
    assert stats["n"] == 3 and stats["n_runs"] == 6
    assert stats["std"] == pytest.approx(np.std(fold_means, ddof=1))
    assert stats["ci95"] == pytest.approx(4.302652729911275 * np.std(fold_means, ddof=1) / np.sqrt(3))
    assert "seeds averaged within each fold" in summary["interval"]


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


def test_weight_only_option_gives_float_activation_artifacts(fast_config):
    fast_config.models = ["4", "bitnet"]
    fast_config.model.weight_only = True
    fast_config.plots = False
    run_benchmark(fast_config)
    root = Path(fast_config.output_dir) / "t"
    for name in ("4", "bitnet"):
        manifest = json.loads((root / name / "fold_1" / "artifact" / "manifest.json").read_text())
        assert all(spec["options"]["activations"] == "float" for spec in manifest["layers"].values()
                   if spec["format"] != "fp32")


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


# --- A tag never mixes runs (issue 13, item 3) ------------------------------------------------------------------


def _summary(config) -> dict:
    return json.loads((Path(config.output_dir) / config.tag / "fp32" / "summary.json").read_text())


def test_five_folds_then_three_under_one_tag_count_the_three_new_folds_only(fast_config):
    fast_config.data.fold, fast_config.cv.folds, fast_config.plots = None, "stratified", False
    fast_config.cv.n_folds = 5
    run_benchmark(fast_config)
    fast_config.cv.n_folds = 3
    rows = run_benchmark(fast_config)
    summary = _summary(fast_config)
    assert rows[0]["runs"] == 3 and summary["n_runs"] == 3 and summary["folds"] == [1, 2, 3]
    fingerprints = {json.loads((Path(fast_config.output_dir) / "t/fp32" / f"fold_{k}/metrics.json").read_text())
                    ["fingerprint"]["config"]["cv"]["n_folds"] for k in (1, 2, 3)}
    assert fingerprints == {3}


def test_a_rerun_with_other_models_tabulates_only_its_own_models(fast_config):
    fast_config.plots = False
    run_benchmark(fast_config)
    fast_config.models = ["8"]
    rows = run_benchmark(fast_config)
    assert [r["model"] for r in rows] == ["8"]
    assert list(pd.read_csv(Path(fast_config.output_dir) / "t" / "summary.csv").model.astype(str)) == ["8"]


def test_resume_with_another_table_trains_again_and_says_what_differs(fast_config, tmp_path, caplog):
    fast_config.plots = False
    run_benchmark(fast_config)
    other = tmp_path / "other.csv"
    table = pd.read_csv(fast_config.data.path)
    table.loc[0, "3"] += 1.0
    table.to_csv(other, index=False)
    fast_config.data.path, fast_config.resume = str(other), True
    trained = []
    real = runner.run_fold
    with caplog.at_level(logging.WARNING, logger="qwave.bench.provenance"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(runner, "run_fold", lambda *a, **k: trained.append(1) or real(*a, **k))
            run_benchmark(fast_config)
    assert len(trained) == 3
    assert any("not resumed" in r.getMessage() and "data.sha256" in r.getMessage() for r in caplog.records)


def test_resume_with_other_epochs_names_the_setting(fast_config, caplog):
    fast_config.plots = False
    run_benchmark(fast_config)
    fast_config.resume, fast_config.train.epochs = True, 2
    with caplog.at_level(logging.WARNING, logger="qwave.bench.provenance"):
        run_benchmark(fast_config)
    assert any("train.epochs: 4 -> 2" in r.getMessage() for r in caplog.records)
    assert {json.loads(p.read_text())["train"]["epochs_run"]
            for p in (Path(fast_config.output_dir) / "t/fp32").glob("fold_*/metrics.json")} == {2}


def test_the_fingerprint_ignores_settings_that_do_not_change_the_result(fast_config, tmp_path):
    fast_config.plots, fast_config.save_artifacts = False, False
    run_benchmark(fast_config)
    first = json.loads((Path(fast_config.output_dir) / "t/fp32/fold_1/metrics.json").read_text())["fingerprint"]
    fast_config.plots, fast_config.output_dir, fast_config.quiet = True, str(tmp_path / "elsewhere"), False
    run_benchmark(fast_config)
    again = json.loads((tmp_path / "elsewhere/t/fp32/fold_1/metrics.json").read_text())["fingerprint"]
    assert again == first


def test_a_second_writer_on_a_live_tag_is_refused(fast_config, tmp_path):
    from qwave.bench import provenance

    root = Path(fast_config.output_dir) / "t"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from qwave.bench.provenance import tag_lock\n"
        f"with tag_lock(Path({str(root)!r})):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=r"being written by another qwave bench.*pid"):
            run_benchmark(fast_config)
    finally:
        holder.kill()
        holder.wait()
    assert not (root / "fp32").exists()
    with provenance.tag_lock(root, shared=True):  # jobs of one multirun share the tag...
        with provenance.job_lock(root / "fp32" / "fold_2"):  # ...but never a fold
            with pytest.raises(ConfigError, match="fold_2 is being written"):
                run_benchmark(fast_config, sweep_plan=tmp_path / "plan.json")
    run_benchmark(fast_config)  # the locks die with their holders: nothing is left locked


def test_a_multirun_over_seeds_gathers_exactly_its_jobs(separable_table, tmp_path, capsys):
    from qwave.cli import main

    common = [f"data.path={separable_table}", "data.group=clip", "cv.folds=official", "model.hidden=[8]",
              "train.epochs=2", "train.batch_size=16", f"output_dir={tmp_path}", "tag=sweep", "quiet=true",
              "plots=false", "device=cpu", "save_artifacts=false"]
    assert main(["bench", *common, "models=[4]"]) == 0  # an earlier run under the tag
    assert main(["bench", "-m", *common, "models=[fp32]", "seed=0,1"]) == 0
    summary = json.loads((tmp_path / "sweep" / "fp32" / "summary.json").read_text())
    assert summary["n_runs"] == 6 and summary["seeds"] == [0, 1] and summary["folds"] == [1, 2, 3]
    assert summary["metrics"]["macro_f1"]["n"] == 3 and summary["metrics"]["macro_f1"]["n_runs"] == 6
    assert list(pd.read_csv(tmp_path / "sweep" / "summary.csv").model.astype(str)) == ["fp32"]
    assert main(["gather", str(tmp_path / "sweep")]) == 0  # an explicit gather still merges every model summary
    assert sorted(pd.read_csv(tmp_path / "sweep" / "summary.csv").model.astype(str)) == ["4", "fp32"]


def test_threads_hold_after_packed_kernels_ran(fast_config):
    """``threads`` covers numba's parallel kernels too: their OpenMP pool, started by the first packed kernel (in a
    fresh process), otherwise resets torch's thread count to numba's, and the next fold trains oversubscribed."""
    import os

    pytest.importorskip("numba")
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two cores to tell one thread from the default")
    fast_config.threads, fast_config.plots = 1, False
    script = f"""
import torch
from qwave.bench.config import BenchConfig, CVConfig, DataConfig, ModelConfig
from qwave.bench.runner import run_benchmark
from qwave.moe.config import CuriosityConfig, MoEConfig
from qwave.nn.mlp import build_mlp
from qwave.nn.surgery import pack_model, quantize_model
from qwave.train import TrainConfig
run_benchmark({fast_config!r})
with torch.no_grad():
    pack_model(quantize_model(build_mlp(288, 10, [640, 320]), "int4"))(torch.randn(600, 288))
print(torch.get_num_threads())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split()[-1] == "1"
