"""``qwave train``: the held-out fold never reaches training, and the artifact reproduces the reported metrics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from qwave import artifact
from qwave.cli import main
from qwave.eval.metrics import classification_metrics

# the jobs run the timing path without its 0.5 s floor (see the fixture)
pytestmark = pytest.mark.usefixtures("no_timing_floor")


def test_train_holds_out_the_test_fold_and_records_its_metrics(fp32_artifact, tiny_table):
    manifest = json.loads((fp32_artifact / "manifest.json").read_text())
    extra = manifest["extra"]
    frame = pd.read_csv(tiny_table)
    assert extra["test_fold"] == "1"
    assert extra["n_test"] == int((frame["fold"] == 1).sum()) == 18
    assert extra["n_fit"] + extra["n_val"] == 42 and extra["n_val"] > 0
    model = artifact.load(fp32_artifact)
    test = frame[frame["fold"] == 1]
    X = torch.as_tensor(test[[f"f{j}" for j in range(8)]].to_numpy(np.float32))
    y = np.array([model.classes.index(c) for c in test["label"]])
    metrics = classification_metrics(y, torch.softmax(model(X), 1).detach().numpy())
    assert extra["test"]["macro_f1"] == metrics["macro_f1"]
    assert model.classes == ["bird", "cat", "dog"]


def test_train_rejects_an_unknown_test_fold(tiny_table, tmp_path, capsys):
    code = main(["train", "--data", str(tiny_table), "--out", str(tmp_path / "m"), "--test-fold", "9"])
    assert code == 2
    assert "--test-fold 9" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["4", pytest.param("ptq8", marks=pytest.mark.slow)])
def test_train_and_bench_give_the_same_model_for_the_same_table_fold_and_seed(tiny_table, tmp_path, fmt):
    """``qwave train --test-fold 1`` and ``qwave bench`` (fold 1, seed 0) under the same settings write the same
    tensors, and so the same logits on the held-out fold."""
    from qwave.bench.config import BenchConfig, CVConfig, DataConfig, ModelConfig
    from qwave.bench.runner import run_benchmark
    from qwave.train import TrainConfig

    cfg = BenchConfig(tag="t", models=[fmt], data=DataConfig(path=str(tiny_table)), cv=CVConfig(folds="official"),
                      model=ModelConfig(hidden=[16]), train=TrainConfig(epochs=4, batch_size=32, patience=4),
                      output_dir=str(tmp_path / "bench"), quiet=True, device="cpu", plots=False)
    run_benchmark(cfg)
    out = tmp_path / "train"
    assert main(["train", "--data", str(tiny_table), "--format", fmt, "--out", str(out), "--test-fold", "1",
                 "--hidden", "16", "--epochs", "4", "--patience", "4", "--batch-size", "32", "--device", "cpu"]) == 0
    bench = load_file(str(tmp_path / "bench" / "t" / fmt / "fold_1" / "artifact" / "model.safetensors"))
    trained = load_file(str(out / "model.safetensors"))
    assert bench.keys() == trained.keys()
    assert all(torch.equal(bench[name], trained[name]) for name in bench)
    metrics = json.loads((tmp_path / "bench" / "t" / fmt / "fold_1" / "metrics.json").read_text())
    assert json.loads((out / "manifest.json").read_text())["extra"]["test"]["macro_f1"] == metrics["macro_f1"]


def test_train_reads_a_bundled_table_by_name(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["train", "--data", "bundled:fsdd", "--format", "8", "--out", str(out), "--test-fold", "1",
                 "--hidden", "8", "--epochs", "1", "--device", "cpu"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["data"].endswith("fsdd_speech_embedding.parquet")
    assert manifest["config"]["model"]["dropout"] == 0.3 and manifest["config"]["train"]["patience"] == 30


def test_train_refuses_an_unknown_bundled_table(tmp_path, capsys):
    assert main(["train", "--data", "bundled:nope", "--out", str(tmp_path / "m")]) == 2
    assert "bundled:nope: no such bundled table" in capsys.readouterr().err
