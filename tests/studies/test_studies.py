"""Studies on a tiny table with a tiny budget: outputs exist and their numbers agree with the records and files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qwave.bench.config import BenchConfig, DataConfig, ModelConfig
from qwave.studies import StudyConfig, bit_sweep, ptq_int8, qat_vs_ptq
from qwave.train import TrainConfig

# the jobs run the timing path without its 0.5 s floor (see the fixture)
pytestmark = pytest.mark.usefixtures("no_timing_floor")


def bench(tiny_table, tmp_path) -> BenchConfig:
    return BenchConfig(data=DataConfig(str(tiny_table), fold="fold", id="name"), output_dir=str(tmp_path),
                       model=ModelConfig(hidden=[16]), train=TrainConfig(epochs=3, patience=3, batch_size=32),
                       device="cpu")


@pytest.fixture
def cfg(tiny_table, tmp_path):
    return StudyConfig(bench(tiny_table, tmp_path), folds=[1, 2])


def _outputs(cfg):
    out = cfg.out
    assert (out / "table.md").read_text().count("|") > 10 and (out / "plot.png").stat().st_size > 1000
    return json.loads((out / "results.json").read_text())


def test_ptq_int8_reports_real_file_sizes_and_both_models(cfg):
    cfg.tag = "ptq"
    results = ptq_int8(cfg)
    saved = _outputs(cfg)
    assert len(saved["records"]) == 4  # 2 folds x (fp32, int8)
    for r in results["records"]:
        weights = cfg.out / "artifacts" / f"fold_{r['fold']}_seed_0" / r["arm"] / "model.safetensors"
        assert r["file_bytes"] == weights.stat().st_size
    fp32, int8 = results["summary"]["fp32"], results["summary"]["int8"]
    assert int8["file_bytes"]["mean"] < fp32["file_bytes"]["mean"]
    assert all(r["us_per_sample"] > 0 and r["speedup_vs_fp32"] > 0 for r in results["records"])


def test_qat_vs_ptq_pairs_runs_by_fold_and_seed(cfg):
    cfg.tag, cfg.bench.seeds = "qvp", [0, 1]
    results = qat_vs_ptq(cfg, "4")
    _outputs(cfg)
    records = results["records"]
    assert sorted((r["fold"], r["seed"]) for r in records if r["arm"] == "qat") == [(1, 0), (1, 1), (2, 0), (2, 1)]
    qat = {(r["fold"], r["seed"]): r["macro_f1"] for r in records if r["arm"] == "qat"}
    ptq = {(r["fold"], r["seed"]): r["macro_f1"] for r in records if r["arm"] == "ptq"}
    diffs = [qat[k] - ptq[k] for k in sorted(qat)]
    fold_means = [np.mean([qat[(f, s)] - ptq[(f, s)] for s in (0, 1)]) for f in (1, 2)]
    diff = results["difference_qat_minus_ptq"]
    assert diff["mean"] == pytest.approx(np.mean(diffs)) and diff["n"] == 2 and diff["n_runs"] == 4
    assert diff["ci95"] == pytest.approx(12.7062047 * np.std(fold_means, ddof=1) / np.sqrt(2))  # t(0.975, 1 dof)
    assert results["format"] == "int4" and all(r["train_seconds"] > 0 for r in records)
    ci = results["difference_qat_minus_ptq"]["ci95"]
    assert (results["winner"] in ("qat", "ptq")) == (abs(np.mean(diffs)) > ci)


def test_bit_sweep_gap_is_train_minus_test_and_sizes_shrink(cfg):
    cfg.tag = "sweep"
    results = bit_sweep(cfg, [32, 8, 1])
    _outputs(cfg)
    for r in results["records"]:
        assert r["gap_accuracy"] == pytest.approx(r["train_accuracy"] - r["test_accuracy"])
    size = {b: results["summary"][str(b)]["file_bytes"]["mean"] for b in (32, 8, 1)}
    assert size[32] > size[8] > size[1]


def test_a_study_arm_is_the_benchmark_run_of_its_model(cfg, tiny_table, tmp_path):
    from safetensors.torch import load_file

    from qwave.bench.runner import run_benchmark

    cfg.tag = "ptq"
    results = ptq_int8(cfg)
    reference = bench(tiny_table, tmp_path)
    reference.models, reference.tag, reference.plots, reference.quiet = ["fp32", "ptq8"], "bench", False, True
    run_benchmark(reference)
    for r in results["records"]:
        fold = tmp_path / "bench" / {"fp32": "fp32", "int8": "ptq8"}[r["arm"]] / f"fold_{r['fold']}"
        metrics = json.loads((fold / "metrics.json").read_text())
        assert (r["accuracy"], r["macro_f1"]) == (metrics["accuracy"], metrics["macro_f1"])
        assert r["file_bytes"] == metrics["artifact_file_bytes"]
        mine = load_file(cfg.out / "artifacts" / f"fold_{r['fold']}_seed_0" / r["arm"] / "model.safetensors")
        theirs = load_file(fold / "artifact" / "model.safetensors")
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_the_study_command_parses_into_the_benchmarks_config(tiny_table, tmp_path, capsys):
    from qwave.cli import main

    argv = ["study", "bit-sweep", "--bits", "8", "--data", str(tiny_table), "--folds", "1", "--hidden", "16",
            "--epochs", "2", "--patience", "2", "--batch-size", "32", "--output-dir", str(tmp_path), "--tag", "cli",
            "--device", "cpu", "--seeds", "0", "1"]
    assert main(argv) == 0
    config = json.loads((tmp_path / "cli" / "results.json").read_text())["config"]
    expected = BenchConfig()
    assert config["bench"]["model"]["dropout"] == expected.model.dropout  # not given: the benchmark's default
    assert config["bench"]["train"]["lr"] == expected.train.lr and config["bench"]["train"]["epochs"] == 2
    assert config["bench"]["data"]["path"] == str(tiny_table) and config["bench"]["seeds"] == [0, 1]
    assert config["bench"]["models"] == ["int8"] and config["folds"] == [1]
    assert main([*argv[:-3], "--epochs", "0"]) == 2 and "--epochs" in capsys.readouterr().err
