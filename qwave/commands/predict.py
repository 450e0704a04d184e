"""``qwave predict``: run a saved artifact on a table or a .npy array -> predictions.csv (id, class, probabilities)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from qwave import atomic
from qwave.commands.compare import _columns, _unlabelled, feature_names
from qwave.data import TableSpec
from qwave.data.source import table_file
from qwave.deploy import Classifier, load
from qwave.errors import ConfigError, DataError

log = logging.getLogger(__name__)

EPILOG = """examples:
  qwave predict outputs/default/8/fold_1/artifact --data table.parquet --out predictions.csv
  qwave predict models/int4 --data embeddings.npy --out predictions.csv --top-k 3
  qwave predict models/int4 --data table.csv --id-column clip --out predictions.csv

Feature columns of a table are taken by name: the artifact records the feature columns it was trained on, so
their order in the table does not matter, and a missing feature or an extra numeric column (not a metadata name
such as fold, name, label, category, class_id, nor the id / label column) is an error naming them. Artifacts
saved before names were recorded take every numeric non-metadata column in table order (with a note). A .npy
holds the rows themselves, in training column order: [rows, features], or one row as a 1-D array.
"""


def read_inputs(path: Path, id_column: str | None, label: str,
                names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows and ids of a .npy array (ids = row numbers; a 1-D array is one row) or of a table (ids from
    ``id_column`` when present; the feature columns ``names`` by name when given)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    if path.name.lower().endswith(".npy"):
        try:
            X = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise DataError(f"{path}: not a readable .npy array ({err}).") from None
        if X.ndim == 1:
            X = X[None]
        if X.ndim != 2:
            raise DataError(f"{path}: holds an array of shape {X.shape}; give rows [rows, features] (or one row).")
        return X, np.arange(len(X)).astype(str)
    columns = _columns(str(path)) or []
    ident = id_column if id_column in columns else None
    if id_column and id_column != "name" and ident is None:
        raise DataError(f"{path}: id column {id_column!r} not found.")
    X, ids, _ = _unlabelled(TableSpec(path=str(path), label=label, id=ident, model_features=names), [])
    return X, ids


def predictions_frame(ids: np.ndarray, proba: np.ndarray, classes: list[str], top_k: int) -> pd.DataFrame:
    """id, the predicted class, its probability, then the next ``top_k - 1`` classes, then every probability."""
    order = np.argsort(-proba, axis=1, kind="stable")[:, :top_k]
    frame = pd.DataFrame({"id": ids, "class": [classes[i] for i in order[:, 0]],
                          "probability": proba[np.arange(len(proba)), order[:, 0]]})
    for rank in range(1, top_k):
        frame[f"class_{rank + 1}"] = [classes[i] for i in order[:, rank]]
        frame[f"probability_{rank + 1}"] = proba[np.arange(len(proba)), order[:, rank]]
    return pd.concat([frame, pd.DataFrame(proba, columns=[f"p_{c}" for c in classes])], axis=1)


def predict_file(classifier: Classifier, data: Path, out: Path, top_k: int, id_column: str | None,
                 label: str) -> pd.DataFrame:
    """Predict every row of ``data`` and write ``out`` atomically; returns the frame written."""
    if not 1 <= top_k <= len(classifier.classes):
        raise ConfigError(f"--top-k must be between 1 and the {len(classifier.classes)} classes, got {top_k}")
    X, ids = read_inputs(data, id_column, label, feature_names(classifier, "the artifact"))
    frame = predictions_frame(ids, classifier.predict_proba(X), classifier.classes, top_k)
    atomic.write_with(out, lambda tmp: frame.to_csv(tmp, index=False), suffix=".csv")
    return frame


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qwave predict", description=__doc__.split(": ", 1)[1], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path, help="artifact directory (model.safetensors + manifest.json)")
    parser.add_argument("--data", type=lambda s: Path(table_file(s)), required=True,
                        help="table (.csv, .csv.gz, .parquet, or bundled:<name>) or .npy rows")
    parser.add_argument("--out", type=Path, required=True, help="predictions CSV to write")
    parser.add_argument("--top-k", type=int, default=1, help="also list the next k-1 classes (default 1)")
    parser.add_argument("--id-column", default="name", help="id column of a table (default: name, when present)")
    parser.add_argument("--label", default="label", help="label column to leave out of the features if present")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="read an artifact of format version 1, which carries no checksums (trusted files only)")
    args = parser.parse_args(argv)
    atomic.check_writable(args.out, "--out")
    classifier = load(args.artifact, allow_unverified=args.allow_unverified)
    frame = predict_file(classifier, args.data, args.out, args.top_k, args.id_column, args.label)
    log.info("wrote %s: %d rows, %d classes", args.out, len(frame), len(classifier.classes))
    return 0
