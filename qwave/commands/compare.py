"""``qwave compare``: a quantized artifact against its original on the rows of a table (logits, predictions,
sequences, speed, sizes, kernels)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from qwave import artifact
from qwave.atomic import check_writable, write_json, write_with
from qwave.data import TableSpec, load_table
from qwave.data.source import add_table_arguments, table_spec
from qwave.data.table import METADATA_NAMES, _extension, _read_frame, model_columns, resolve_roles
from qwave.errors import ArtifactError, ConfigError, DataError
from qwave.eval.compare import Comparison, Rows, compare_models
from qwave.eval.sequence import parse_tokens
from qwave.size import artifact_report
from qwave.tables import model_label, text_table
from qwave.train import resolve_device

log = logging.getLogger(__name__)

EPILOG = """examples:
  qwave compare models/fp32 models/int8 --data esc50.csv.gz --label class_id --split test
  qwave compare models/fp32 models/int4 --data unlabelled.csv --no-labels --output-csv int4.csv
  qwave compare ctc/fp32 ctc/int8 --data frames.csv --reference-column phonemes   # sequence (CTC) models
"""


def _columns(path: str) -> list[str] | None:
    """Column names of a table file (None for .npz, which has arrays instead)."""
    if not Path(path).is_file():
        return None
    ext = _extension(Path(path))
    if ext == ".npz":
        return None
    if ext == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    return list(pd.read_csv(path, nrows=0).columns)


def feature_names(model: object, source: object) -> list[str] | None:
    """The feature names an artifact was trained on; None (with one note) for an artifact saved without them."""
    names = getattr(model, "feature_names", None)
    if names is None:
        log.warning("note: %s records no feature names (saved by an older qwave); table columns are taken in "
                    "their order, as in training", source)
    return names


def _unlabelled(spec: TableSpec, drop: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Features, ids and folds of a table without a label column (features chosen as ``load_table`` does, or the
    model's ``spec.model_features`` by name)."""
    path = Path(spec.path)
    frame = _read_frame(path, _extension(path))
    spec = resolve_roles(spec, list(frame.columns))
    taken = {c for c in (spec.label, spec.fold, spec.id, spec.group, *drop) if c}
    if spec.model_features is not None:
        features = model_columns(path, frame, taken, list(spec.model_features))
    else:
        features = [c for c in frame.columns if c not in taken and c.lower() not in METADATA_NAMES
                    and pd.api.types.is_numeric_dtype(frame[c])]
    X = frame[features].to_numpy(dtype=np.float32)
    if not np.isfinite(X).all():
        raise DataError(f"{path}: NaN or infinite feature values")
    ids = frame[spec.id].astype(str).to_numpy() if spec.id else np.arange(len(frame)).astype(str)
    fold = frame[spec.fold].to_numpy() if spec.fold else None
    return X, ids, fold


def load_rows(args: argparse.Namespace, model: object) -> tuple[Rows, np.ndarray | None]:
    """Rows of the table for ``model`` (labels mapped onto its classes) and their folds; see the options."""
    spec = table_spec(args)
    spec.model_features = feature_names(model, getattr(args, "original", "the artifact"))
    classes = list(getattr(model, "classes", None) or [])
    drop = [args.reference_column] if args.reference_column else []
    columns = _columns(args.data)
    labelled = not args.no_labels and not args.reference_column and (columns is None or spec.label in columns)
    if args.reference_column and columns is not None and args.reference_column not in columns:
        raise DataError(f"{args.data}: reference column {args.reference_column!r} not found")
    if labelled:
        spec.drop = drop
        ds = load_table(spec)
        X, ids, fold = ds.X, ds.ids, ds.fold
        unknown = sorted(set(ds.classes) - set(classes)) if classes else []
        if unknown:
            raise DataError(f"{args.data}: label(s) {unknown[:3]} in column {spec.label!r} are not classes of the "
                            f"model ({len(classes)} classes: {', '.join(classes[:5])}, ...)")
        index = {name: i for i, name in enumerate(classes)} if classes else {c: i for i, c in enumerate(ds.classes)}
        y = np.array([index[ds.classes[c]] for c in ds.y], dtype=np.int64)
        rows = Rows(X, ids, y=y, source=args.data)
    else:
        X, ids, fold = _unlabelled(spec, drop)
        rows = Rows(X, ids, source=args.data)
        if args.reference_column:
            frame = _read_frame(Path(args.data), _extension(Path(args.data)))
            try:
                rows.references = [parse_tokens(t, classes) for t in frame[args.reference_column].fillna("")]
            except ValueError as err:
                raise DataError(f"{args.data}: column {args.reference_column!r}: {err}") from None
    return rows, fold


def select_rows(rows: Rows, fold: np.ndarray | None, args: argparse.Namespace, manifest: dict) -> Rows:
    """``--fold K`` or ``--split test`` (the original's held-out fold), then ``--num-samples`` seeded rows."""
    keep = np.ones(len(rows.X), dtype=bool)
    k = args.fold
    if args.split == "test":
        k = (manifest.get("extra") or {}).get("test_fold")
        if k is None:
            raise ConfigError("--split test: the original artifact records no held-out fold (train it with "
                              "qwave train --test-fold K), or pass --fold K")
    if k is not None:
        if fold is None:
            raise DataError(f"{args.data}: --fold/--split needs a fold column and the table has none "
                            "(name it with --fold-column)")
        keep = np.asarray(fold).astype(str) == str(k)
        if not keep.any():
            raise DataError(f"{args.data}: no rows in fold {k} of the fold column")
    idx = np.flatnonzero(keep)
    if args.num_samples is not None:
        if args.num_samples < 1:
            raise ConfigError(f"--num-samples must be >= 1, got {args.num_samples}")
        rng = np.random.default_rng(args.seed)
        idx = np.sort(rng.choice(idx, size=min(args.num_samples, len(idx)), replace=False))
    return Rows(rows.X[idx], rows.ids[idx], None if rows.y is None else rows.y[idx],
                None if rows.references is None else [rows.references[i] for i in idx], rows.source)


def compare_parser(prog: str, doc: str, epilog: str, second: str, second_help: str) -> argparse.ArgumentParser:
    """The parser of compare and compare-all: the original artifact, ``second`` and the options they share."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("original", type=Path, help="artifact directory of the original (FP32) model")
    parser.add_argument(second, type=Path, help=second_help)
    add_table_arguments(parser)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--fold", default=None, help="compare on the rows of this fold only")
    where.add_argument("--split", choices=["test"], default=None, help="test: the original's held-out fold")
    parser.add_argument("--num-samples", type=int, default=None, help="a seeded random subset of N rows")
    parser.add_argument("--no-labels", action="store_true", help="label-free metrics only")
    parser.add_argument("--reference-column", default=None,
                        help="sequence models: space-separated reference tokens (class names) per row")
    parser.add_argument("--blank", type=int, default=0, help="CTC blank class index (default 0)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats per model (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up runs per model (default 3)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="seed of --num-samples")
    return parser


def run_pair(original_dir: Path, quantized_dir: Path, args: argparse.Namespace, cache: dict | None = None
             ) -> Comparison:
    """Load both artifacts, select the rows and compare; adds sizes and the paths to the summary."""
    original = artifact.load(original_dir)
    quantized = artifact.load(quantized_dir)
    named = (original.feature_names, quantized.feature_names)
    if None not in named and named[0] != named[1]:
        raise ArtifactError(f"{original_dir} and {quantized_dir} were trained on different feature columns")
    cache = {} if cache is None else cache
    if "rows" not in cache:
        rows, fold = load_rows(args, original)
        cache["rows"] = select_rows(rows, fold, args, original.manifest)
    result = compare_models(original, quantized, cache["rows"], device=resolve_device(args.device),
                            warmup=args.warmup, repeats=args.repeats, batch_size=args.batch_size, blank=args.blank,
                            names=(str(original_dir), str(quantized_dir)))
    sizes = {}
    for which, path in (("original", original_dir), ("quantized", quantized_dir)):
        rep = artifact_report(path)
        sizes[which] = {"stored_bytes": rep.stored_bytes, "file_bytes": rep.file_bytes}
    sizes["ratio"] = sizes["original"]["file_bytes"] / sizes["quantized"]["file_bytes"]
    fmt, label = _formats(quantized.manifest)
    result.summary.update(original=str(original_dir), quantized=str(quantized_dir), data=args.data, sizes=sizes,
                          format=fmt, label=label)
    return result


def _formats(manifest: dict) -> tuple[str, str]:
    """The quantized model's layer formats (``int4``; several joined by ``+``) and the same as people name them
    (``int4 (W4A8)``, ``tables.model_label``; weight-only layers say so)."""
    layers = manifest.get("layers", {}).values()
    names = sorted({spec["format"] for spec in layers})
    labels = sorted({model_label(spec["format"], (spec.get("options") or {}).get("activations") == "float")
                     for spec in layers})
    return "+".join(names) or "fp32", "+".join(labels) or "fp32"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def render(result: Comparison) -> str:
    """The printed report of one comparison."""
    s = result.summary
    lines = [f"compare {s['original']} -> {s['quantized']} ({s['label']}) on {s['n']} rows of {s['data']}"]
    lg = s["logits"]
    lines.append(f"  logits   MSE {lg['mse']:.4g}  MAE {lg['mae']:.4g}  cosine {lg['cosine']:.4f}  "
                 f"max|diff| {lg['max_abs']:.4g}  KL {lg['kl']:.4g}")
    if s["kind"] == "classifier":
        p = s["predictions"]
        lines.append(f"  top-1 agreement {_pct(p['agreement'])}")
        for key in ("accuracy", "macro_f1"):
            if key in p:
                m = p[key]
                lines.append(f"  {key:9s} original {m['original']:.4f}  quantized {m['quantized']:.4f}  "
                             f"drop {m['drop']:+.4f} ({_pct(m['drop_rel'])} relative)")
        if "per_class" in p:
            worst = sorted(p["per_class"].items(), key=lambda kv: -kv[1]["f1_drop"])[:5]
            lines.append("  largest per-class F1 drops: " + ", ".join(f"{n} {v['f1_drop']:+.3f}" for n, v in worst))
        if not s["labelled"]:
            lines.append("  (no labels: label-free metrics only)")
    else:
        q = s["sequence"]
        lines.append(f"  frames agree {_pct(q['frame_agreement'])}  decoded sequences equal "
                     f"{_pct(q['sequence_exact_match'])}  mean edit distance {q['edit_distance_mean']:.3f}  "
                     f"similarity {q['similarity_mean']:.4f}")
        if "error_rate" in q:
            e = q["error_rate"]
            lines.append(f"  error rate original {e['original']:.4f}  quantized {e['quantized']:.4f}  "
                         f"increase {e['increase']:+.4f}")
    if "speed" in s:
        sp = s["speed"]
        lines.append(f"  speed    original {1e6 * sp['original']['seconds_per_sample']:.2f} us/sample  quantized "
                     f"{1e6 * sp['quantized']['seconds_per_sample']:.2f} us/sample  speed-up {sp['speedup']:.2f}x "
                     f"({sp['threads']} threads, {s['device']})")
    sz = s["sizes"]
    lines.append(f"  size     original {sz['original']['file_bytes']:,} B  quantized "
                 f"{sz['quantized']['file_bytes']:,} B  ({sz['ratio']:.2f}x smaller; tensors "
                 f"{sz['quantized']['stored_bytes']:,} B)")
    lines.append("  kernels of the quantized model:")
    layers = [{**layer, "time": _pct(layer["time_share"]),
               "note": "WARNING: fallback, not a fast kernel" if layer["fallback"] else ""}
              for layer in s["kernels"]["quantized"]]
    table = text_table(layers, ("path", "format", "kernel", "stored_bytes", "time", "note"))
    return "\n".join(lines + ["    " + line for line in table.splitlines()])


def write_outputs(result: Comparison, csv_path: str | None, json_path: str | None) -> None:
    """Per-sample CSV and summary JSON, each written atomically when a path is given."""
    if csv_path:
        write_with(csv_path, lambda tmp: result.per_sample.to_csv(tmp, index=False))
    if json_path:
        write_json(json_path, result.summary)


def run(argv: list[str]) -> int:
    parser = compare_parser("qwave compare", __doc__, EPILOG, "quantized", "artifact directory of the quantized model")
    parser.add_argument("--output-csv", default=None, help="per-sample CSV")
    parser.add_argument("--output-json", default=None, help="summary JSON")
    args = parser.parse_args(argv)
    for option, path in (("--output-csv", args.output_csv), ("--output-json", args.output_json)):
        if path:  # checked before any model runs
            check_writable(path, option)
    result = run_pair(args.original, args.quantized, args)
    write_outputs(result, args.output_csv, args.output_json)
    print(render(result))
    return 0
