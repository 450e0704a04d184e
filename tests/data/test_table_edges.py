"""Tables at their edges: the digest is of the bytes parsed, labels are kept as written, numbers written as text
are reported, and a file cannot ask for more memory than the stated cap (checked from its headers)."""

from __future__ import annotations

import gzip
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qwave.data import TableSpec, load_table
from qwave.data import table as table_module
from qwave.errors import DataError


def frame(labels: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"label": labels, **{f"f{j}": rng.normal(size=len(labels)) for j in range(3)}})


def test_the_digest_is_of_the_bytes_that_were_parsed_even_when_the_file_changes_meanwhile(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    frame(["a", "b"] * 5).to_csv(path, index=False)
    first = path.read_bytes()
    other = frame(["a", "b", "c"] * 4)
    real_read = table_module.read_bytes

    def read_then_rewrite(p: Path) -> bytes:
        raw = real_read(p)
        other.to_csv(path, index=False)  # another writer replaces the file right after it was read
        return raw

    monkeypatch.setattr(table_module, "read_bytes", read_then_rewrite)
    ds = load_table(TableSpec(str(path)))
    assert ds.classes == ["a", "b"] and len(ds.y) == 10
    assert ds.file_sha256 == hashlib.sha256(first).hexdigest() and ds.file_bytes == len(first)


def test_bench_fingerprints_the_bytes_the_dataset_was_parsed_from(tmp_path):
    from qwave.bench.provenance import file_identity

    path = tmp_path / "t.csv"
    frame(["a", "b"] * 5).to_csv(path, index=False)
    ds = load_table(TableSpec(str(path)))
    raw = path.read_bytes()
    path.write_text("changed")
    assert file_identity(ds) == {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def test_labels_are_kept_as_written_and_two_spellings_of_one_number_are_refused(tmp_path):
    path = tmp_path / "t.csv"
    frame(["01", "02", "10"] * 4).to_csv(path, index=False)
    ds = load_table(TableSpec(str(path)))
    assert ds.classes == ["01", "02", "10"]  # as written, in numeric order
    frame(["1", "2", "10"] * 4).to_csv(path, index=False)
    assert load_table(TableSpec(str(path))).classes == ["1", "2", "10"]
    frame(["01", "1", "2"] * 4).to_csv(path, index=False)
    with pytest.raises(DataError, match="'01', '1'"):
        load_table(TableSpec(str(path)))


def test_a_column_of_numbers_written_as_text_is_reported_not_dropped(tmp_path):
    path = tmp_path / "t.csv"
    data = frame(["a", "b"] * 5)
    data["price"] = [f"{1000 + i:,}.5" for i in range(10)]  # "1,000.5", ...
    data.to_csv(path, index=False)
    with pytest.raises(DataError, match="'price' holds numbers written as text"):
        load_table(TableSpec(str(path)))
    assert load_table(TableSpec(str(path), drop=["price"])).feature_names == ["f0", "f1", "f2"]


def test_a_text_metadata_column_is_still_ignored(tmp_path):
    path = tmp_path / "t.csv"
    data = frame(["a", "b"] * 5)
    data["note"] = ["x1", "y"] * 5
    data.to_csv(path, index=False)
    assert load_table(TableSpec(str(path))).feature_names == ["f0", "f1", "f2"]


def _npz_claiming(path: Path, rows: int) -> None:
    """An .npz whose 'X' header claims ``rows`` x 64 float64 but holds a few bytes of data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (rows, 64)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("X.npy", header.getvalue() + b"\0" * 64)
        y = io.BytesIO()
        np.save(y, np.zeros(rows, np.int64))
        archive.writestr("y.npy", y.getvalue()[:200])


def test_an_npz_header_asking_for_more_than_its_bytes_is_refused_before_allocating(tmp_path):
    path = tmp_path / "bomb.npz"
    _npz_claiming(path, 10_000_000)  # 5.1 GB claimed by a file of a few hundred bytes
    with pytest.raises(DataError, match="declares"):
        load_table(TableSpec(str(path)))


def test_a_deflate_bomb_npz_is_refused_at_the_stated_cap(tmp_path):
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, X=np.zeros((300_000, 128), np.float64), y=np.zeros(300_000, np.int64))
    size = path.stat().st_size  # ~300 KB holding ~300 MB
    with pytest.raises(DataError, match=f"cap of {table_module.table_cap(size):,} bytes"):
        load_table(TableSpec(str(path)))


def test_a_parquet_whose_footer_declares_too_many_cells_is_refused_at_the_stated_cap(tmp_path):
    path = tmp_path / "zeros.parquet"
    rows = 2_000_000
    pd.DataFrame({"label": np.zeros(rows, np.int8), **{f"f{j}": np.zeros(rows, np.float32) for j in range(20)}}
                 ).to_parquet(path)
    size = path.stat().st_size
    assert size < 2_000_000  # run-length encoded zeros: the footer declares 2M x 21 cells
    with pytest.raises(DataError, match=f"cap of {table_module.table_cap(size):,} bytes"):
        load_table(TableSpec(str(path)))


def test_a_gzip_csv_that_inflates_past_the_cap_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(table_module, "MIN_TABLE_CAP", 1 << 20)
    path = tmp_path / "t.csv.gz"
    text = "label,f0\n" + "a,0\nb,0\n" * 400_000  # 3.2 MB of text, a few kB compressed
    path.write_bytes(gzip.compress(text.encode()))
    with pytest.raises(DataError, match="inflates to more than"):
        load_table(TableSpec(str(path)))
    small = tmp_path / "s.csv.gz"
    small.write_bytes(gzip.compress(frame(["a", "b"] * 5).to_csv(index=False).encode()))
    assert load_table(TableSpec(str(small))).classes == ["a", "b"]
