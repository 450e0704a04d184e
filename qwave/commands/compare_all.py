"""``qwave compare-all``: compare every artifact found under a directory with the original, in one sorted table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from qwave.artifact import find_artifacts
from qwave.atomic import check_writable, write_json, write_with
from qwave.commands.compare import compare_parser, render, run_pair, write_outputs
from qwave.errors import ArtifactError
from qwave.eval.compare import Comparison
from qwave.tables import text_table

EPILOG = """examples:
  qwave compare-all models/fp32 models/ --data esc50.csv.gz --label class_id --split test
  qwave compare-all models/fp32 models/ --data t.csv --output-dir outputs/compare   # JSON + CSV per model
"""


def table_row(result: Comparison) -> dict:
    """One line of the compare-all table from a comparison's summary."""
    s = result.summary
    row = {"artifact": s["quantized"], "format": s["format"], "label": s["label"],
           "file_bytes": s["sizes"]["quantized"]["file_bytes"], "size_ratio": s["sizes"]["ratio"],
           "logit_mse": s["logits"]["mse"], "kl": s["logits"]["kl"], "cosine": s["logits"]["cosine"]}
    if s["kind"] == "classifier":
        p = s["predictions"]
        row["agreement"] = p["agreement"]
        for key in ("accuracy", "macro_f1"):
            if key in p:
                row[key] = p[key]["quantized"]
                row[f"{key}_drop"] = p[key]["drop"]
    else:
        q = s["sequence"]
        row["agreement"] = q["frame_agreement"]
        row["similarity"] = q["similarity_mean"]
        if "error_rate" in q:
            row["error_rate"] = q["error_rate"]["quantized"]
            row["error_rate_increase"] = q["error_rate"]["increase"]
    if "speed" in s:
        row["us_per_sample"] = 1e6 * s["speed"]["quantized"]["seconds_per_sample"]
        row["speedup"] = s["speed"]["speedup"]
    row["fallback_layers"] = sum(layer["fallback"] for layer in s["kernels"]["quantized"])
    return row


def sort_table(rows: list[dict]) -> pd.DataFrame:
    """Best first: by macro-F1 (or error rate, or agreement when unlabelled), then smaller files."""
    frame = pd.DataFrame(rows)
    key = next(k for k in ("macro_f1", "error_rate", "agreement") if k in frame)  # every row has an agreement
    return frame.sort_values([key, "file_bytes"], ascending=[key == "error_rate", True], ignore_index=True)


def run(argv: list[str]) -> int:
    parser = compare_parser("qwave compare-all", __doc__, EPILOG, "directory", "directory searched for quantized "
                            "artifacts")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="write compare_all.csv/json and each model's summary JSON and per-sample CSV here")
    parser.add_argument("--verbose", action="store_true", help="print each model's full report too")
    args = parser.parse_args(argv)
    if args.output_dir:
        check_writable(args.output_dir, "--output-dir", directory=True)
    original = args.original.resolve()
    found = [p for p in find_artifacts(args.directory) if p.resolve() != original]
    if not found:
        raise ArtifactError(f"{args.directory} holds no qwave artifacts (no manifest.json below it) besides the "
                            "original; run qwave quantize first")
    cache: dict = {}
    rows, summaries = [], {}
    for path in found:
        result = run_pair(args.original, path, args, cache)
        rows.append(table_row(result))
        summaries[str(path)] = result.summary
        if args.verbose:
            print(render(result))
        if args.output_dir:
            stem = str(path.relative_to(args.directory)).replace("/", "__") or path.name
            write_outputs(result, str(args.output_dir / f"{stem}.csv"), str(args.output_dir / f"{stem}.json"))
    table = sort_table(rows)
    if args.output_dir:
        write_with(args.output_dir / "compare_all.csv", lambda tmp: table.to_csv(tmp, index=False))
        write_json(args.output_dir / "compare_all.json", {"original": str(args.original), "models": summaries})
    print(f"qwave compare-all: {args.original} vs {len(found)} artifacts under {args.directory} "
          f"({len(cache['rows'].X)} rows of {args.data})")
    print(text_table(table.fillna("").to_dict("records"), [c for c in table.columns if c != "format"]))
    if table["fallback_layers"].any():
        print("warning: some layers ran a fallback (dequantize-then-float) path; see fallback_layers / --verbose")
    return 0
