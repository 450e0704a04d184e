"""``qwave predict`` at its edges: columns taken by name (any order), bad arrays and values as one line, the
output checked before any prediction, unverified artifacts only on request."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import qwave
from qwave.cli import main
from qwave.data.source import BUNDLED_TABLES, bundled_table

TRAIN_FAST = ["--hidden", "16", "--epochs", "2", "--patience", "2", "--batch-size", "256"]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line, no traceback, no warnings before it
    return err


@pytest.mark.parametrize("table", sorted(BUNDLED_TABLES))
def test_predictions_on_a_bundled_table_with_shuffled_columns_equal_those_on_the_original(table, tmp_path, capsys):
    source = Path(bundled_table(table))
    frame = pd.read_parquet(source)
    rows = frame.iloc[::15].reset_index(drop=True)  # a few hundred rows of every class
    original = tmp_path / "rows.parquet"
    rows.to_parquet(original)
    model = tmp_path / "model"
    assert main(["train", "--data", str(original), "--out", str(model), *TRAIN_FAST]) == 0
    shuffled = tmp_path / "shuffled.parquet"
    order = np.random.default_rng(0).permutation(rows.columns)
    rows[order].to_parquet(shuffled)
    outs = []
    for data in (original, shuffled):
        out = tmp_path / f"{data.stem}.csv"
        assert main(["predict", str(model), "--data", str(data), "--out", str(out)]) == 0
        outs.append(pd.read_csv(out))
    pd.testing.assert_frame_equal(outs[0], outs[1])
    # the reference: the same rows, columns put back in training order by hand, through the Python API
    names = json.loads((model / "manifest.json").read_text())["features"]
    assert names == [c for c in rows.columns if c in set(names)]
    expected = qwave.load(model).predict(rows[names].to_numpy())
    assert list(outs[1]["class"].astype(str)) == list(expected)


@pytest.fixture
def trained(tmp_path, tiny_table) -> Path:
    out = tmp_path / "m"
    assert main(["train", "--data", str(tiny_table), "--out", str(out), *TRAIN_FAST]) == 0
    return out


def test_a_missing_or_extra_feature_column_is_one_line_naming_it(trained, tiny_table, tmp_path, capsys):
    frame = pd.read_csv(tiny_table)
    capsys.readouterr()
    out = str(tmp_path / "p.csv")
    frame.drop(columns=["f3"]).to_csv(tmp_path / "missing.csv", index=False)
    assert main(["predict", str(trained), "--data", str(tmp_path / "missing.csv"), "--out", out]) == 2
    assert "lacks 'f3'" in _error(capsys)
    frame.assign(extra=1.5).to_csv(tmp_path / "extra.csv", index=False)
    assert main(["predict", str(trained), "--data", str(tmp_path / "extra.csv"), "--out", out]) == 2
    assert "'extra'" in _error(capsys)
    assert not (tmp_path / "p.csv").exists()


def test_the_python_api_takes_a_dataframe_by_name_and_a_bare_array_only_at_the_right_width(trained, tiny_table):
    clf = qwave.load(trained)
    frame = pd.read_csv(tiny_table)[clf.feature_names]
    reversed_frame = frame[frame.columns[::-1]]
    np.testing.assert_array_equal(clf.predict(reversed_frame), clf.predict(frame.to_numpy()))
    with pytest.raises(qwave.errors.DataError, match="features per row"):
        clf.predict(frame.to_numpy()[:, :-1])
    with pytest.raises(qwave.errors.DataError, match="extra columns"):
        clf.predict(frame.assign(label=1))


@pytest.mark.parametrize("array, message", [
    (np.zeros(8, np.float32), None),  # one row as a 1-D array: predicted, like the Python API does
    (np.float32(3.0), "shape ()"),
    (np.zeros((2, 8), np.complex64), "real-valued"),
    (np.full((2, 8), 1e39), "float32 range"),
], ids=["1-D", "0-d", "complex", "1e39"])
def test_npy_inputs_are_predicted_or_refused_in_one_line_blaming_the_input(trained, tmp_path, capsys, array,
                                                                           message):
    path = tmp_path / "x.npy"
    np.save(path, array)
    capsys.readouterr()
    code = main(["predict", str(trained), "--data", str(path), "--out", str(tmp_path / "p.csv")])
    if message is None:
        assert code == 0 and len(pd.read_csv(tmp_path / "p.csv")) == 1
    else:
        assert code == 2
        err = _error(capsys)
        assert message in err and "artifact" not in err.split("error:")[1]


def test_out_is_checked_before_the_model_is_loaded_or_run(trained, tiny_table, tmp_path, capsys, monkeypatch):
    import qwave.commands.predict as predict_command

    calls = []
    monkeypatch.setattr(predict_command, "load", lambda *a, **k: calls.append(a))
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert main(["predict", str(trained), "--data", str(tiny_table), "--out", str(folder)]) == 2
    assert "--out" in _error(capsys) and calls == []


def test_a_version_1_artifact_needs_allow_unverified(trained, tiny_table, tmp_path, capsys):
    manifest = json.loads((trained / "manifest.json").read_text())
    manifest["format_version"] = 1
    del manifest["integrity"]
    for info in manifest["tensors"].values():
        del info["sha256"]
    (trained / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "p.csv"
    capsys.readouterr()
    assert main(["predict", str(trained), "--data", str(tiny_table), "--out", str(out)]) == 2
    assert "--allow-unverified" in _error(capsys)
    assert main(["predict", str(trained), "--data", str(tiny_table), "--out", str(out), "--allow-unverified"]) == 0


def test_an_artifact_without_feature_names_keeps_working_with_one_note(trained, tiny_table, tmp_path, caplog):
    from artifact_files import reseal

    reseal(trained, lambda m: m.pop("features"))
    out = tmp_path / "p.csv"
    with caplog.at_level("WARNING"):
        assert main(["predict", str(trained), "--data", str(tiny_table), "--out", str(out)]) == 0
    notes = [r for r in caplog.records if "records no feature names" in r.getMessage()]
    assert len(notes) == 1 and len(pd.read_csv(out)) == len(pd.read_csv(tiny_table))


def test_compare_takes_the_table_by_column_name(trained, tiny_table, tmp_path, capsys):
    frame = pd.read_csv(tiny_table)
    shuffled = tmp_path / "shuffled.csv"
    frame[np.random.default_rng(1).permutation(frame.columns)].to_csv(shuffled, index=False)
    summaries = []
    for data in (tiny_table, shuffled):
        out = tmp_path / f"{Path(data).stem}.json"
        assert main(["compare", str(trained), str(trained), "--data", str(data), "--repeats", "1", "--warmup", "0",
                     "--output-json", str(out)]) == 0
        summaries.append(json.loads(out.read_text())["predictions"])
    assert summaries[0]["accuracy"] == summaries[1]["accuracy"]
    assert summaries[1]["agreement"] == 1.0
