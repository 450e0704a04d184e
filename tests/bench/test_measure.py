"""What a job measures: ms/sample after the warm-up, the job's own peak memory, per-layer kernels, one warning on a
fallback, resident bytes."""

from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import qwave.bench.runner as runner
from qwave import artifact, kernels
from qwave.bench import measure
from qwave.bench.runner import run_benchmark
from qwave.nn.packed_linear import PackedLinear
from qwave.size import resident_bytes


def fold_metrics(cfg, model: str) -> list[dict]:
    root = Path(cfg.output_dir) / cfg.tag / model
    return [json.loads(p.read_text()) for p in sorted(root.glob("fold_*/metrics.json"))]


class SlowFirstForward(torch.nn.Module):
    """The loaded artifact, with a first forward that stands for kernel compilation and weight preparation."""

    def __init__(self, model: torch.nn.Module, delay: float):
        super().__init__()
        self.model, self.delay, self.calls = model, delay, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            time.sleep(self.delay)
        return self.model(x)


def test_ms_per_sample_excludes_the_first_forward(fast_config, monkeypatch) -> None:
    real_load = runner.artifact.load
    monkeypatch.setattr(runner.artifact, "load", lambda path: SlowFirstForward(real_load(path), 0.4))
    run_benchmark(fast_config)
    for record in fold_metrics(fast_config, "fp32"):
        assert record["first_call_seconds"] >= 0.4
        assert record["inference_seconds"] < 0.4 and record["inference_repeats"] >= 3
        assert record["inference_ms_per_sample"] == 1e3 * record["inference_seconds"] / record["n_test"]


def test_peak_memory_is_the_jobs_own_not_the_process_peak_so_far(fast_config, no_timing_floor) -> None:
    if not measure.JobMemory.begin().reset:
        import pytest

        pytest.skip("this system cannot reset the peak-RSS counter (/proc/self/clear_refs)")
    ballast = np.ones(400 * 2**20 // 8)  # 400 MB touched, then freed: an earlier, bigger job
    del ballast
    process_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    run_benchmark(fast_config)
    for record in fold_metrics(fast_config, "fp32"):
        assert record["peak_rss_mb"] < process_peak_mb - 300
        assert 0 <= record["peak_rss_delta_mb"] < record["peak_rss_mb"]
        assert "clear_refs" in record["memory_method"]


def test_each_layer_records_the_kernel_that_ran(fast_config, no_timing_floor) -> None:
    fast_config.models = ["8", "1"]
    run_benchmark(fast_config)
    for model, fmt in (("8", "int8"), ("1", "binary")):
        loaded = artifact.load(Path(fast_config.output_dir) / "t" / model / "fold_1" / "artifact")
        packed = {path: m for path, m in loaded.named_modules() if isinstance(m, PackedLinear)}
        assert len(packed) == 2  # hidden=[16]: two linear layers
        for record in fold_metrics(fast_config, model):
            layers = record["layer_kernels"]
            assert list(layers) == list(packed)
            for path, layer in layers.items():
                expected = kernels.kernel_for(packed[path].fmt)  # the registry's choice for this format and CPU
                assert layer["format"] == fmt
                assert layer["kernel"] == (expected.name if expected else kernels.FALLBACK)
                assert layer["fused"] is (expected is not None)  # timed as deployed: the fused whole-model path
    summary = json.loads((Path(fast_config.output_dir) / "t" / "8" / "summary.json").read_text())
    assert set(summary["layer_kernels"]) == set(packed)


def test_a_fallback_to_the_reference_recipe_warns_once(fast_config, monkeypatch, caplog, no_timing_floor) -> None:
    monkeypatch.setattr(measure, "_warned", set())
    previous = kernels.set_fast_kernels(False)
    try:
        with caplog.at_level(logging.WARNING, logger="qwave.bench.measure"):
            run_benchmark(fast_config)
    finally:
        kernels.set_fast_kernels(previous)
    for record in fold_metrics(fast_config, "fp32"):
        assert all(layer["kernel"] == kernels.FALLBACK and layer["fallback"] for layer in
                   record["layer_kernels"].values())
        assert record["kernel_status"]["fast_kernels"] is False
    warnings = [r for r in caplog.records if "reference recipe" in r.getMessage()]
    assert len(warnings) == 1 and "fp32" in warnings[0].getMessage()  # three folds, two layers: one warning


def test_resident_bytes_are_those_of_the_loaded_artifact_after_a_forward(fast_config, no_timing_floor) -> None:
    fast_config.models = ["fp32", "8"]
    run_benchmark(fast_config)
    for model in ("fp32", "8"):
        record = fold_metrics(fast_config, model)[0]
        loaded = artifact.load(Path(fast_config.output_dir) / "t" / model / "fold_1" / "artifact")
        loaded(torch.zeros(2, loaded.in_dim))
        assert record["resident_bytes"] == resident_bytes(loaded) >= record["stored_bytes"]
        ratio = record["resident_bytes"] / record["stored_bytes"]
        assert record["resident_vs_stored"] == ratio and bool(record["resident_flag"]) == (ratio > 1.1)
    summary = pd.read_csv(Path(fast_config.output_dir) / "t" / "summary.csv").set_index("model")
    for model in ("fp32", "8"):
        biggest = max(r["resident_bytes"] for r in fold_metrics(fast_config, model))
        assert summary.loc[model, "resident_bytes"] == biggest
        assert summary.loc[model, "resident_vs_stored"] == pytest.approx(biggest / summary.loc[model, "stored_bytes"])
    assert summary.loc["fp32", "resident_vs_stored"] == 1.0  # float32 weights are used as stored


def test_the_job_times_the_deployed_path_and_its_fp32_twin_interleaved_for_the_warm_rounds(monkeypatch) -> None:
    from qwave.eval.speed import packed_reference
    from qwave.nn.fused import FusedMLP
    from qwave.nn.mlp import MLPClassifier

    torch.manual_seed(0)
    model = packed_reference(MLPClassifier(70, 4, hidden=(12,), dropout=0.0).eval(), "int8")
    log: list[str] = []
    deployed_paths = []

    def spy_deployed(m):
        forward = real_deployed(m)
        deployed_paths.append(forward)
        return lambda x: log.append("model") or forward(x)

    def spy_twin(m):
        twin = real_twin(m)
        return lambda x: log.append("fp32") or twin(x)

    real_deployed, real_twin = measure.deployed, measure.float_twin
    monkeypatch.setattr(measure, "deployed", spy_deployed)
    monkeypatch.setattr(measure, "float_twin", spy_twin)
    timing = measure.timed_inference(model, torch.randn(9, 70), rounds=7, min_seconds=0.0)
    if kernels.FAST_KERNELS:
        assert isinstance(deployed_paths[0], FusedMLP)  # what qwave.load runs, not the per-layer modules
    assert timing.repeats == 7
    # first forward, 2 warm-ups each, then 7 rounds of one call each, alternating in a rotating order
    assert log[:1] == ["model"] and log[1:5] == ["model", "model", "fp32", "fp32"]
    rounds = log[5:]
    assert len(rounds) == 14 and all(set(rounds[2 * i : 2 * i + 2]) == {"model", "fp32"} for i in range(7))
    assert timing.speed_vs_fp32 == timing.fp32_seconds / timing.seconds


def test_the_speed_column_is_the_jobs_interleaved_ratio_and_falls_back_to_ms_ratio_for_older_runs(tmp_path) -> None:
    from qwave.bench.summary import speed_vs_fp32, twin_speed

    assert twin_speed([{"speed_vs_fp32": 2.0}, {"speed_vs_fp32": 4.0}])["speed_vs_fp32"]["mean"] == 3.0
    assert twin_speed([{"speed_vs_fp32": 2.0}, {}]) == {}
    rows = [{"model": "fp32", "infer_ms_per_sample": 0.01, "speed_vs_fp32": 1.02},
            {"model": "8", "infer_ms_per_sample": 0.004, "speed_vs_fp32": 1.9},
            {"model": "old", "infer_ms_per_sample": 0.005, "speed_vs_fp32": None}]
    speed_vs_fp32(rows)
    assert [r["speed_vs_fp32"] for r in rows] == [1.02, 1.9, 0.01 / 0.005]


def test_each_job_records_its_fp32_twin_time_and_the_summary_uses_the_in_job_ratios(fast_config) -> None:
    fast_config.models = ["fp32", "8"]
    run_benchmark(fast_config)
    for model in ("fp32", "8"):
        records = fold_metrics(fast_config, model)
        for r in records:
            assert r["speed_vs_fp32"] == pytest.approx(r["fp32_twin_ms_per_sample"] / r["inference_ms_per_sample"])
            assert r["inference_repeats"] >= 3 and r["fp32_twin_ms_per_sample"] > 0
        summary = pd.read_csv(Path(fast_config.output_dir) / "t" / "summary.csv").set_index("model")
        fold_means = pd.DataFrame(records).groupby("fold")["speed_vs_fp32"].mean()
        assert summary.loc[model, "speed_vs_fp32"] == pytest.approx(fold_means.mean())
