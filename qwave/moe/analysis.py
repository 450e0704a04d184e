"""Per-fold MoE outputs: routing and uncertainty per sample, expert usage and accuracy, whether uncertainty helps.

Files written beside the fold's metrics: ``curiosity_values.json`` (one record per test sample),
``curiosity_histogram.png`` (uncertainty of correct vs wrong predictions) and ``curiosity_per_class.png`` (mean
uncertainty per true and per predicted class). "Useful" is measured against plain max-softmax confidence:
AUROC of each uncertainty score for detecting errors (0.5 = no better than chance), and selective accuracy when
only the ``coverage`` fraction of samples with the lowest uncertainty is kept.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from qwave import atomic  # noqa: E402
from qwave.bench.report import save_figure  # noqa: E402
from qwave.eval.metrics import expected_calibration_error  # noqa: E402
from qwave.moe.model import MoEClassifier, Trace  # noqa: E402
from qwave.moe.routing import top_k_mask  # noqa: E402
from qwave.size import report  # noqa: E402

COVERAGES = (0.8, 0.9)


def error_detection_auroc(uncertainty: np.ndarray, correct: np.ndarray) -> float | None:
    """AUROC of ``uncertainty`` as a detector of wrong predictions (None when all are right or all wrong)."""
    wrong = ~np.asarray(correct, dtype=bool)
    if wrong.all() or not wrong.any():
        return None
    return float(roc_auc_score(wrong, np.asarray(uncertainty, dtype=np.float64)))


def selective_accuracy(uncertainty: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    """Accuracy over the ``ceil(coverage * n)`` samples with the lowest uncertainty (ties: lower index first)."""
    keep = max(1, math.ceil(coverage * len(correct)))
    order = np.argsort(np.asarray(uncertainty, dtype=np.float64), kind="stable")[:keep]
    return float(np.asarray(correct, dtype=bool)[order].mean())


def usefulness(scores: dict[str, np.ndarray], y: np.ndarray, proba: np.ndarray) -> dict:
    """Error-detection AUROC and selective accuracy at ``COVERAGES`` for each uncertainty score, plus ECE."""
    correct = proba.argmax(1) == y
    return {
        "ece": expected_calibration_error(y, proba),
        "accuracy": float(np.mean(correct)),
        "error_auroc": {name: error_detection_auroc(s, correct) for name, s in scores.items()},
        "selective_accuracy": {
            f"{c:.0%}": {name: selective_accuracy(s, correct, c) for name, s in scores.items()} for c in COVERAGES
        },
    }


def expert_table(trace: Trace, y: np.ndarray, formats: list[str]) -> dict:
    """Usage counts (routing assignments) per expert, and accuracy of the MoE and of the expert itself on the
    samples whose first-choice expert it is, and of the expert on every sample."""
    mask = trace.routing.mask.cpu().numpy()
    first = trace.routing.gates.argmax(1).cpu().numpy()
    pred = trace.log_proba.argmax(1).cpu().numpy()
    own = trace.expert_log_proba.argmax(2).cpu().numpy()
    rows = []
    for e, fmt in enumerate(formats):
        routed = first == e
        rows.append({
            "expert": e,
            "format": fmt,
            "assignments": int(mask[:, e].sum()),
            "first_choice": int(routed.sum()),
            "usage_fraction": float(mask[:, e].mean()),
            "moe_accuracy_on_routed": float((pred[routed] == y[routed]).mean()) if routed.any() else None,
            "expert_accuracy_on_routed": float((own[routed, e] == y[routed]).mean()) if routed.any() else None,
            "expert_accuracy_on_all": float((own[:, e] == y).mean()),
        })
    return {"experts": rows}


def sample_records(trace: Trace, y: np.ndarray, ids: np.ndarray, classes: list[str], u_name: str) -> list[dict]:
    """One record per sample: uncertainty, label, prediction, routed experts and router probabilities."""
    r = trace.routing
    pred = trace.log_proba.argmax(1).cpu().numpy()
    first = r.gates.argmax(1).cpu().numpy()
    mi, var = trace.mutual_info.cpu().numpy(), trace.variance.cpu().numpy()
    base, probs, mask = r.base.cpu().numpy(), r.probs.cpu().numpy(), r.mask.cpu().numpy()
    return [
        {
            "id": str(ids[i]),
            "label": classes[y[i]],
            "prediction": classes[pred[i]],
            "correct": bool(pred[i] == y[i]),
            "uncertainty": float(mi[i] if u_name == "mutual_info" else var[i]),
            "mutual_info": float(mi[i]),
            "variance": float(var[i]),
            "expert": int(first[i]),
            "experts": [int(e) for e in np.flatnonzero(mask[i])],
            "router_probs": base[i].tolist(),
            "routing_probs": probs[i].tolist(),
        }
        for i in range(len(y))
    ]


def plot_histogram(mi: np.ndarray, var: np.ndarray, correct: np.ndarray, title: str):
    """Distributions of BALD mutual information and routing variance for correct and wrong predictions."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, values, label in ((axes[0], mi, "BALD mutual information (nats)"), (axes[1], var, "routing variance")):
        bins = np.histogram_bin_edges(values, bins=30)
        ax.hist(values[correct], bins=bins, alpha=0.6, label=f"correct ({int(correct.sum())})")
        ax.hist(values[~correct], bins=bins, alpha=0.6, label=f"wrong ({int((~correct).sum())})")
        ax.set_xlabel(label)
        ax.set_ylabel("samples")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_per_class(u: np.ndarray, y: np.ndarray, pred: np.ndarray, classes: list[str], title: str):
    """Mean uncertainty per true class and per predicted class (classes never predicted are left empty)."""
    n = len(classes)
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.25 * n + 3), 6), sharex=True)
    for ax, by, label in ((axes[0], y, "true class"), (axes[1], pred, "predicted class")):
        means = [u[by == c].mean() if (by == c).any() else np.nan for c in range(n)]
        ax.bar(range(n), means)
        ax.set_ylabel(f"mean uncertainty\nby {label}")
    axes[1].set_xticks(range(n), classes, rotation=90, fontsize=7 if n > 20 else 9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def evaluate_moe(model: MoEClassifier, X: np.ndarray, y: np.ndarray, ids: np.ndarray, classes: list[str],
                 out_dir: Path, plots: bool = True) -> dict:
    """Write the fold's curiosity files for the (loaded) MoE and return its extra metrics for metrics.json."""
    trace = model.trace(torch.as_tensor(X, dtype=torch.float32))
    y = np.asarray(y)
    proba = trace.log_proba.exp().cpu().numpy()
    pred = proba.argmax(1)
    correct = pred == y
    mi, var = trace.mutual_info.cpu().numpy(), trace.variance.cpu().numpy()
    c = model.curiosity
    u_name = c.measure
    u = mi if u_name == "mutual_info" else var
    usage = trace.routing.mask.float().mean(0).tolist()
    size = report(model)
    base_mask = top_k_mask(trace.routing.base, model.top_k)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out_dir / "curiosity_values.json", {
        "measure": u_name,
        "routing_uses_uncertainty": c.enabled,
        "rule": c.rule if c.enabled else None,
        "alpha": c.alpha if c.enabled else None,
        "mc_samples": int(trace.mc.shape[0]),
        "formats": model.formats,
        "samples": sample_records(trace, y, ids, classes, u_name),
    })
    if plots:
        title = f"MoE {'+ curiosity ' if c.enabled else ''}router uncertainty"
        save_figure(plot_histogram(mi, var, correct, title), out_dir / "curiosity_histogram.png")
        save_figure(plot_per_class(u, y, pred, classes, f"{title}: {u_name}"), out_dir / "curiosity_per_class.png")
    scores = {"mutual_info": mi, "variance": var, "max_softmax": 1.0 - proba.max(1)}
    active = model.active_bytes(size, usage)
    return {
        "active_bytes": active,
        "moe": {
            "formats": model.formats,
            "top_k": model.top_k,
            "curiosity": {**vars(c)},
            "routes_changed_by_curiosity": float((base_mask != trace.routing.mask).any(1).float().mean()),
            "stored_bytes": size.stored_bytes,
            "active_bytes": active,
            "router_bytes": size.bytes_under("router"),
            "expert_bytes": [size.bytes_under(f"experts.{e}") for e in range(model.num_experts)],
            "router_passes": model.router.passes,
            "macs_per_sample": model.macs(usage),
            **expert_table(trace, y, model.formats),
            "uncertainty": usefulness(scores, y, proba),
            "selection": model.selection,
        },
    }
