"""The ``moe`` kind end to end through the benchmark runner on a tiny table: selection, artifacts, curiosity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qwave.bench import moe as moe_kind
from qwave.bench.config import BenchConfig, CVConfig, DataConfig, ModelConfig
from qwave.bench.runner import run_benchmark
from qwave.errors import ConfigError
from qwave.moe.config import CuriosityConfig, MoEConfig
from qwave.moe.selection import choose, eligible, rank
from qwave.train import TrainConfig


@pytest.fixture
def table(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    n = 60
    y = np.arange(n) % 3
    frame = pd.DataFrame(rng.normal(size=(n, 5)) + 3.0 * np.eye(3, 5)[y], columns=[str(i) for i in range(5)])
    frame.insert(0, "name", [f"clip{i:03d}" for i in range(n)])
    frame.insert(0, "label", [f"class_{c}" for c in y])
    frame.insert(0, "fold", (np.arange(n) // 2) % 2 + 1)
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    return path


def config(table: Path, tmp_path: Path, moe: MoEConfig, **kwargs) -> BenchConfig:
    return BenchConfig(
        tag="t", models=["moe"], data=DataConfig(path=str(table)), cv=CVConfig(folds="official"),
        model=ModelConfig(hidden=[8], **kwargs), train=TrainConfig(epochs=3, batch_size=16, patience=5),
        output_dir=str(tmp_path / "out"), quiet=True, device="cpu", plots=False, moe=moe,
    )


def test_moe_with_selection_and_curiosity_runs_end_to_end(table, tmp_path, no_timing_floor):
    moe = MoEConfig(pool=["bitnet", "4", "8"], num_experts=2, selection="f1_per_byte", selection_epochs=1,
                    curiosity=CuriosityConfig(enabled=True, alpha=0.5, mc_samples=4))
    run_benchmark(config(table, tmp_path, moe))
    for k in (1, 2):
        fold = tmp_path / "out" / "t" / "moe" / f"fold_{k}"
        metrics = json.loads((fold / "metrics.json").read_text())
        assert metrics["artifact_agreement"]["top1_agreement"] == 1.0
        info = metrics["moe"]
        probes = info["selection"]
        f1 = [p["val_macro_f1"] for p in probes]
        scores = rank(f1, [p["stored_bytes"] for p in probes], "f1_per_byte")
        chosen = [probes[i]["format"] for i in choose(scores, 2, eligible(f1, "f1_per_byte", 0.9), f1)]
        assert info["formats"] == chosen == [p["format"] for p in probes if p["selected"]]
        manifest = json.loads((fold / "artifact" / "manifest.json").read_text())
        experts = {path.split(".")[1] for path in manifest["layers"] if path.startswith("experts.")}
        assert experts == {"0", "1"}, "only the selected experts are stored"
        assert metrics["stored_bytes"] == info["stored_bytes"] > metrics["active_bytes"]
        values = json.loads((fold / "curiosity_values.json").read_text())
        assert len(values["samples"]) == metrics["n_test"]
        assert values["measure"] == "mutual_info" and values["alpha"] == 0.5
        assert info["router_format"] == "int8"
        assert {manifest["layers"][f"router.{k}"]["format"] for k in ("fc1", "fc2")} == {"int8"}


def test_probes_train_and_validate_on_training_fold_rows_only(table, tmp_path, monkeypatch, no_timing_floor):
    seen = []
    real = moe_kind.fit_model

    def spy(kind, ctx, X_test, *args, **kwargs):
        seen.append((ctx.X_fit.copy(), ctx.X_val.copy(), X_test.copy()))
        return real(kind, ctx, X_test, *args, **kwargs)

    monkeypatch.setattr(moe_kind, "fit_model", spy)
    moe = MoEConfig(pool=["bitnet", "4", "8"], num_experts=2, selection="f1", selection_epochs=1)
    run_benchmark(config(table, tmp_path, moe))
    frame = pd.read_csv(table)
    features = frame[[str(i) for i in range(5)]].to_numpy(np.float32)
    assert len(seen) == 2 * 3, "three probes per fold, two folds"
    for i, (X_fit, X_val, X_test) in enumerate(seen):
        test_fold = 1 + i // 3
        test_rows = {row.tobytes() for row in features[frame["fold"].to_numpy() == test_fold]}
        train_rows = {row.tobytes() for row in features[frame["fold"].to_numpy() != test_fold]}
        for rows in (X_fit, X_val, X_test):
            assert len(rows) and {row.tobytes() for row in rows} <= train_rows
            assert not {row.tobytes() for row in rows} & test_rows


def test_probes_fitted_by_the_fold_pipeline_keep_the_scores_and_rng_chain_of_directly_trained_ones(
    table, tmp_path, no_timing_floor
):
    """The reference is the probe loop as it was before the fold pipeline took over (build the expert-shaped MLP,
    QAT, train on the CPU, pack): same F1, bytes and global RNG state after probing, so the same MoE is built."""
    import copy
    from dataclasses import replace

    import torch

    from qwave.bench.models import BuildContext
    from qwave.data import fit_normalizer
    from qwave.nn.mlp import build_mlp
    from qwave.nn.surgery import pack_model, quantize_model
    from qwave.size import report
    from qwave.train import train_model

    moe = MoEConfig(pool=["bitnet", "4", "8", "1"], num_experts=2, selection="f1_per_byte", selection_epochs=2)
    cfg = config(table, tmp_path, moe, dropout=0.5)
    frame = pd.read_csv(table)
    X, y = frame[[str(i) for i in range(5)]].to_numpy(np.float32), np.arange(len(frame)) % 3
    ctx = BuildContext(5, 3, fit_normalizer(X[:40], "standard"), cfg, 3, X[:40], y[:40], X[40:], y[40:])
    torch.manual_seed(3)
    probes = moe_kind.probe_pool(moe, ctx, [8])
    after = torch.get_rng_state()
    torch.manual_seed(3)
    f1, sizes = [], []
    for name in ["ternary", "int4", "int8", "binary"]:
        probe = build_mlp(5, 3, [8], 0.5, False, copy.deepcopy(ctx.normalize), "auto", [name])
        quantize_model(probe, name)  # the old loop: the format alone, keep_last_fp off
        f1.append(train_model(probe, X[:40], y[:40], X[40:], y[40:], 3, replace(cfg.train, epochs=2), 3)
                  .best_val_macro_f1)
        sizes.append(report(pack_model(probe)).bytes_under("body"))
    assert [p.val_macro_f1 for p in probes] == f1 and [p.stored_bytes for p in probes] == sizes
    assert torch.equal(after, torch.get_rng_state())


def test_layer_formats_are_refused_for_moe(table, tmp_path):
    cfg = config(table, tmp_path, MoEConfig(experts=["4", "8"]), layer_formats=["4", "8"])
    with pytest.raises(ConfigError, match="model.layer_formats"):
        run_benchmark(cfg)
