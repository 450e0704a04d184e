"""Per-fold MoE outputs: routing and uncertainty per sample, expert usage and accuracy, whether uncertainty helps.

Files written beside the fold's metrics: ``curiosity_values.json`` (one record per test sample, and where the
cascade switches expert), ``curiosity_histogram.png`` (each router uncertainty score for correct vs wrong
predictions, and the rule's score by routed expert with the switch points marked) and
``curiosity_per_class.png`` (mean uncertainty per true and per predicted class). "Useful" is measured against
the classifier's own max-softmax confidence: AUROC of each uncertainty score for detecting errors (0.5 = no
better than chance), and selective accuracy when only the ``coverage`` fraction of samples with the lowest
uncertainty is kept. The ablation of the issue that introduced the cascade is reported per run: how many routes
the real ``u`` changes against a constant ``u`` (the fold's mean), which keeps the average push of the rule and
removes its per-sample variation.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from qwave import atomic
from qwave.eval.metrics import expected_calibration_error
from qwave.moe.model import MoEClassifier, Trace
from qwave.moe.routing import standardise, top_k_mask
from qwave.plot import plt, save_figure
from qwave.size import report
from qwave.tables import model_label

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
    """One record per sample: uncertainty scores, label, prediction, routed experts and router probabilities."""
    r = trace.routing
    pred = trace.log_proba.argmax(1).cpu().numpy()
    first = r.gates.argmax(1).cpu().numpy()
    scores = router_scores(trace)
    u = scores[u_name]
    score = None if r.score is None else r.score.cpu().numpy()
    base, probs, mask = r.base.cpu().numpy(), r.probs.cpu().numpy(), r.mask.cpu().numpy()
    return [
        {
            "id": str(ids[i]),
            "label": classes[y[i]],
            "prediction": classes[pred[i]],
            "correct": bool(pred[i] == y[i]),
            "uncertainty": float(u[i]),
            "standardised_uncertainty": None if score is None else float(score[i]),
            **{name: float(values[i]) for name, values in scores.items()},
            "expert": int(first[i]),
            "experts": [int(e) for e in np.flatnonzero(mask[i])],
            "router_probs": base[i].tolist(),
            "routing_probs": probs[i].tolist(),
        }
        for i in range(len(y))
    ]


def router_scores(trace: Trace) -> dict[str, np.ndarray]:
    """The router's three per-sample uncertainty scores, by the names of ``moe.curiosity.measure``."""
    return {"mutual_info": trace.mutual_info.cpu().numpy(), "variance": trace.variance.cpu().numpy(),
            "max_softmax": trace.max_softmax.cpu().numpy()}


def switch_points(model: MoEClassifier, base: torch.Tensor, lo: float, hi: float, steps: int = 2001) -> list[dict]:
    """Uncertainty values in ``[lo, hi]`` where the cascade switches the first-choice expert of the typical sample.

    The typical sample has the geometric mean of the router probabilities over ``base`` (``[N, E]``); its
    routing at uncertainty ``u`` is ``argmax_e log p_e + alpha * (u - mean) / std * c_e``, evaluated on a grid of
    ``steps`` values. Empty without curiosity (routing does not depend on ``u``) or when no switch falls in range.
    """
    if not model.curiosity.enabled or model.curiosity.alpha == 0 or hi <= lo:
        return []
    log_p = base.clamp_min(1e-12).log().mean(0)
    grid = torch.linspace(lo, hi, steps)
    score = standardise(grid, model.u_mean.cpu(), model.u_std.cpu())
    best = (log_p[None, :] + model.curiosity.alpha * score[:, None] * model.ranks.cpu()[None, :]).argmax(1)
    changes = (best[1:] != best[:-1]).nonzero().squeeze(1).tolist()
    return [{"u": float((grid[i] + grid[i + 1]) / 2), "from": model.formats[int(best[i])],
             "to": model.formats[int(best[i + 1])]} for i in changes]


def plot_histogram(scores: dict[str, np.ndarray], correct: np.ndarray, expert: np.ndarray, formats: list[str],
                   measure: str, switches: list[dict], title: str):
    """Distributions of each router uncertainty score for correct and wrong predictions, then the rule's score
    stacked by first-choice expert (named by ``tables.model_label``) with the cascade's switch points (dashed
    lines) marked."""
    labels = {"mutual_info": "BALD mutual information (nats)", "variance": "routing variance",
              "max_softmax": "1 - router max probability"}
    fig, axes = plt.subplots(1, len(scores) + 1, figsize=(4 * (len(scores) + 1), 3.5))
    for ax, (name, values) in zip(axes, scores.items(), strict=False):
        bins = np.histogram_bin_edges(values, bins=30)
        ax.hist(values[correct], bins=bins, alpha=0.6, label=f"correct ({int(correct.sum())})")
        ax.hist(values[~correct], bins=bins, alpha=0.6, label=f"wrong ({int((~correct).sum())})")
        ax.set_xlabel(labels[name])
        ax.set_ylabel("samples")
        ax.legend(fontsize=8)
    ax = axes[-1]
    values = scores[measure]
    bins = np.histogram_bin_edges(values, bins=30)
    ax.hist([values[expert == e] for e in range(len(formats))], bins=bins, stacked=True,
            label=[f"{model_label(f)} ({int((expert == e).sum())})" for e, f in enumerate(formats)])
    for i, point in enumerate(switches):
        ax.axvline(point["u"], ls="--", color="k", lw=1)
        ax.annotate(f"{model_label(point['from'])} → {model_label(point['to'])}", (point["u"], 0.97 - 0.3 * (i % 3)),
                    xycoords=("data", "axes fraction"), rotation=90, ha="right", va="top", fontsize=7)
    ax.set_xlabel(f"{labels[measure]} (rule's score)")
    ax.set_title("routed expert" + ("" if switches else " (routing does not switch on u)"), fontsize=9)
    ax.legend(fontsize=8)
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


def route_ablation(model: MoEClassifier, X: torch.Tensor, trace: Trace) -> dict:
    """How many routes the cascade changes: against plain routing (``s = 0``, i.e. ``u`` at its training
    mean), and against a constant ``u`` equal to the fold's mean ``u`` (same average push, no per-sample
    variation). Fractions of samples whose routed set differs; all None without curiosity."""
    r = trace.routing
    if r.u is None:
        return {"routes_changed_by_curiosity": None, "routes_changed_vs_constant_u": None,
                "routes_changed_by_constant_u": None}
    plain = top_k_mask(r.base, model.top_k)
    constant = model.route(model.norm(X), u=torch.full_like(r.u, float(r.u.mean()))).mask

    def changed(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a != b).any(1).float().mean())

    return {"routes_changed_by_curiosity": changed(r.mask, plain),
            "routes_changed_vs_constant_u": changed(r.mask, constant),
            "routes_changed_by_constant_u": changed(constant, plain)}


def evaluate_moe(model: MoEClassifier, X: np.ndarray, y: np.ndarray, ids: np.ndarray, classes: list[str],
                 out_dir: Path, plots: bool = True) -> dict:
    """Write the fold's curiosity files for the (loaded) MoE and return its extra metrics for metrics.json."""
    x = torch.as_tensor(X, dtype=torch.float32)
    trace = model.trace(x)
    y = np.asarray(y)
    proba = trace.log_proba.exp().cpu().numpy()
    pred = proba.argmax(1)
    correct = pred == y
    scores = router_scores(trace)
    c = model.curiosity
    u = scores[c.measure]
    first = trace.routing.gates.argmax(1).cpu().numpy()
    usage = trace.routing.mask.float().mean(0).tolist()
    size = report(model)
    with torch.no_grad():
        ablation = route_ablation(model, x, trace)
    switches = switch_points(model, trace.routing.base, float(u.min()), float(u.max())) if len(u) else []
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out_dir / "curiosity_values.json", {
        "measure": c.measure,
        "routing_uses_uncertainty": c.enabled,
        "alpha": c.alpha if c.enabled else None,
        "u_mean": float(model.u_mean) if c.enabled else None,
        "u_std": float(model.u_std) if c.enabled else None,
        "precision_ranks": model.ranks.tolist(),
        "switch_points": switches,
        "mc_samples": int(trace.mc.shape[0]),
        "formats": model.formats,
        **ablation,
        "samples": sample_records(trace, y, ids, classes, c.measure),
    })
    if plots:
        title = f"MoE {'+ curiosity ' if c.enabled else ''}router uncertainty"
        save_figure(plot_histogram(scores, correct, first, model.formats, c.measure, switches, title),
                    out_dir / "curiosity_histogram.png")
        save_figure(plot_per_class(u, y, pred, classes, f"{title}: {c.measure}"), out_dir / "curiosity_per_class.png")
    usefulness_scores = {"mutual_info": scores["mutual_info"], "variance": scores["variance"],
                         "router_max_softmax": scores["max_softmax"], "classifier_max_softmax": 1.0 - proba.max(1)}
    active = model.active_bytes(size, usage)
    return {
        "active_bytes": active,
        "moe": {
            "formats": model.formats,
            "top_k": model.top_k,
            "curiosity": {**vars(c)},
            **ablation,
            "stored_bytes": size.stored_bytes,
            "active_bytes": active,
            "router_format": model.router_format,
            "router_bytes": size.bytes_under("router"),
            "expert_bytes": [size.bytes_under(f"experts.{e}") for e in range(model.num_experts)],
            "router_passes": model.router.passes,
            "macs_per_sample": model.macs(usage),
            **expert_table(trace, y, model.formats),
            "uncertainty": usefulness(usefulness_scores, y, proba),
            "selection": model.selection,
        },
    }
