"""Embedding tables (CSV, CSV.GZ, Parquet, NPZ) -> a validated ``Dataset``: features, labels, folds, groups.

Which column plays which role is stated by a ``TableSpec``; the fold, group and id roles default to ``auto``: the
column ``fold`` / ``group`` / ``name`` when the table has it, else none (stratified folds, no groups, row numbers
as ids), while a column named explicitly must exist. Every other numeric column is a feature unless its name is a
well-known metadata name (``fold``, ``class_id``, ``take``, ...), so a second label column such as ESC-50's
``class_id`` never leaks into the features; a column is metadata by content only when no value in it is a number.
Duplicate column names, a column of numbers holding one non-number and a column of numbers written as text
(``"1,234.5"``) are errors, never renamed or dropped in silence. Labels are kept as written: ``"01"`` and ``"1"``
are not silently merged into one class (two spellings of one number are refused). Problems raise ``DataError``
naming file, column and the first bad row.

The file is read once: its sha256 (``Dataset.file_sha256``, the run's data identity) is taken from the very bytes
that are parsed. Before parsing, what the file asks for is bounded: the rows x columns a Parquet footer declares,
the array shapes an .npz's headers declare and the bytes a .csv.gz inflates to may not exceed ``MAX_EXPANSION``
times the file's size (at least ``MIN_TABLE_CAP``) nor ``MAX_TABLE_BYTES``.

A model's ``feature_names`` select a table's columns by name (``TableSpec.model_features``): order does not
matter, a missing feature or an extra numeric column is refused naming them.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import io
import logging
import re
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from qwave.errors import DataError

log = logging.getLogger(__name__)

# Column names that describe a sample rather than measure it (ESC-50, UrbanSound8K, FSDD and generic layouts);
# compared case-insensitively and never used as features unless listed in ``TableSpec.features``.
METADATA_NAMES = frozenset(
    name.lower()
    for name in (
        "folder", "fold", "name", "label", "category", "class_id", "target", "clip", "take", "speaker",
        "filename", "fsID", "slice_file_name", "classID", "class", "id", "group", "start", "end", "salience",
    )
)
EXTENSIONS = (".csv", ".csv.gz", ".parquet", ".npz")
# Caps on what a table file may ask for in memory, checked from its headers before anything is allocated.
MAX_TABLE_BYTES = 16 * 2**30
MAX_EXPANSION = 256  # in-memory bytes per file byte (float embeddings compress ~1-3x)
MIN_TABLE_CAP = 256 * 2**20  # small files may expand further (constant columns compress well)
# A cell of text that is a number written with thousands separators, spaces or a decimal comma.
NUMERIC_TEXT = re.compile(r"\s*[-+]?(\d[\d,' _]*)?[.,]?\d+([eE][-+]?\d+)?\s*")
AUTO = "auto"
# The column an ``auto`` role uses when the table has it (qwave extract writes these names).
DEFAULT_COLUMNS = {"fold": "fold", "group": "group", "id": "name"}
# What an absent ``auto`` role means, for the loader's summary line.
ABSENT = {"fold": "none, folds will be stratified", "group": "none", "id": "row numbers"}


@dataclass
class TableSpec:
    """Where a table is and which of its columns are label, fold, group, sample id and features.

    ``fold``, ``group`` and ``id``: a column name (must exist), ``auto`` (the default column when present) or None.
    ``model_features``: the feature names a saved model was trained on; the features are then exactly these
    columns in this order, and a missing one or an extra numeric column is an error.
    """

    path: str
    label: str = "label"
    fold: str | None = AUTO
    group: str | None = AUTO
    id: str | None = AUTO
    features: list[str] | None = None
    drop: list[str] = field(default_factory=list)
    model_features: list[str] | None = None


@dataclass
class Dataset:
    """Features ``X`` (float32 [n, d]) with integer labels ``y`` (0..C-1) and the metadata folds need."""

    X: np.ndarray
    y: np.ndarray
    classes: list[str]
    fold: np.ndarray | None
    group: np.ndarray | None
    ids: np.ndarray
    feature_names: list[str]
    source: str
    file_sha256: str = ""  # of the bytes that were parsed
    file_bytes: int = 0

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_features(self) -> int:
        return self.X.shape[1]

    def subset(self, idx: np.ndarray) -> Dataset:
        """The rows ``idx`` (indices or boolean mask), keeping the full class list so codes stay stable."""
        return dataclasses.replace(
            self, X=self.X[idx], y=self.y[idx], classes=list(self.classes), ids=self.ids[idx],
            fold=None if self.fold is None else self.fold[idx], group=None if self.group is None else self.group[idx],
            feature_names=list(self.feature_names),
        )


def resolve_roles(spec: TableSpec, columns: list[str]) -> TableSpec:
    """``spec`` with each ``auto`` role set to its default column when ``columns`` has it, else None."""
    auto = {role: DEFAULT_COLUMNS[role] if DEFAULT_COLUMNS[role] in columns else None
            for role in DEFAULT_COLUMNS if getattr(spec, role) == AUTO}
    return dataclasses.replace(spec, **auto)


def load_table(spec: TableSpec) -> Dataset:
    """Read and validate the table described by ``spec``."""
    path = Path(spec.path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a table; give a .csv, .csv.gz, .parquet or .npz file (to make "
                        "a table from a folder of audio or images, use qwave extract).")
    ext = _extension(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    raw = read_bytes(path)
    if ext == ".npz":
        ds = _load_npz(path, raw, spec)
    else:
        ds = _load_frame(path, _read_frame(path, ext, raw, [spec.label]), spec)
    ds.file_sha256, ds.file_bytes = hashlib.sha256(raw).hexdigest(), len(raw)
    return ds


def read_bytes(path: Path) -> bytes:
    """The whole file, read once (its digest and its parse then describe the same bytes)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc}).") from None
    if not raw:
        raise DataError(f"{path}: file is empty.")
    return raw


def table_cap(file_bytes: int) -> int:
    """The most bytes a table of ``file_bytes`` may take in memory (see the module docstring)."""
    return min(MAX_TABLE_BYTES, max(MIN_TABLE_CAP, MAX_EXPANSION * file_bytes))


def _refuse_size(path: Path, what: str, asked: int, file_bytes: int) -> None:
    cap = table_cap(file_bytes)
    if asked > cap:
        raise DataError(f"{path}: {what} {asked:,} bytes in memory, above the cap of {cap:,} bytes for a "
                        f"{file_bytes:,}-byte file (min({MAX_TABLE_BYTES:,}, max({MIN_TABLE_CAP:,}, "
                        f"{MAX_EXPANSION} x file size))).")


def _parquet_file(path: Path, raw: bytes):
    """The Parquet file in ``raw``, after checking the rows x columns (8 bytes a cell) its footer declares against
    the cap and its column names for repeats, before any column is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(pa.BufferReader(raw))
    meta = parquet.metadata
    _refuse_size(path, f"its footer declares {meta.num_rows:,} rows x {meta.num_columns:,} columns, about",
                 8 * meta.num_rows * meta.num_columns, len(raw))
    _refuse_duplicates(path, [str(n) for n in parquet.schema_arrow.names])
    return parquet


def _inflate(path: Path, raw: bytes) -> bytes:
    """The bytes of a gzip file (every member), stopping with an error once they pass the cap."""
    cap, out, data = table_cap(len(raw)), [], raw
    size = 0
    try:
        while data:
            d = zlib.decompressobj(wbits=31)
            while data:
                chunk = d.decompress(data, 1 << 20)
                data = d.unconsumed_tail
                size += len(chunk)
                out.append(chunk)
                _refuse_size(path, "it inflates to more than", size, len(raw)) if size > cap else None
                if d.eof:
                    break
            data = d.unused_data.lstrip(b"\0") if d.eof else b""
    except zlib.error as exc:
        raise DataError(f"{path}: cannot read the file as .csv.gz (gzip: {exc}).") from None
    return b"".join(out)


def _extension(path: Path) -> str:
    name = path.name.lower()
    for ext in EXTENSIONS:
        if name.endswith(ext):
            return ext
    raise DataError(f"{path}: unsupported file extension; use one of {', '.join(EXTENSIONS)}.")


def _read_frame(path: Path, ext: str, raw: bytes | None = None, text: list[str] = ()) -> pd.DataFrame:
    """The table parsed from ``raw`` (the file's bytes, read here if not given); the ``text`` columns of a CSV
    (the label) are kept as the strings written."""
    raw = read_bytes(path) if raw is None else raw
    try:
        if ext == ".parquet":
            frame = _parquet_file(path, raw).read().to_pandas()
        else:
            body = _inflate(path, raw) if ext == ".csv.gz" else raw
            header = pd.read_csv(io.BytesIO(body), header=None, nrows=1, dtype=str, keep_default_na=False)
            header = header.iloc[0].tolist()
            _refuse_duplicates(path, header)
            frame = pd.read_csv(io.BytesIO(body), low_memory=False, dtype={c: str for c in text if c in header})
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: file is empty.") from exc
    except (OSError, ValueError, EOFError, UnicodeDecodeError, pd.errors.ParserError, ImportError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise DataError(f"{path}: cannot read the file as {ext} ({type(exc).__name__}: {detail}).") from exc
    if len(frame) == 0:
        raise DataError(f"{path}: table has a header but no data rows.")
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _refuse_duplicates(path: Path, header: list[str]) -> None:
    name, count = next(((n, k) for n, k in Counter(header).items() if k > 1), (None, 0))
    if name is not None:
        places = [i + 1 for i, n in enumerate(header) if n == name]
        raise DataError(f"{path}: column name {name!r} appears {count} times (columns {_listed(places)}); give every "
                        "column its own name (a repeated name would be renamed and could leak into the features).")


def _listed(numbers: list[int]) -> str:
    return ", ".join(str(n) for n in numbers)


def _shorten(names: list[str], head: int = 8, tail: int = 2) -> str:
    if len(names) <= head + tail + 2:
        return ", ".join(names)
    return ", ".join([*names[:head], "...", *names[len(names) - tail :]]) + f" ({len(names)} in all)"


def _require_column(path: Path, columns: list[str], role: str, name: str) -> None:
    if name in columns:
        return
    close = difflib.get_close_matches(name, columns, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise DataError(f"{path}: {role} column {name!r} not found{hint}; available: {_shorten(columns)}.")


def _rows(mask: np.ndarray, limit: int = 5) -> str:
    """'rows 3, 7, 9 (of 12)' for the first ``limit`` 0-based data rows where ``mask`` holds."""
    rows = np.flatnonzero(mask)
    listed = ", ".join(str(r) for r in rows[:limit])
    return f"rows {listed}" + (f" (of {len(rows)})" if len(rows) > limit else "")


def _mixed_column(path: Path, name: str, values: pd.Series) -> None:
    """A column of numbers with some non-numbers in it is a data error (naming the first one), not metadata; so is
    a column whose every value is a number written as text with separators (``"1,234.5"``)."""
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna()
    if numbers.notna().any() and bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path}: column {name!r} holds numbers and non-numbers (first: {values.iloc[row]!r} at row "
                        f"{row}, 0-based data rows); fix the value, or list the column under drop.")
    given = values.dropna()
    if len(given) and given.map(lambda v: isinstance(v, str) and NUMERIC_TEXT.fullmatch(v) is not None).all():
        raise DataError(f"{path}: column {name!r} holds numbers written as text (e.g. {given.iloc[0]!r}); write plain "
                        "numbers (no thousands separators, '.' as decimal point), or list the column under drop.")


def model_columns(path: Path, frame: pd.DataFrame, taken: set[str], names: list[str]) -> list[str]:
    """The columns ``names`` (a model's features, in its order), refusing a missing one or an extra numeric column
    that is not a metadata name nor ``taken`` (label, fold, group, id, drop), naming them."""
    columns = set(frame.columns)
    missing = [n for n in names if n not in columns]
    known = set(names)
    extra = [c for c in frame.columns if c not in known and c not in taken and c.lower() not in METADATA_NAMES
             and pd.api.types.is_numeric_dtype(frame[c])]
    if missing or extra:
        parts = [f"lacks {_shorten([repr(n) for n in missing], 5, 1)}" if missing else "",
                 f"has extra numeric column(s) {_shorten([repr(c) for c in extra], 5, 1)}" if extra else ""]
        raise DataError(f"{path}: the model was trained on {len(names)} named feature columns and the table "
                        f"{' and '.join(p for p in parts if p)}; give the table the model's feature columns "
                        "(their order does not matter)")
    for name in names:
        if not pd.api.types.is_numeric_dtype(frame[name]):
            bad = _first(frame[name])
            raise DataError(f"{path}: feature column {name!r} is not numeric (e.g. value {bad[1]!r} at row {bad[0]}, "
                            "0-based data rows).")
    return list(names)


def _load_frame(path: Path, frame: pd.DataFrame, spec: TableSpec) -> Dataset:
    columns = list(frame.columns)
    given = spec
    spec = resolve_roles(spec, columns)
    roles = {"label": spec.label, "fold": spec.fold, "group": spec.group, "id": spec.id}
    roles = {role: name for role, name in roles.items() if name is not None}
    for role, name in roles.items():
        _require_column(path, columns, role, name)
    for name in spec.drop:
        _require_column(path, columns, "drop", name)
    taken = set(roles.values()) | set(spec.drop)

    if spec.model_features is not None:
        features = model_columns(path, frame, taken, list(spec.model_features))
        ignored = [c for c in columns if c not in taken and c not in features]
    elif spec.features is not None:
        for name in spec.features:
            _require_column(path, columns, "feature", name)
            if name in roles.values():
                raise DataError(
                    f"{path}: column {name!r} is listed as a feature but is also the {_role(roles, name)}."
                )
            if not pd.api.types.is_numeric_dtype(frame[name]):
                bad = _first(frame[name])
                raise DataError(f"{path}: feature column {name!r} is not numeric (e.g. value {bad[1]!r} at row "
                                f"{bad[0]}, 0-based data rows).")
        features = list(spec.features)
        ignored = [c for c in columns if c not in taken and c not in features]
    else:
        rest = [c for c in columns if c not in taken and c.lower() not in METADATA_NAMES]
        for name in rest:
            if not pd.api.types.is_numeric_dtype(frame[name]):
                _mixed_column(path, name, frame[name])
        features = [c for c in rest if pd.api.types.is_numeric_dtype(frame[c])]
        ignored = [c for c in columns if c not in taken and c not in features]
    if not features:
        raise DataError(f"{path}: no numeric feature columns left after label/fold/group/id/drop; columns: "
                        f"{_shorten(columns)}.")

    X = _features(path, frame[features].to_numpy(dtype=np.float32), features)
    y, classes = _encode_labels(path, spec.label, frame[spec.label].to_numpy())
    fold = None if spec.fold is None else _encode_folds(path, spec.fold, frame[spec.fold].to_numpy())
    group = None if spec.group is None else _strings(path, spec.group, frame[spec.group].to_numpy())
    ids = np.arange(len(frame)).astype(str)
    if spec.id is not None:
        ids = _strings(path, spec.id, frame[spec.id].to_numpy())
    log.info("%s: %d rows, %d classes; %s; %d features (%s .. %s); %d metadata column(s) ignored%s%s",
             path, len(frame), len(classes), _roles_line(given, spec), len(features), features[0], features[-1],
             len(ignored), f" ({_shorten(ignored, 6, 1)})" if ignored else "",
             f"; dropped: {', '.join(spec.drop)}" if spec.drop else "")
    return Dataset(X, y, classes, fold, group, ids, features, str(path))


def _roles_line(given: TableSpec, resolved: TableSpec) -> str:
    """``label=label fold=fold group=none id=row numbers (no 'name' column)``: what each role uses and why."""
    parts = [f"label={resolved.label}"]
    for role in DEFAULT_COLUMNS:
        column = getattr(resolved, role)
        if column is not None:
            parts.append(f"{role}={column}")
        elif getattr(given, role) == AUTO:
            parts.append(f"{role}={ABSENT[role]} (no {DEFAULT_COLUMNS[role]!r} column)")
        else:
            parts.append(f"{role}={ABSENT[role]}")
    return " ".join(parts)


def _role(roles: dict[str, str], name: str) -> str:
    return next(f"{role} column" for role, col in roles.items() if col == name)


def _first(values: pd.Series) -> tuple[int, object]:
    """The 0-based row and value of the first entry that does not parse as a number (for error messages)."""
    bad = pd.to_numeric(values, errors="coerce").isna() & values.notna()
    row = int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else 0
    return row, values.iloc[row]


def _features(path: Path, X: np.ndarray, names: list[str]) -> np.ndarray:
    bad = ~np.isfinite(X)
    if bad.any():
        cols = [names[j] for j in np.flatnonzero(bad.any(axis=0))]
        raise DataError(
            f"{path}: NaN or infinite feature values in column(s) {_shorten([repr(c) for c in cols], 5, 0)} at "
            f"{_rows(bad.any(axis=1))} (0-based data rows)."
        )
    return np.ascontiguousarray(X)


def _encode_labels(path: Path, column: str, values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Codes 0..C-1 in sorted class order (numeric order for numbers) and the class names as strings: numbers
    stored as numbers print as numbers, text labels stay as written, sorted by value when each is a number
    (two spellings of one number, ``"01"`` and ``"1"``, are refused instead of merged)."""
    missing = pd.isna(values)
    if missing.any():
        raise DataError(f"{path}: label column {column!r} is empty at {_rows(missing)} (0-based data rows).")
    if values.dtype.kind in "biuf":
        numbers = values.astype(np.float64)
        if np.all(numbers == np.round(numbers)):
            values = numbers.astype(np.int64)
    else:
        values = values.astype(str)
        written = np.unique(values)
        numbers = pd.to_numeric(pd.Series(written), errors="coerce").to_numpy(dtype=np.float64)
        if not np.isnan(numbers).any():
            return _numeric_text_labels(path, column, values, written, numbers)
    uniq, y = np.unique(values, return_inverse=True)
    if len(uniq) < 2:
        raise DataError(f"{path}: label column {column!r} has one class only ('{uniq[0]}'); need two.")
    return y.astype(np.int64), [str(v) for v in uniq]


def _numeric_text_labels(path: Path, column: str, values: np.ndarray, written: np.ndarray,
                         numbers: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Labels written as numbers in text: kept as written, in numeric order; two spellings of one number refused."""
    for value in np.unique(numbers):
        same = written[numbers == value]
        if len(same) > 1:
            raise DataError(f"{path}: label column {column!r} writes one number as "
                            f"{', '.join(repr(str(v)) for v in same[:3])}; write each class one way (labels are "
                            "kept as written, never merged).")
    classes = [str(v) for v in written[np.argsort(numbers, kind="stable")]]
    if len(classes) < 2:
        raise DataError(f"{path}: label column {column!r} has one class only ('{classes[0]}'); need two.")
    code = {name: i for i, name in enumerate(classes)}
    return np.array([code[v] for v in values], dtype=np.int64), classes


def _encode_folds(path: Path, column: str, values: np.ndarray) -> np.ndarray:
    """Integer fold ids; strings such as 'fold3' give 3."""
    missing = pd.isna(values)
    if missing.any():
        raise DataError(f"{path}: fold column {column!r} is empty at {_rows(missing)} (0-based data rows).")
    if values.dtype.kind in "biu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        bad = values != np.round(values)
        if bad.any():
            raise DataError(f"{path}: fold column {column!r} has non-integer value {values[bad][0]}.")
        return values.astype(np.int64)
    codes = {}
    for value in np.unique(values.astype(str)):
        match = re.fullmatch(r"\D*(\d+)", value.strip())
        if match is None:
            raise DataError(f"{path}: fold column {column!r} has value '{value}' with no fold number.")
        codes[value] = int(match.group(1))
    return np.array([codes[v] for v in values.astype(str)], dtype=np.int64)


def _strings(path: Path, column: str, values: np.ndarray) -> np.ndarray:
    missing = pd.isna(values)
    if missing.any():
        raise DataError(f"{path}: column {column!r} is empty at {_rows(missing)} (0-based data rows).")
    return values.astype(str).astype(object)


def _check_npz(path: Path, raw: bytes) -> None:
    """The bytes every member's .npy header declares (shape x item size), each no more than the member holds and
    all together within the cap, read from the headers before any array is allocated."""
    total = 0
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        for info in archive.infolist():
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read(member, max_header_size=10_000)
                declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if declared > info.file_size:
                    raise DataError(f"{path}: array {info.filename!r} declares {declared:,} bytes but holds "
                                    f"{info.file_size:,}.")
                total += max(declared, info.file_size)
    _refuse_size(path, "its arrays declare", total, len(raw))


def _load_npz(path: Path, raw: bytes, spec: TableSpec) -> Dataset:
    """NPZ arrays ``X`` and ``y`` (required), ``fold``, ``group``, ``ids``, ``classes`` (optional).

    With ``classes``, ``y`` holds integer codes into it; otherwise ``y`` holds label values, coded like a
    label column.
    """
    try:
        _check_npz(path, raw)
        with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read the file as .npz ({type(exc).__name__}: {exc}).") from exc
    for key in ("X", "y"):
        if key not in arrays:
            raise DataError(f"{path}: array {key!r} missing; the archive holds {_shorten(sorted(arrays))}.")
    X = arrays["X"]
    if X.ndim != 2 or X.shape[0] == 0 or X.dtype.kind not in "biuf":
        raise DataError(f"{path}: array 'X' must be a non-empty numeric [rows, features] matrix, got "
                        f"{X.dtype} {X.shape}.")
    n = X.shape[0]
    for key in ("y", "fold", "group", "ids"):
        if key in arrays and arrays[key].shape != (n,):
            raise DataError(f"{path}: array {key!r} has shape {arrays[key].shape} but 'X' has {n} rows.")
    names = [str(j) for j in range(X.shape[1])]
    if spec.model_features is not None:
        spec = dataclasses.replace(spec, features=list(spec.model_features))
        unknown = sorted(set(names) - set(spec.features), key=int)
        if unknown:
            raise DataError(f"{path}: the model was trained on {len(spec.features)} features and 'X' has "
                            f"{len(names)} columns (extra: {_shorten(unknown, 5, 1)}).")
    if spec.features is not None:
        for name in spec.features:
            _require_column(path, names, "feature", name)
        X, names = X[:, [int(name) for name in spec.features]], list(spec.features)
    X = _features(path, X.astype(np.float32), names)
    if "classes" in arrays:
        y, classes = _coded_labels(path, arrays["y"], [str(c) for c in arrays["classes"]])
    else:
        y, classes = _encode_labels(path, "y", arrays["y"])
    fold = _encode_folds(path, "fold", arrays["fold"]) if "fold" in arrays else None
    group = _strings(path, "group", arrays["group"]) if "group" in arrays else None
    ids = _strings(path, "ids", arrays["ids"]) if "ids" in arrays else np.arange(n).astype(str)
    log.info("%s: %d rows, %d classes, %d features; fold=%s group=%s ids=%s", path, n, len(classes),
             X.shape[1], "fold" in arrays, "group" in arrays, "ids" in arrays)
    return Dataset(X, y, classes, fold, group, ids, names, str(path))


def _coded_labels(path: Path, y: np.ndarray, classes: list[str]) -> tuple[np.ndarray, list[str]]:
    if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= len(classes):
        raise DataError(f"{path}: array 'y' must hold integer codes 0..{len(classes) - 1} into 'classes'.")
    if len(np.unique(y)) < 2:
        raise DataError(f"{path}: array 'y' has one class only ('{classes[y[0]]}'); need two.")
    return y.astype(np.int64), classes
