"""``bit-sweep``: one QAT model (a benchmark arm) per bit width (32 = fp32, 16 = fp16, 8..2 = intk, 1 = binary),
train and test accuracy / macro-F1 of the saved artifacts and the overfitting gap (train - test)."""

from __future__ import annotations

from qwave.errors import ConfigError
from qwave.plot import plt
from qwave.studies.common import StudyConfig, fmt_ci, run_arms, summarise, write_outputs
from qwave.tables import markdown_table

BIT_FORMATS = {32: "fp32", 16: "fp16", 1: "binary", **{k: f"int{k}" for k in range(2, 9)}}


def bit_sweep(cfg: StudyConfig, bits: list[int] | None = None) -> dict:
    """Run the sweep over ``bits`` (default 32 16 8 4 2 1)."""
    bits = list(bits or [32, 16, 8, 4, 2, 1])
    unknown = [b for b in bits if b not in BIT_FORMATS]
    if unknown:
        raise ConfigError(f"--bits {unknown}: choose from {sorted(BIT_FORMATS, reverse=True)}")
    records = []
    for run in run_arms(cfg, {str(b): BIT_FORMATS[b] for b in bits}):
        train, test = run.scores("fit"), run.scores("test")
        records.append({"bits": int(run.arm), "format": BIT_FORMATS[int(run.arm)], "fold": run.fold.k,
                        "seed": run.seed, "train_seconds": run.fit.trained.train_seconds, **run.sizes(),
                        "train_accuracy": train["accuracy"], "test_accuracy": test["accuracy"],
                        "train_macro_f1": train["macro_f1"], "test_macro_f1": test["macro_f1"],
                        "gap_accuracy": train["accuracy"] - test["accuracy"]})
    keys = ("train_accuracy", "test_accuracy", "test_macro_f1", "gap_accuracy", "file_bytes", "train_seconds")
    summary = {b: summarise([r for r in records if r["bits"] == b], keys) for b in bits}
    rows = [[b, BIT_FORMATS[b], fmt_ci(s["train_accuracy"]), fmt_ci(s["test_accuracy"]), fmt_ci(s["test_macro_f1"]),
             fmt_ci(s["gap_accuracy"]), f"{s['file_bytes']['mean']:,.0f}"] for b, s in summary.items()]
    table = markdown_table(["bits", "format", "train acc", "test acc", "test macro-F1", "gap (train - test)",
                            "file bytes"], rows)
    fig, (ax, gap) = plt.subplots(1, 2, figsize=(10, 3.5))
    x = list(range(len(bits)))
    for key, label in (("train_accuracy", "train"), ("test_accuracy", "test")):
        ax.errorbar(x, [summary[b][key]["mean"] for b in bits],
                    yerr=[summary[b][key]["ci95"] or 0 for b in bits], marker="o", capsize=3, label=label)
    ax.set_xticks(x, [str(b) for b in bits])
    ax.set_xlabel("bits per weight")
    ax.set_ylabel("accuracy")
    ax.legend()
    gap.bar(x, [summary[b]["gap_accuracy"]["mean"] for b in bits], color="#c73")
    gap.set_xticks(x, [str(b) for b in bits])
    gap.set_xlabel("bits per weight")
    gap.set_ylabel("overfitting gap (train - test accuracy)")
    results = {"bits": bits, "records": records, "summary": {str(b): s for b, s in summary.items()}}
    write_outputs(cfg, "bit-sweep", results, table, fig)
    return results
