"""``qwave compare`` / ``compare-all`` end to end: outputs recomputed from the artifacts, label-free mode, a CTC
sequence model, and one clear error line for each kind of bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from qwave import artifact
from qwave.cli import main
from qwave.nn import pack_model, quantize_model
from qwave.nn.recurrent import RecurrentCTC, pack_recurrent

FAST = ["--repeats", "2", "--warmup", "1"]


@pytest.fixture
def quantized(fp32_artifact, tiny_table, tmp_path):
    out = tmp_path / "models"
    args = ["quantize", str(fp32_artifact), "--formats", "8,2", "--calib", str(tiny_table), "--out", str(out)]
    assert main(args) == 0
    return out


def test_compare_split_test_outputs_match_the_artifacts(fp32_artifact, quantized, tiny_table, tmp_path, capsys):
    csv, js = tmp_path / "cmp.csv", tmp_path / "cmp.json"
    code = main(["compare", str(fp32_artifact), str(quantized / "int2"), "--data", str(tiny_table), "--split", "test",
                 "--output-csv", str(csv), "--output-json", str(js), *FAST])
    assert code == 0
    frame, summary = pd.read_csv(csv), json.loads(js.read_text())
    table = pd.read_csv(tiny_table)
    test = table[table["fold"] == 1]
    assert list(frame["id"]) == list(test["name"])  # --split test = the fold training held out
    X = torch.as_tensor(test[[f"f{j}" for j in range(8)]].to_numpy(np.float32))
    with torch.no_grad():
        a, b = artifact.load(fp32_artifact)(X), artifact.load(quantized / "int2")(X)
    classes = ["bird", "cat", "dog"]
    assert list(frame["pred_quantized"]) == [classes[i] for i in b.argmax(1)]
    assert summary["predictions"]["agreement"] == pytest.approx(float((a.argmax(1) == b.argmax(1)).float().mean()))
    np.testing.assert_allclose(frame["mse"], ((a - b) ** 2).mean(1).numpy(), rtol=1e-5)
    acc = float((a.argmax(1).numpy() == np.array([classes.index(c) for c in test["label"]])).mean())
    assert summary["predictions"]["accuracy"]["original"] == pytest.approx(acc)
    assert summary["sizes"]["quantized"]["file_bytes"] == (quantized / "int2" / "model.safetensors").stat().st_size
    assert summary["speed"]["original"]["seconds_per_sample"] > 0
    assert {layer["format"] for layer in summary["kernels"]["quantized"]} == {"int2"}
    out = capsys.readouterr().out
    assert "top-1 agreement" in out and "kernels of the quantized model" in out


def test_label_free_and_num_samples(fp32_artifact, quantized, tiny_table, tmp_path):
    js = tmp_path / "s.json"
    unlabelled = tmp_path / "unlabelled.csv"
    pd.read_csv(tiny_table).drop(columns=["label"]).to_csv(unlabelled, index=False)
    assert main(["compare", str(fp32_artifact), str(quantized / "int8"), "--data", str(unlabelled),
                 "--num-samples", "7", "--output-json", str(js), *FAST]) == 0
    summary = json.loads(js.read_text())
    assert summary["n"] == 7 and summary["labelled"] is False
    assert set(summary["predictions"]) == {"agreement"}


def test_compare_all_sorts_every_artifact(fp32_artifact, quantized, tiny_table, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare-all", str(fp32_artifact), str(quantized), "--data", str(tiny_table), "--output-dir",
                 str(out), *FAST]) == 0
    table = pd.read_csv(out / "compare_all.csv")
    assert sorted(table["format"]) == ["int2", "int8"]  # the original itself is not compared with itself
    assert list(table["macro_f1"]) == sorted(table["macro_f1"], reverse=True)
    assert (out / "int8.json").is_file() and (out / "int2.csv").is_file()


def test_bad_inputs_give_one_clear_error_line(fp32_artifact, tiny_table, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["compare-all", str(fp32_artifact), str(empty), "--data", str(tiny_table)]) == 2
    assert "holds no qwave artifacts" in capsys.readouterr().err
    # data with the wrong number of feature columns
    narrow = tmp_path / "narrow.csv"
    pd.read_csv(tiny_table).drop(columns=["f7"]).to_csv(narrow, index=False)
    assert main(["compare", str(fp32_artifact), str(fp32_artifact), "--data", str(narrow)]) == 2
    assert "lacks 'f7'" in capsys.readouterr().err
    # models with different class counts and different input widths
    two = tmp_path / "two"
    frame = pd.read_csv(tiny_table)
    frame[frame["label"] != "dog"].to_csv(tmp_path / "two.csv", index=False)
    assert main(["train", "--data", str(tmp_path / "two.csv"), "--out", str(two), "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["compare", str(fp32_artifact), str(two), "--data", str(tiny_table)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "predicts 2 classes" in err[0] and "predicts 3" in err[0]
    wide = tmp_path / "wide.csv"
    frame.assign(f8=1.0).to_csv(wide, index=False)
    assert main(["train", "--data", str(wide), "--out", str(tmp_path / "w"), "--hidden", "8", "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["compare", str(fp32_artifact), str(tmp_path / "w"), "--data", str(tiny_table)]) == 2
    assert "different feature columns" in capsys.readouterr().err


def test_compare_ctc_sequence_models_with_references(tmp_path):
    torch.manual_seed(0)
    model = RecurrentCTC(frame_dim=3, frames=5, num_classes=4, hidden=8).eval()
    fp32 = artifact.save(pack_model(model), tmp_path / "fp32", classes=["_", "a", "b", "c"])
    int8 = artifact.save(pack_recurrent(pack_model(quantize_model(model, "int8")), "int8"), tmp_path / "int8",
                         classes=["_", "a", "b", "c"])
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(size=(6, 15)), columns=[str(j) for j in range(15)])
    table.insert(0, "phonemes", ["a b", "c", "a a c", "b", "", "c b"])
    table.insert(0, "name", [f"u{i}" for i in range(6)])
    path = tmp_path / "frames.csv"
    table.to_csv(path, index=False)
    csv, js = tmp_path / "seq.csv", tmp_path / "seq.json"
    assert main(["compare", str(fp32), str(int8), "--data", str(path), "--reference-column", "phonemes",
                 "--output-csv", str(csv), "--output-json", str(js), *FAST]) == 0
    summary, frame = json.loads(js.read_text()), pd.read_csv(csv, keep_default_na=False)
    assert summary["kind"] == "sequence"
    err = summary["sequence"]["error_rate"]
    assert err["increase"] == pytest.approx(err["quantized"] - err["original"])
    assert list(frame["reference"]) == ["1 2", "3", "1 1 3", "2", "", "3 2"]
    assert {"error_rate_original", "error_rate_quantized", "edit_distance"} <= set(frame.columns)
    assert {layer["format"] for layer in summary["kernels"]["quantized"]} == {"int8"}


def test_non_finite_logits_are_an_error_not_a_number(fp32_artifact, tiny_table, tmp_path, capsys):
    model = artifact.load(fp32_artifact)
    with torch.no_grad():
        model.body[0].weight.fill_(3e38)  # finite weights whose products overflow to inf
    broken = artifact.save(model, tmp_path / "broken", classes=model.classes, extra=model.manifest["extra"])
    assert main(["compare", str(fp32_artifact), str(broken), "--data", str(tiny_table), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite logits" in err[0] and "broken" in err[0]


def test_a_directory_given_as_the_table_says_so(fp32_artifact, tmp_path, capsys):
    assert main(["compare", str(fp32_artifact), str(fp32_artifact), "--data", str(tmp_path)]) == 2
    assert "is a directory, not a table" in capsys.readouterr().err
