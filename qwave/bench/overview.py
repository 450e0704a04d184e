"""The picture before choosing a format: ``<tag>/report.md`` (the summary table) and ``<tag>/pareto.png``.

``pareto.png`` puts each model at its macro-F1 (mean over folds x seeds, 95% CI as error bar) against its stored
bytes (what the artifact file holds) and against its warm inference time per sample (mean over runs, std as error
bar); the models no other model beats on both axes are joined by a line (the Pareto front).
"""

from __future__ import annotations

from pathlib import Path

from qwave import atomic, tables
from qwave.bench.summary import COLUMNS, table_rows
from qwave.plot import EngFormatter, NullFormatter, plt, save_figure


def markdown_table(rows: list[dict]) -> str:
    """The summary rows as a Markdown table (``summary.table_rows``, best macro-F1 first, as the rows come)."""
    return tables.markdown_table(COLUMNS, [list(r.values()) for r in table_rows(rows)])


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower x, higher y), in increasing x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(rows: list[dict], title: str):
    """Two panels: macro-F1 against stored bytes (log scale) and against ms/sample, one point per model."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    panels = (("stored_bytes", "stored bytes (artifact tensors, log scale)", None),
              ("infer_ms_per_sample", "inference ms / sample (warm, whole test fold per call; ± std over runs)",
               "infer_ms_std"))
    for ax, (key, label, xerr_key) in zip(axes, panels, strict=True):
        shown = [r for r in rows if r.get(key) and r.get("macro_f1_mean") is not None]
        for r in shown:
            ax.errorbar(r[key], r["macro_f1_mean"], yerr=r.get("macro_f1_ci95") or 0.0,
                        xerr=(r.get(xerr_key) or 0.0) if xerr_key else None, fmt="o", capsize=3)
            ax.annotate(str(r.get("label", r["model"])), (r[key], r["macro_f1_mean"]), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
        front = [shown[i] for i in pareto_front([(r[key], r["macro_f1_mean"]) for r in shown])]
        ax.plot([r[key] for r in front], [r["macro_f1_mean"] for r in front], "--", color="grey", lw=1,
                label="Pareto front")
        if key == "stored_bytes":  # decades labelled in bytes, minor ticks unlabelled (no overlapping labels)
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(EngFormatter(unit="B"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("macro-F1 (95% CI over runs)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_overview(root: Path, rows: list[dict], source: str | None = None) -> None:
    """Write ``report.md`` and ``pareto.png`` of a tag from its summary rows."""
    root = Path(root)
    head = [f"# qwave bench: {root}", ""]
    if source:
        head += [f"Table: `{source}`.", ""]
    head += ["macro-F1: mean over folds x seeds, ± the 95% confidence half-width; stored KB: the artifact's tensor "
             "bytes; resident KB: weight bytes the loaded model holds after its first forward (kernel layouts "
             "included, packed buffers a kernel re-derives not held); resident / stored: their ratio, flagged "
             "above 1.1x; ms/sample: median of warm forwards of the deployed (fused) path over each test fold "
             "(kernel preparation excluded), mean over runs; speed vs FP32: in each job the model and its FP32 "
             "twin (the same network with float layers) forward the fold in turn, interleaved, 30 rounds (fewer "
             "past 5 s): the twin's median over the model's, mean over runs (as `qwave speed` sets each method "
             "against FP32 eager in one process).", "", "![pareto](pareto.png)", ""]
    atomic.write_text(root / "report.md", "\n".join(head) + "\n" + markdown_table(rows))
    save_figure(plot_pareto(rows, f"qwave bench {root.name}: accuracy against size and latency"), root / "pareto.png")
