"""The moe-curiosity study: its aggregation (seeds within fold, then folds), pairing, Pareto front and config,
and one tiny end-to-end run whose outputs agree with the per-fold metrics files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from qwave.errors import ConfigError
from qwave.studies.moe_curiosity import front_single, load_config, mlp_macs, moe_curiosity, over_folds, paired


def test_over_folds_averages_seeds_within_each_fold_before_the_interval():
    runs = [{"fold": 1, "seed": 0, "x": 0.1}, {"fold": 1, "seed": 1, "x": 0.3},
            {"fold": 2, "seed": 0, "x": 0.5}, {"fold": 2, "seed": 1, "x": 0.5},
            {"fold": 3, "seed": 0, "x": 0.9}, {"fold": 3, "seed": 1, "x": None}]
    got = over_folds(runs, "x")
    folds = np.array([0.2, 0.5, 0.9])  # by hand
    assert got["n"] == 3 and got["mean"] == pytest.approx(folds.mean())
    assert got["ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * folds.std(ddof=1) / np.sqrt(3))


def test_paired_differences_match_by_fold_and_seed():
    a = [{"fold": f, "seed": s, "macro_f1": 0.5 + 0.1 * f + 0.01 * s} for f in (1, 2) for s in (0, 1)]
    b = [{"fold": f, "seed": s, "macro_f1": 0.5 + 0.05 * f} for f in (2, 1) for s in (1, 0)]
    got = paired(a, b)
    # fold 1: (0.05, 0.06) -> 0.055; fold 2: (0.10, 0.11) -> 0.105
    assert got["n"] == 2 and got["mean"] == pytest.approx(0.08)


def test_the_front_single_is_the_best_format_that_costs_no_more():
    singles = {"a": {"active_bytes": {"mean": 100}, "macro_f1": {"mean": 0.40}},
               "b": {"active_bytes": {"mean": 200}, "macro_f1": {"mean": 0.60}},
               "c": {"active_bytes": {"mean": 300}, "macro_f1": {"mean": 0.55}}}
    assert front_single(singles, "active_bytes", 99) is None
    assert front_single(singles, "active_bytes", 150) == "a"
    assert front_single(singles, "active_bytes", 200) == "b"
    assert front_single(singles, "active_bytes", 1000) == "b"


def test_mlp_macs_sum_the_layer_products():
    assert mlp_macs(544, [640, 320], 5) == 544 * 640 + 640 * 320 + 320 * 5


def test_config_errors_name_the_option(tmp_path):
    with pytest.raises(ConfigError, match="measures"):
        load_config(None, ["measures=[entropy]"])
    with pytest.raises(ConfigError, match="alphas"):
        load_config(None, ["alphas=[0.0]"])
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "missing.yaml"), [])
    with pytest.raises(ConfigError, match="moe-curiosity config"):
        load_config(None, ["bench.nonsense=1"])
    with pytest.raises(ConfigError, match="moe_arms.x"):
        load_config(None, ["moe_arms={x: [train.epochs=3]}"])
    path = tmp_path / "study.yaml"
    path.write_text("tag: t\nalphas: [0.5]\nbench:\n  seeds: [3]\n  moe:\n    num_experts: 2\n")
    cfg = load_config(str(path), ["alphas=[2.0]"])
    assert cfg.tag == "t" and cfg.alphas == [2.0] and cfg.bench.seeds == [3] and cfg.bench.moe.num_experts == 2
    assert cfg.bench.moe.pool == ["bitnet", "1", "2", "4", "8", "16", "qesc"], "defaults kept"


def test_a_tiny_study_runs_every_arm_and_its_tables_agree_with_the_fold_files(tiny_table, tmp_path, no_timing_floor):
    numba = pytest.importorskip("numba")
    threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    overrides = [
        f"bench.data.path={tiny_table}", "bench.data.group=group", f"bench.output_dir={tmp_path}", "tag=s",
        "bench.seeds=[0]", "bench.model.hidden=[8]", "bench.train.epochs=2", "bench.train.patience=2",
        "bench.plots=false", "bench.device=cpu", "bench.threads=1", "bench.moe.pool=[1,8]", "bench.moe.num_experts=2",
        "bench.moe.selection_epochs=1", "singles=[fp32,1]", "alphas=[1.0]", "measures=[max_softmax]",
        "moe_arms={by_f1: [moe.selection=f1]}",
    ]
    try:
        moe_curiosity(load_config(None, overrides))
        # bench.threads=1 binds numba's kernels too; its OpenMP pool would otherwise reset torch's count to its own
        assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
        numba.set_num_threads(numba_threads)
    out = tmp_path / "s"
    assert (out / "plot.png").stat().st_size > 1000 and "vs active-bytes front" in (out / "table.md").read_text()
    saved = json.loads((out / "results.json").read_text())
    summary = saved["summary"]
    assert set(summary) == {"fp32", "binary", "moe", "by_f1", "curious_max_softmax_a1"}
    assert len(saved["records"]) == 5 * 4, "5 arms x 4 folds x 1 seed"
    # the curious arm's macro-F1 and active bytes, recomputed from its metrics.json files
    files = sorted(Path(out, "curious_max_softmax_a1", "moe").glob("fold_*/metrics.json"))
    metrics = [json.loads(p.read_text()) for p in files]
    assert len(metrics) == 4 and all(m["moe"]["curiosity"]["enabled"] for m in metrics)
    per_fold = [np.mean([m["macro_f1"] for m in metrics if m["fold"] == k]) for k in (1, 2, 3, 4)]
    curious = summary["curious_max_softmax_a1"]
    assert curious["macro_f1"]["mean"] == pytest.approx(np.mean(per_fold))
    active = [np.mean([m["active_bytes"] for m in metrics if m["fold"] == k]) for k in (1, 2, 3, 4)]
    assert curious["active_bytes"]["mean"] == pytest.approx(np.mean(active))
    fp32 = [json.loads(p.read_text()) for p in sorted(Path(out, "singles", "fp32").glob("fold_*/metrics.json"))]
    diff = [np.mean([m["macro_f1"] - f["macro_f1"] for m in metrics for f in fp32
                     if m["fold"] == f["fold"] == k and m["seed"] == f["seed"]]) for k in (1, 2, 3, 4)]
    assert curious["vs_single"]["fp32"]["mean"] == pytest.approx(np.mean(diff))
    front = curious["front_active_bytes"]["single"]
    fits = {n: s for n, s in summary.items() if s["kind"] == "single"
            and s["active_bytes"]["mean"] <= curious["active_bytes"]["mean"]}
    assert front == (max(fits, key=lambda n: fits[n]["macro_f1"]["mean"]) if fits else None)
    plain = [json.loads(p.read_text()) for p in sorted(Path(out, "moe", "moe").glob("fold_*/metrics.json"))]
    assert not any(m["moe"]["curiosity"]["enabled"] for m in plain)
    experts = summary["moe"]["experts"]
    assert set(experts) == {"binary", "int8"} and sum(e["usage"] for e in experts.values()) == pytest.approx(1.0)
    solo = [row["expert_accuracy_on_all"] for m in plain for row in m["moe"]["experts"] if row["format"] == "binary"]
    assert experts["binary"]["solo_accuracy"] == pytest.approx(np.mean(solo)) and experts["binary"]["runs"] == 4
    assert summary["moe"]["routes_changed_by_curiosity"]["mean"] is None
    assert 0 <= curious["routes_changed_vs_constant_u"]["mean"] <= 1
    assert set(saved["wall_seconds"]["arms"]) == set(summary) - {"fp32", "binary"} | {"singles"}
