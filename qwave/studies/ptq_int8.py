"""``ptq-int8``: train FP32 once per fold, quantize it to real int8 (PTQ), and report file sizes on disk,
accuracy / macro-F1 of both saved artifacts, and the CPU speed-up of the int8 kernels over FP32."""

from __future__ import annotations

import torch

from qwave.eval.compare import time_pair
from qwave.nn import ptq
from qwave.plot import plt
from qwave.studies.common import (
    StudyConfig,
    fmt_ci,
    load,
    saved,
    scores,
    splits,
    summarise,
    train_fold,
    write_outputs,
)
from qwave.tables import markdown_table

KEYS = ("accuracy", "macro_f1", "file_bytes", "us_per_sample", "train_seconds")


def ptq_int8(cfg: StudyConfig, batch_size: int = 256, repeats: int = 20) -> dict:
    """Run the study; returns the results dict also written to ``results.json``."""
    ds = load(cfg)
    records = []
    for seed in cfg.seeds:
        for split in splits(ds, cfg, seed):
            model, seconds = train_fold(ds, split, cfg, seed)
            arms = {"fp32": (model, seconds)}
            int8 = ptq(model, "int8", calib=ds.X[split.fit], calib_labels=ds.y[split.fit])
            arms["int8"] = (int8, seconds)
            fold_dir = cfg.out / "artifacts" / f"fold_{split.k}_seed_{seed}"
            loaded = {name: saved(m, ds, fold_dir / name) for name, (m, _) in arms.items()}
            X_test = torch.as_tensor(ds.X[split.test])
            timing = time_pair({n: m for n, (m, _) in loaded.items()}, X_test, repeats=repeats, batch_size=batch_size)
            for name, (m, sizes) in loaded.items():
                records.append({"arm": name, "fold": split.k, "seed": seed, **scores(m, ds.X[split.test],
                                ds.y[split.test]), **sizes, "train_seconds": arms[name][1],
                                "us_per_sample": 1e6 * timing[name]["seconds_per_sample"],
                                "speedup_vs_fp32": timing["fp32"]["seconds_per_sample"]
                                / timing[name]["seconds_per_sample"]})
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
    results = {"records": records, "summary": summary, "threads": torch.get_num_threads(),
               "batch_size": batch_size}
    write_outputs(cfg, "ptq-int8", results, table, fig)
    return results
