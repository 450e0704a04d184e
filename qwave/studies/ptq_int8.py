"""``ptq-int8``: two benchmark arms per fold, ``fp32`` and ``ptq8`` (the same FP32 training, then real int8 PTQ
calibrated on the fit rows); file sizes on disk, accuracy / macro-F1 of both saved artifacts, and the CPU speed-up
of each artifact over its FP32 twin (the benchmark's interleaved timing of the test fold)."""

from __future__ import annotations

import torch

from qwave.plot import plt
from qwave.studies.common import StudyConfig, fmt_ci, run_arms, summarise, write_outputs
from qwave.tables import markdown_table

KEYS = ("accuracy", "macro_f1", "file_bytes", "us_per_sample", "train_seconds")


def ptq_int8(cfg: StudyConfig) -> dict:
    """Run the study (artifacts kept under ``<tag>/artifacts``); returns the results dict also written to
    ``results.json``."""
    records = []
    for run in run_arms(cfg, {"fp32": "fp32", "int8": "ptq8"}, artifacts=cfg.out / "artifacts"):
        timing = run.fit.timing
        records.append({"arm": run.arm, "fold": run.fold.k, "seed": run.seed, **run.scores(), **run.sizes(),
                        "train_seconds": run.fit.trained.train_seconds,
                        "us_per_sample": 1e6 * timing.seconds / len(run.fold.test),
                        "speedup_vs_fp32": timing.speed_vs_fp32})
    summary = {arm: summarise([r for r in records if r["arm"] == arm], (*KEYS, "speedup_vs_fp32"))
               for arm in ("fp32", "int8")}
    rows = [[arm, f"{s['file_bytes']['mean']:,.0f}", fmt_ci(s["accuracy"]), fmt_ci(s["macro_f1"]),
             fmt_ci(s["us_per_sample"], 2), fmt_ci(s["speedup_vs_fp32"], 2)] for arm, s in summary.items()]
    table = markdown_table(["model", "file bytes", "accuracy", "macro-F1", "µs/sample (CPU)", "speed-up"], rows)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, key, label in zip(axes, ("file_bytes", "macro_f1", "us_per_sample"),
                              ("file bytes", "macro-F1", "µs / sample"), strict=True):
        means = [summary[a][key]["mean"] for a in summary]
        errs = [summary[a][key]["ci95"] or 0 for a in summary]
        ax.bar(list(summary), means, yerr=errs, color=["#777", "#3a7"])
        ax.set_title(label)
    fig.suptitle(f"FP32 vs int8 PTQ ({len(records) // 2} fold x seed runs, threads={torch.get_num_threads()})")
    results = {"records": records, "summary": summary, "threads": torch.get_num_threads()}
    write_outputs(cfg, "ptq-int8", results, table, fig)
    return results
