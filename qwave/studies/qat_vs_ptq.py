"""``qat-vs-ptq``: QAT from scratch against FP32 training then PTQ, same seeds, folds, budget and model: the
benchmark arms ``<format>`` and ``ptq<format>``.

The winner is decided on the paired macro-F1 difference (QAT - PTQ, paired by fold and seed): its mean with a
95% t-interval; an interval containing 0 is reported as no clear winner.
"""

from __future__ import annotations

from qwave.eval.metrics import aggregate_over_folds
from qwave.formats import canonical_name
from qwave.plot import plt
from qwave.studies.common import StudyConfig, fmt_ci, run_arms, summarise, write_outputs
from qwave.tables import markdown_table


def qat_vs_ptq(cfg: StudyConfig, bits: str = "8") -> dict:
    """Run the study for one format (``bits``: 8, 4, 2, 1, bitnet, ...)."""
    fmt = canonical_name(bits)
    records = [{"arm": run.arm, "fold": run.fold.k, "seed": run.seed, "train_seconds": run.fit.trained.train_seconds,
                **run.sizes(), **run.scores()} for run in run_arms(cfg, {"qat": fmt, "ptq": f"ptq{fmt}"})]
    keys = ("accuracy", "macro_f1", "train_seconds", "file_bytes")
    summary = {arm: summarise([r for r in records if r["arm"] == arm], keys) for arm in ("qat", "ptq")}
    by_key = {(r["fold"], r["seed"], r["arm"]): r for r in records}
    pairs = sorted({(r["fold"], r["seed"]) for r in records})
    diffs = [by_key[(*p, "qat")]["macro_f1"] - by_key[(*p, "ptq")]["macro_f1"] for p in pairs]
    diff = aggregate_over_folds([fold for fold, _ in pairs], diffs)  # paired by fold, seeds averaged within it
    if diff["ci95"] is None or abs(diff["mean"]) <= diff["ci95"]:
        winner = "no clear winner (95% CI of QAT - PTQ macro-F1 includes 0)"
    else:
        winner = "qat" if diff["mean"] > 0 else "ptq"
    rows = [[f"{arm.upper()} {fmt}", fmt_ci(s["accuracy"]), fmt_ci(s["macro_f1"]), fmt_ci(s["train_seconds"], 1),
             f"{s['file_bytes']['mean']:,.0f}"] for arm, s in summary.items()]
    table = markdown_table(["model", "accuracy", "macro-F1", "training s", "file bytes"], rows)
    table += (f"\nQAT - PTQ macro-F1 (paired by fold over {diff['n']} folds, {len(pairs)} fold x seed runs; seeds "
              f"averaged within each fold): {fmt_ci(diff)}; winner: {winner}\n")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, (fold, seed) in enumerate(pairs):
        ax.plot([0, 1], [by_key[(fold, seed, "ptq")]["macro_f1"], by_key[(fold, seed, "qat")]["macro_f1"]], "o-",
                color="#999", label="fold x seed" if i == 0 else None)
    ax.errorbar([0, 1], [summary["ptq"]["macro_f1"]["mean"], summary["qat"]["macro_f1"]["mean"]],
                yerr=[summary["ptq"]["macro_f1"]["ci95"] or 0, summary["qat"]["macro_f1"]["ci95"] or 0], fmt="s-",
                color="#c33", capsize=4, label="mean ± 95% CI")
    ax.set_xticks([0, 1], [f"PTQ {fmt}", f"QAT {fmt}"])
    ax.set_ylabel("test macro-F1")
    ax.legend()
    results = {"format": fmt, "records": records, "summary": summary, "difference_qat_minus_ptq": diff,
               "winner": winner}
    write_outputs(cfg, f"qat-vs-ptq {fmt}", results, table, fig)
    return results
