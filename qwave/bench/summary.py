"""Aggregates over folds (seeds averaged within each fold): per-model summary.json, the per-tag summary.csv, the
printed table, gather."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from qwave import atomic
from qwave.errors import QwaveError
from qwave.eval.metrics import INTERVAL, aggregate, aggregate_over_folds
from qwave.size import resident_fields
from qwave.tables import text_table

METRICS = ("macro_f1", "accuracy", "weighted_f1", "roc_auc_macro", "ece")


def summarize_model(model_dir: Path, runs: list[dict]) -> dict:
    """Mean, std and 95% CI of each metric over the folds of the given runs (the metrics.json records of the
    current plan's jobs of this model; seeds averaged within each fold first), plus size and time."""
    folds = [r["fold"] for r in runs]
    summary = {
        "model": runs[0]["model"],
        "label": runs[0].get("label", runs[0]["model"]),
        "method": runs[0].get("method"),
        "n_runs": len(runs),
        "folds": sorted(set(folds)),
        "seeds": sorted({r["seed"] for r in runs}),
        "interval": INTERVAL,
        "metrics": {
            key: aggregate_over_folds(folds, [r.get(key) for r in runs])
            for key in METRICS
            if any(r.get(key) is not None for r in runs)
        },
        "stored_bytes": max(r["stored_bytes"] for r in runs),
        "artifact_file_bytes": max(r["artifact_file_bytes"] for r in runs),
        "train_seconds": aggregate([r["train"]["train_seconds"] for r in runs]),
        "epochs_run": aggregate([r["train"]["epochs_run"] for r in runs]),
        "inference_ms_per_sample": aggregate([r["inference_ms_per_sample"] for r in runs]),
        **twin_speed(runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        **resident_and_kernels(runs),
        "min_artifact_agreement": min(r["artifact_agreement"]["top1_agreement"] for r in runs),
        "input_quant": runs[0].get("input_quant", {}).get("mode", "float32"),
        "input_bytes_per_embedding": runs[0].get("input_quant", {}).get("bytes_per_embedding"),
    }
    if any(r.get("active_bytes") is not None for r in runs):
        summary["active_bytes"] = aggregate([r.get("active_bytes") for r in runs])
    atomic.write_json(model_dir / "summary.json", summary)
    return summary


def twin_speed(runs: list[dict]) -> dict:
    """``speed_vs_fp32``: each job's FP32 twin time over the model's, measured interleaved in the job (mean, std
    over runs), when every run recorded it (runs made before it existed did not: the table then divides ms/sample
    of separate jobs)."""
    ratios = [r.get("speed_vs_fp32") for r in runs]
    return {} if any(v is None for v in ratios) else {"speed_vs_fp32": aggregate(ratios)}


def resident_and_kernels(runs: list[dict]) -> dict:
    """Resident bytes after the first forward (largest over runs) and the kernels the layers ran, by layer."""
    resident = [r["resident_bytes"] for r in runs if r.get("resident_bytes") is not None]
    kernels: dict[str, list[str]] = {}
    for r in runs:
        for path, layer in (r.get("layer_kernels") or {}).items():
            kernels.setdefault(path, [])
            if layer["kernel"] not in kernels[path]:
                kernels[path].append(layer["kernel"])
    return {"resident_bytes": max(resident) if resident else None, "layer_kernels": kernels}


def speed_vs_fp32(rows: list[dict]) -> None:
    """Set ``speed_vs_fp32`` of the rows without an in-job measurement (``twin_speed``) to the FP32 row's ms/sample
    over theirs when an FP32 row is present."""
    base = next((r["infer_ms_per_sample"] for r in rows if r["model"] in ("fp32", "esc")), None)
    for r in rows:
        if r.get("speed_vs_fp32") is None:
            r["speed_vs_fp32"] = base / r["infer_ms_per_sample"] if base and r["infer_ms_per_sample"] else None


def summary_row(summary: dict, fp32_bytes: int | None) -> dict:
    """Flatten a model summary into one table row."""
    row = {"model": summary["model"], "label": summary.get("label", summary["model"]), "method": summary.get("method"),
           "runs": summary["n_runs"]}
    for key, stats in summary["metrics"].items():
        row[f"{key}_mean"], row[f"{key}_std"], row[f"{key}_ci95"] = stats["mean"], stats["std"], stats["ci95"]
    row["stored_bytes"] = summary["stored_bytes"]
    row["stored_kb"] = summary["stored_bytes"] / 1024
    resident = summary.get("resident_bytes")
    row["resident_kb"] = resident / 1024 if resident is not None else None
    row.update(resident_fields(resident, summary["stored_bytes"]) if resident is not None
               else {"resident_bytes": None, "resident_vs_stored": None, "resident_flag": ""})
    row["reduction_vs_fp32"] = fp32_bytes / summary["stored_bytes"] if fp32_bytes else None
    row["active_bytes_mean"] = summary["active_bytes"]["mean"] if "active_bytes" in summary else summary["stored_bytes"]
    row["input_quant"] = summary.get("input_quant", "float32")
    row["input_bytes_per_embedding"] = summary.get("input_bytes_per_embedding")
    row["train_s_mean"] = summary["train_seconds"]["mean"]
    row["infer_ms_per_sample"] = summary["inference_ms_per_sample"]["mean"]
    row["infer_ms_std"] = summary["inference_ms_per_sample"]["std"]
    row["speed_vs_fp32"] = summary["speed_vs_fp32"]["mean"] if "speed_vs_fp32" in summary else None
    return row


def write_tag_summary(root: Path, extra_roots: list[Path] | None = None, models: list[str] | None = None) -> list[dict]:
    """Write ``<root>/summary.csv`` and return its rows (best macro-F1 first): from the summaries of ``models``
    (the current plan's) when given, else from every model summary found below ``root`` and ``extra_roots``."""
    if models is None:  # every <dir>/<model>/summary.json below the directories (e.g. a tag or a multirun)
        dirs = [Path(d) for d in (root, *(extra_roots or []))]
        found = sorted({p for d in dirs for p in d.rglob("summary.json") if p.parent != d})
    else:
        found = [Path(root) / m / "summary.json" for m in models]
    summaries = [json.loads(p.read_text()) for p in found]
    if not summaries:
        raise QwaveError(f"no model summaries (summary.json) found under {root}")
    fp32 = next((s["stored_bytes"] for s in summaries if s["model"] in ("fp32", "esc")), None)
    rows = sorted((summary_row(s, fp32) for s in summaries), key=lambda r: -(r.get("macro_f1_mean") or 0))
    speed_vs_fp32(rows)
    frame = pd.DataFrame(rows)
    atomic.write_with(Path(root) / "summary.csv", lambda tmp: frame.to_csv(tmp, index=False))
    return rows


COLUMNS = ("model", "method", "runs", "macro-F1", "± std", "95% CI", "accuracy", "stored KB", "smaller than FP32",
           "resident KB", "resident / stored", "train s", "ms/sample", "speed vs FP32")


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table_rows(rows: list[dict]) -> list[dict]:
    """The summary rows as the cells people read, keyed by ``COLUMNS`` (in the rows' order, best macro-F1 first):
    the model by its display name (``label``), macro-F1 with std and 95% CI, accuracy, stored and resident size
    (flagged above 1.1x stored), train time and warm inference speed relative to FP32."""
    return [dict(zip(COLUMNS, _cells(r), strict=True)) for r in rows]


def _cells(r: dict) -> tuple:
    flag = f"x ({r['resident_flag']})" if r.get("resident_flag") else "x"
    ci = "±" + _fmt(r.get("macro_f1_ci95"), ".4f") if r.get("macro_f1_ci95") is not None else "-"
    return (str(r.get("label", r["model"])), str(r.get("method")), r["runs"], _fmt(r.get("macro_f1_mean"), ".4f"),
            _fmt(r.get("macro_f1_std"), ".4f"), ci, _fmt(r.get("accuracy_mean"), ".4f"),
            _fmt(r.get("stored_kb"), ".1f"), _fmt(r.get("reduction_vs_fp32"), ".2f", "x"),
            _fmt(r.get("resident_kb"), ".1f"), _fmt(r.get("resident_vs_stored"), ".2f", flag),
            _fmt(r.get("train_s_mean"), ".1f"), _fmt(r.get("infer_ms_per_sample"), ".4f"),
            _fmt(r.get("speed_vs_fp32") or None, ".2f", "x"))


def print_table(rows: list[dict], title: str) -> None:
    """The summary as a terminal table (``table_rows``) under ``title``."""
    print(f"{title} (95% CI: {INTERVAL})\n{text_table(table_rows(rows), COLUMNS)}")
