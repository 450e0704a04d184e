"""``qwave train``: the held-out fold never reaches training, and the artifact reproduces the reported metrics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from qwave import artifact
from qwave.cli import main
from qwave.eval.metrics import classification_metrics


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
