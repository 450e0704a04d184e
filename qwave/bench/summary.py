"""Aggregates over folds x seeds: per-model summary.json, the per-tag summary.csv, the printed table, gather."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from qwave import atomic
from qwave.errors import QwaveError
from qwave.eval.metrics import aggregate

METRICS = ("macro_f1", "accuracy", "weighted_f1", "roc_auc_macro", "ece")


def summarize_model(model_dir: Path) -> dict:
    """Mean, std and 95% CI of each metric over every finished fold x seed of the model, plus size and time.

    Runs are read from disk (``fold_*/metrics.json``) so that jobs of one tag run in parallel (multirun) or
    resumed later all count once.
    """
    runs = [json.loads(p.read_text()) for p in sorted(Path(model_dir).glob("fold_*/metrics.json"))]
    summary = {
        "model": runs[0]["model"],
        "method": runs[0].get("method"),
        "n_runs": len(runs),
        "folds": sorted({r["fold"] for r in runs}),
        "seeds": sorted({r["seed"] for r in runs}),
        "metrics": {
            key: aggregate([r[key] for r in runs if r.get(key) is not None])
            for key in METRICS
            if any(r.get(key) is not None for r in runs)
        },
        "stored_bytes": max(r["stored_bytes"] for r in runs),
        "artifact_file_bytes": max(r["artifact_file_bytes"] for r in runs),
        "train_seconds": aggregate([r["train"]["train_seconds"] for r in runs]),
        "epochs_run": aggregate([r["train"]["epochs_run"] for r in runs]),
        "inference_ms_per_sample": aggregate([r["inference_ms_per_sample"] for r in runs]),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "min_artifact_agreement": min(r["artifact_agreement"]["top1_agreement"] for r in runs),
        "input_quant": runs[0].get("input_quant", {}).get("mode", "float32"),
        "input_bytes_per_embedding": runs[0].get("input_quant", {}).get("bytes_per_embedding"),
    }
    if any(r.get("active_bytes") is not None for r in runs):
        summary["active_bytes"] = aggregate([r.get("active_bytes") for r in runs])
    atomic.write_json(model_dir / "summary.json", summary)
    return summary


def summary_row(summary: dict, fp32_bytes: int | None) -> dict:
    """Flatten a model summary into one table row."""
    row = {"model": summary["model"], "method": summary.get("method"), "runs": summary["n_runs"]}
    for key, stats in summary["metrics"].items():
        row[f"{key}_mean"], row[f"{key}_std"], row[f"{key}_ci95"] = stats["mean"], stats["std"], stats["ci95"]
    row["stored_bytes"] = summary["stored_bytes"]
    row["stored_kb"] = summary["stored_bytes"] / 1024
    row["reduction_vs_fp32"] = fp32_bytes / summary["stored_bytes"] if fp32_bytes else None
    row["active_bytes_mean"] = summary["active_bytes"]["mean"] if "active_bytes" in summary else summary["stored_bytes"]
    row["input_quant"] = summary.get("input_quant", "float32")
    row["input_bytes_per_embedding"] = summary.get("input_bytes_per_embedding")
    row["train_s_mean"] = summary["train_seconds"]["mean"]
    row["infer_ms_per_sample"] = summary["inference_ms_per_sample"]["mean"]
    return row


def collect_summaries(roots: list[Path]) -> list[dict]:
    """Every ``<root>/<model>/summary.json`` below the given run directories (e.g. a tag or a multirun)."""
    found = sorted({p for root in roots for p in Path(root).rglob("summary.json") if p.parent != Path(root)})
    return [json.loads(p.read_text()) for p in found]


def write_tag_summary(root: Path, extra_roots: list[Path] | None = None) -> list[dict]:
    """Write ``<root>/summary.csv`` from every model summary found and return its rows (best macro-F1 first)."""
    summaries = collect_summaries([root, *(extra_roots or [])])
    if not summaries:
        raise QwaveError(f"no model summaries (summary.json) found under {root}")
    fp32 = next((s["stored_bytes"] for s in summaries if s["model"] in ("fp32", "esc")), None)
    rows = sorted((summary_row(s, fp32) for s in summaries), key=lambda r: -(r.get("macro_f1_mean") or 0))
    frame = pd.DataFrame(rows)
    atomic.write_with(Path(root) / "summary.csv", lambda tmp: frame.to_csv(tmp, index=False))
    return rows


def print_table(rows: list[dict], title: str, console: Console | None = None) -> None:
    """The summary as a terminal table: macro-F1 (headline) with std and 95% CI, accuracy, size, time."""
    table = Table(title=title)
    columns = ("model", "method", "runs", "macro-F1", "± std", "CI95", "accuracy", "stored KB", "vs fp32", "train s",
               "ms/sample")
    for col in columns:
        table.add_column(col, justify="left" if col in ("model", "method") else "right", no_wrap=True)
    for r in rows:
        ci = f"±{r['macro_f1_ci95']:.4f}" if r.get("macro_f1_ci95") is not None else "-"
        reduction = f"{r['reduction_vs_fp32']:.2f}x" if r.get("reduction_vs_fp32") else "-"
        table.add_row(
            str(r["model"]), str(r["method"]), str(r["runs"]), f"{r['macro_f1_mean']:.4f}", f"{r['macro_f1_std']:.4f}",
            ci, f"{r['accuracy_mean']:.4f}", f"{r['stored_kb']:.1f}", reduction, f"{r['train_s_mean']:.1f}",
            f"{r['infer_ms_per_sample']:.4f}",
        )
    if console is None:
        console = Console() if sys.stdout.isatty() else Console(width=132)
    console.print(table)
