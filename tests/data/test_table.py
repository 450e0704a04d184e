"""load_table: roles, metadata rule, formats, real tables and one-sentence errors naming file and column."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qwave.data import Dataset, TableSpec, load_table
from qwave.errors import DataError


def write_csv(tmp_path: Path, frame: pd.DataFrame, name: str = "table.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def small_frame(n: int = 12, d: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"fold": np.arange(n) % 3 + 1, "name": [f"s{i}.wav" for i in range(n)],
                          "label": np.arange(n) % 2})
    for j in range(d):
        frame[str(j)] = rng.normal(size=n)
    return frame


def anchor_frame(n: int = 10, d: int = 16) -> pd.DataFrame:
    """The users' layout: folder,name,label,category,class_id,0..d-1 (label is numeric, so is class_id)."""
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"folder": np.arange(n) % 5 + 1, "name": [f"{i}.wav" for i in range(n)],
                          "label": np.arange(n) % 5, "category": ["a", "b", "c", "d", "e"] * (n // 5),
                          "class_id": (np.arange(n) % 5) // 3})
    return pd.concat([frame, pd.DataFrame(rng.normal(size=(n, d)), columns=[str(j) for j in range(d)])], axis=1)


def test_tiny_table_loads_roles_codes_and_dtypes(tiny_table):
    ds = load_table(TableSpec(str(tiny_table), fold="fold", group="group", id="name"))
    raw = pd.read_csv(tiny_table)
    assert ds.X.shape == (60, 8) and ds.X.dtype == np.float32 and ds.y.dtype == np.int64
    assert ds.classes == ["bird", "cat", "dog"] and ds.n_classes == 3 and ds.n_features == 8
    assert ds.feature_names == [f"f{j}" for j in range(8)]
    np.testing.assert_array_equal(np.array(ds.classes)[ds.y], raw["label"])
    np.testing.assert_array_equal(ds.fold, raw["fold"])
    np.testing.assert_array_equal(ds.group, raw["group"])
    np.testing.assert_array_equal(ds.ids, raw["name"])
    np.testing.assert_allclose(ds.X, raw[ds.feature_names].to_numpy(), rtol=1e-6)
    assert ds.source == str(tiny_table)


def test_numeric_labels_sort_numerically_and_ids_default_to_row_numbers(tmp_path):
    frame = small_frame(9).drop(columns=["fold", "name"])
    frame["label"] = [10, 2, 1] * 3
    ds = load_table(TableSpec(str(write_csv(tmp_path, frame))))
    assert ds.classes == ["1", "2", "10"]
    np.testing.assert_array_equal(ds.y, [2, 1, 0] * 3)
    np.testing.assert_array_equal(ds.ids, [str(i) for i in range(9)])
    assert ds.fold is None and ds.group is None


def test_metadata_columns_never_become_features_in_the_anchor_layout(tmp_path):
    path = write_csv(tmp_path, anchor_frame())
    by_class_id = load_table(TableSpec(str(path), label="class_id", fold="folder"))
    by_label = load_table(TableSpec(str(path), label="label", fold="folder"))
    for ds in (by_class_id, by_label):
        assert ds.feature_names == [str(j) for j in range(16)]
    assert by_class_id.classes == ["0", "1"] and by_label.n_classes == 5


def test_well_known_metadata_names_are_ignored_case_insensitively(tmp_path):
    frame = small_frame()
    frame["Take"], frame["fsID"], frame["speaker"] = 1, 7, "george"
    ds = load_table(TableSpec(str(write_csv(tmp_path, frame))))
    assert ds.feature_names == ["0", "1", "2", "3"]


def test_explicit_features_and_drop_select_columns(tmp_path):
    frame = small_frame()
    frame["take"] = np.arange(12)
    path = write_csv(tmp_path, frame)
    assert load_table(TableSpec(str(path), features=["2", "take"])).feature_names == ["2", "take"]
    assert load_table(TableSpec(str(path), drop=["0", "3"])).feature_names == ["1", "2"]


def test_load_logs_roles_feature_range_and_ignored_columns(tiny_table, caplog):
    with caplog.at_level(logging.INFO, logger="qwave.data.table"):
        load_table(TableSpec(str(tiny_table), fold="fold", group=None, id=None))
    (record,) = [r for r in caplog.records if r.name == "qwave.data.table"]
    assert "label=label fold=fold group=none id=row numbers;" in record.getMessage()
    assert "8 features (f0 .. f7)" in record.getMessage()
    assert "2 metadata column(s) ignored (name, group)" in record.getMessage()


def test_string_fold_values_give_their_number(tmp_path):
    frame = small_frame()
    frame["fold"] = [f"fold{i % 3 + 1}" for i in range(12)]
    ds = load_table(TableSpec(str(write_csv(tmp_path, frame)), fold="fold"))
    np.testing.assert_array_equal(ds.fold, np.arange(12) % 3 + 1)


def test_csv_gz_parquet_and_npz_load_the_same_dataset(tmp_path):
    frame = small_frame()
    csv = load_table(TableSpec(str(write_csv(tmp_path, frame)), fold="fold"))
    frame.to_csv(tmp_path / "t.csv.gz", index=False)
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    np.savez(tmp_path / "t.npz", X=csv.X, y=csv.y, fold=csv.fold, classes=np.array(csv.classes))
    for name in ("t.csv.gz", "t.parquet", "t.npz"):
        other = load_table(TableSpec(str(tmp_path / name), fold="fold"))
        np.testing.assert_array_equal(other.X, csv.X)
        np.testing.assert_array_equal(other.y, csv.y)
        np.testing.assert_array_equal(other.fold, csv.fold)
        assert other.classes == csv.classes and other.feature_names == csv.feature_names


def test_npz_without_classes_codes_label_values(tmp_path):
    np.savez(tmp_path / "t.npz", X=np.ones((4, 2)), y=np.array(["b", "a", "b", "a"]), group=np.array(list("ppqq")))
    ds = load_table(TableSpec(str(tmp_path / "t.npz")))
    assert ds.classes == ["a", "b"] and ds.y.tolist() == [1, 0, 1, 0] and ds.group.tolist() == list("ppqq")


def test_subset_keeps_all_classes_and_aligns_every_array(tiny_table):
    ds = load_table(TableSpec(str(tiny_table), fold="fold", group="group", id="name"))
    idx = np.array([59, 0, 30])
    sub = ds.subset(idx)
    assert isinstance(sub, Dataset) and sub.classes == ds.classes
    for field in ("X", "y", "fold", "group", "ids"):
        np.testing.assert_array_equal(getattr(sub, field), getattr(ds, field)[idx])


def test_real_fsdd_table_shape_classes_and_speaker_folds(require_shared):
    ds = load_table(TableSpec(str(require_shared("fsdd/fsdd_logmel.csv.gz")), fold="fold", group="speaker"))
    assert ds.X.shape == (3000, 552) and ds.n_classes == 10
    assert sorted(set(ds.fold.tolist())) == [1, 2, 3, 4, 5, 6]
    assert ds.feature_names[0] == "0" and ds.feature_names[-1] == "551"


def test_real_esc50_table_fine_and_coarse_labels(require_shared):
    path = str(require_shared("esc50/esc50_specs.csv.gz"))
    fine = load_table(TableSpec(path, label="label", fold="fold", group="clip"))
    coarse = load_table(TableSpec(path, label="class_id", fold="fold", group="clip"))
    for ds in (fine, coarse):
        assert ds.X.shape == (1200, 544) and sorted(set(ds.fold.tolist())) == [1, 2, 3]
        assert ds.feature_names == [str(j) for j in range(544)]
    assert fine.n_classes == 50 and coarse.n_classes == 5
    np.testing.assert_array_equal(coarse.y, fine.y // 10)


def _with(frame: pd.DataFrame, **changes) -> pd.DataFrame:
    frame = frame.copy()
    for column, (row, value) in changes.items():
        frame[column] = frame[column].astype(object if isinstance(value, str) else float)
        frame.loc[row, column] = value
    return frame


CSV_ERRORS = {
    "missing label column": (small_frame(), {"label": "lable"}, ["lable", "did you mean 'label'"]),
    "unknown fold column": (small_frame(), {"fold": "split"}, ["'split'", "available: fold, name, label"]),
    "unknown group column": (small_frame(), {"group": "clip"}, ["'clip'"]),
    "unknown id column": (small_frame(), {"id": "file"}, ["'file'"]),
    "unknown drop column": (small_frame(), {"drop": ["nope"]}, ["'nope'"]),
    "unknown feature column": (small_frame(), {"features": ["0", "99"]}, ["'99'"]),
    "non-numeric feature": (small_frame(), {"features": ["0", "name"], "id": None},
                            ["'name'", "not numeric", "s0.wav", "row 0"]),
    "feature is the label": (small_frame(), {"features": ["0", "label"]}, ["'label'", "label column"]),
    "NaN feature": (_with(small_frame(), **{"2": (5, np.nan)}), {}, ["'2'", "rows 5"]),
    "inf feature": (_with(small_frame(), **{"1": (7, np.inf)}), {}, ["'1'", "rows 7"]),
    "NaN label": (_with(small_frame(), label=(3, np.nan)), {}, ["'label'", "rows 3"]),
    "one class only": (small_frame().assign(label=4), {}, ["'label'", "one class only"]),
    "NaN fold": (_with(small_frame(), fold=(2, np.nan)), {"fold": "fold"}, ["'fold'", "rows 2"]),
    "fold with no number": (_with(small_frame(), fold=(0, "train")), {"fold": "fold"}, ["'fold'", "'train'"]),
    "no feature columns": (small_frame(d=0), {}, ["no numeric feature columns"]),
}


@pytest.mark.parametrize("case", CSV_ERRORS, ids=list(CSV_ERRORS))
def test_schema_errors_are_one_sentence_naming_file_and_column(tmp_path, case):
    frame, options, expected = CSV_ERRORS[case]
    path = write_csv(tmp_path, frame, "bad_table.csv")
    with pytest.raises(DataError) as info:
        load_table(TableSpec(str(path), **options))
    message = str(info.value)
    assert "bad_table.csv" in message and "\n" not in message
    for text in expected:
        assert text in message


def test_nonfinite_features_report_at_most_five_rows(tmp_path):
    frame = small_frame()
    frame["3"] = np.nan
    with pytest.raises(DataError, match=r"'3'.*rows 0, 1, 2, 3, 4 \(of 12\)"):
        load_table(TableSpec(str(write_csv(tmp_path, frame))))


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


FILE_ERRORS = {
    "empty file": (lambda p: p.with_suffix(".csv").write_bytes(b"") and None, ".csv", "file is empty"),
    "header only": (lambda p: p.with_suffix(".csv").write_text("label,a,b\n"), ".csv", "no data rows"),
    "corrupt gzip": (lambda p: Path(f"{p}.csv.gz").write_bytes(b"not gzip at all"), ".csv.gz", "cannot read"),
    "corrupt parquet": (lambda p: p.with_suffix(".parquet").write_bytes(b"PAR1garbage"), ".parquet", "cannot read"),
    "corrupt npz": (lambda p: p.with_suffix(".npz").write_bytes(b"PK\x03\x04broken"), ".npz", "cannot read"),
    "unsupported extension": (lambda p: p.with_suffix(".txt").write_text("label\n1\n"), ".txt", "unsupported"),
    "npz missing X": (lambda p: _npz(p.with_suffix(".npz"), y=np.arange(3)), ".npz", "'X' missing"),
    "npz missing y": (lambda p: _npz(p.with_suffix(".npz"), X=np.ones((3, 2))), ".npz", "'y' missing"),
    "npz length mismatch": (lambda p: _npz(p.with_suffix(".npz"), X=np.ones((3, 2)), y=np.arange(4)), ".npz",
                            "'y' has shape (4,) but 'X' has 3 rows"),
    "npz fold length mismatch": (lambda p: _npz(p.with_suffix(".npz"), X=np.ones((3, 2)), y=np.arange(3) % 2,
                                                fold=np.arange(2)), ".npz", "'fold' has shape (2,)"),
    "npz codes out of range": (lambda p: _npz(p.with_suffix(".npz"), X=np.ones((3, 2)), y=np.array([0, 1, 5]),
                                              classes=np.array(["a", "b"])), ".npz", "'y' must hold integer codes"),
}


@pytest.mark.parametrize("case", FILE_ERRORS, ids=list(FILE_ERRORS))
def test_file_errors_are_one_sentence_naming_the_file(tmp_path, case):
    write, suffix, expected = FILE_ERRORS[case]
    stem = tmp_path / "bad_file"
    write(stem)
    with pytest.raises(DataError) as info:
        load_table(TableSpec(f"{stem}{suffix}"))
    message = str(info.value)
    assert f"bad_file{suffix}" in message and expected in message and "\n" not in message


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="nowhere.csv: file not found"):
        load_table(TableSpec(str(tmp_path / "nowhere.csv")))


def test_gzip_csv_with_nan_feature_names_file_and_column(tmp_path):
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as out:
        out.write("label,a,b\n0,1,2\n1,,3\n")
    with pytest.raises(DataError, match=r"t\.csv\.gz: NaN or infinite feature values in column\(s\) 'a' at rows 1"):
        load_table(TableSpec(str(path)))


# --- Tables that cannot silently change meaning (issue 13, item 4) and defaults that fit any table (issue 12) ----


def test_a_repeated_label_column_is_an_error_not_a_feature(tmp_path):
    path = tmp_path / "dup.csv"
    small_frame().to_csv(path, index=False)
    text = path.read_text().splitlines()
    labels = pd.read_csv(path)["label"].astype(str).tolist()
    path.write_text("\n".join([text[0] + ",label"] + [row + f",{y}" for row, y in zip(text[1:], labels, strict=True)]))
    with pytest.raises(DataError, match=r"dup\.csv: column name 'label' appears 2 times \(columns 3, 8\)"):
        load_table(TableSpec(str(path)))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_repeated_feature_name_is_an_error_not_renamed(tmp_path, suffix):
    frame = small_frame()
    frame.columns = [*frame.columns[:-1], "0"]  # two columns named "0"
    path = tmp_path / f"dup{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_arrays([pa.array(frame.iloc[:, i]) for i in range(frame.shape[1])],
                                            names=list(frame.columns)), path)
    with pytest.raises(DataError, match="column name '0' appears 2 times"):
        load_table(TableSpec(str(path)))


def test_one_non_number_in_a_feature_column_names_the_column_row_and_value(tmp_path):
    frame = _with(small_frame(), **{"2": (6, "abc")})
    with pytest.raises(DataError, match=r"column '2' holds numbers and non-numbers \(first: 'abc' at row 6"):
        load_table(TableSpec(str(write_csv(tmp_path, frame))))


def test_only_columns_without_any_number_are_metadata_and_the_summary_counts_them(tmp_path, caplog):
    frame = small_frame()
    frame["comment"] = ["ok", "noisy"] * 6
    frame["path"] = [f"a/{i}.wav" for i in range(12)]
    with caplog.at_level(logging.INFO, logger="qwave.data.table"):
        ds = load_table(TableSpec(str(write_csv(tmp_path, frame))))
    assert ds.feature_names == ["0", "1", "2", "3"]
    assert "2 metadata column(s) ignored (comment, path)" in caplog.records[-1].getMessage()


def test_a_plain_table_with_only_a_label_uses_stratified_folds_and_row_numbers(tmp_path, caplog):
    frame = small_frame().drop(columns=["fold", "name"]).rename(columns={"label": "cultivar"})
    with caplog.at_level(logging.INFO, logger="qwave.data.table"):
        ds = load_table(TableSpec(str(write_csv(tmp_path, frame)), label="cultivar"))
    assert ds.fold is None and ds.group is None and list(ds.ids) == [str(i) for i in range(12)]
    line = caplog.records[-1].getMessage()
    assert "fold=none, folds will be stratified (no 'fold' column)" in line
    assert "id=row numbers (no 'name' column)" in line and "group=none (no 'group' column)" in line


def test_default_columns_are_used_when_present(tiny_table):
    ds = load_table(TableSpec(str(tiny_table)))
    raw = pd.read_csv(tiny_table)
    np.testing.assert_array_equal(ds.fold, raw["fold"])
    np.testing.assert_array_equal(ds.group, raw["group"])
    np.testing.assert_array_equal(ds.ids, raw["name"])


@pytest.mark.parametrize("role", ["fold", "group", "id"])
def test_a_column_named_explicitly_must_exist_even_under_a_default_name(tmp_path, role):
    frame = small_frame().drop(columns=["fold", "name"])
    default = {"fold": "fold", "group": "group", "id": "name"}[role]
    with pytest.raises(DataError, match=f"{role} column {default!r} not found"):
        load_table(TableSpec(str(write_csv(tmp_path, frame)), **{role: default}))


def test_a_directory_given_as_the_table_is_named_as_a_directory(tmp_path):
    with pytest.raises(DataError, match="is a directory, not a table"):
        load_table(TableSpec(str(tmp_path)))
