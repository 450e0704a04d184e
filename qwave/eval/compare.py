"""Compare a quantized model with its original: logits, predictions, sequences, speed and the kernels that ran.

Logit metrics per sample (vectors ``a`` original, ``b`` quantized, flattened over frames for sequence models):
MSE ``mean((a-b)^2)``, MAE ``mean|a-b|``, cosine ``a.b / (|a||b|)``, max ``|a-b|`` and
``KL(p || q) = sum p (log p - log q)`` with ``p = softmax(a)``, ``q = softmax(b)`` (mean over frames). Summary values
are the means over samples (max-abs: the maximum). Drops are ``original - quantized``: positive means the quantized
model is worse; relative drops divide by the original's value. Without labels only label-free metrics are reported.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score, precision_recall_fscore_support
from torch import nn

from qwave.errors import ArtifactError, DataError
from qwave.eval.sequence import ctc_greedy_decode, edit_distance, error_rate, sample_error_rates, sequence_similarity
from qwave.eval.speed import layer_audit
from qwave.eval.timing import predict_logits, time_pair

log = logging.getLogger(__name__)


@dataclass
class Comparison:
    """The summary (JSON-ready dict) and one row per sample (``per_sample``)."""

    summary: dict
    per_sample: pd.DataFrame = field(default_factory=pd.DataFrame)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def sample_logit_metrics(original: np.ndarray, quantized: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample MSE, MAE, cosine, max-abs difference and KL(original || quantized) of ``[n, C]`` or ``[n, T, C]``."""
    a = np.asarray(original, dtype=np.float64)
    b = np.asarray(quantized, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"logit shapes differ: original {a.shape}, quantized {b.shape}.")
    log_p, log_q = _log_softmax(a), _log_softmax(b)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    n = len(a)
    fa, fb = a.reshape(n, -1), b.reshape(n, -1)
    diff = fa - fb
    norms = np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1)
    dots = (fa * fb).sum(axis=1)
    cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(np.all(diff == 0, axis=1), 1.0, 0.0))
    return {
        "mse": (diff**2).mean(axis=1),
        "mae": np.abs(diff).mean(axis=1),
        "cosine": cosine,
        "max_abs": np.abs(diff).max(axis=1),
        "kl": kl.reshape(n, -1).mean(axis=1),
    }


def logit_summary(per_sample: dict[str, np.ndarray]) -> dict[str, float]:
    """Means over samples of the per-sample metrics (the maximum for ``max_abs``)."""
    return {k: float(v.max() if k == "max_abs" else v.mean()) for k, v in per_sample.items()}


def _drop(original: float, quantized: float) -> dict:
    drop = original - quantized
    return {"original": original, "quantized": quantized, "drop": drop,
            "drop_rel": drop / original if original else None}


def prediction_metrics(
    original: np.ndarray, quantized: np.ndarray, y: np.ndarray | None, class_names: Sequence[str]
) -> dict:
    """Top-1 agreement; with labels also accuracy and macro-F1 of both with drops, and per-class F1/recall drops."""
    pa, pb = np.asarray(original).argmax(1), np.asarray(quantized).argmax(1)
    out: dict = {"agreement": float((pa == pb).mean())}
    if y is None:
        return out
    y = np.asarray(y)
    labels = list(range(len(class_names)))
    out["accuracy"] = _drop(float((pa == y).mean()), float((pb == y).mean()))
    f1_a, f1_b = (float(f1_score(y, p, average="macro", zero_division=0)) for p in (pa, pb))
    out["macro_f1"] = _drop(f1_a, f1_b)
    _, rec_a, f1_a, support = precision_recall_fscore_support(y, pa, labels=labels, zero_division=0)
    _, rec_b, f1_b, _ = precision_recall_fscore_support(y, pb, labels=labels, zero_division=0)
    out["per_class"] = {
        name: {"support": int(support[c]), "f1_original": float(f1_a[c]), "f1_quantized": float(f1_b[c]),
               "f1_drop": float(f1_a[c] - f1_b[c]), "recall_original": float(rec_a[c]),
               "recall_quantized": float(rec_b[c]), "recall_drop": float(rec_a[c] - rec_b[c])}
        for c, name in enumerate(class_names)
    }
    return out


def sequence_metrics(
    original: np.ndarray, quantized: np.ndarray, references: Sequence[Sequence[int]] | None = None, blank: int = 0
) -> tuple[dict, dict[str, list]]:
    """Greedy-CTC decodes of both ``[n, T, C]`` logits, their edit distance and similarity; error rates with references.

    Returns the summary and per-sample columns (decoded strings, distances, per-sample error rates).
    """
    dec_a, dec_b = ctc_greedy_decode(original, blank), ctc_greedy_decode(quantized, blank)
    dist = [edit_distance(a, b) for a, b in zip(dec_a, dec_b, strict=True)]
    sim = [sequence_similarity(a, b) for a, b in zip(dec_a, dec_b, strict=True)]
    frames = np.asarray(original).argmax(-1) == np.asarray(quantized).argmax(-1)
    summary = {
        "frame_agreement": float(frames.mean()),
        "sequence_exact_match": float(np.mean([a == b for a, b in zip(dec_a, dec_b, strict=True)])),
        "edit_distance_mean": float(np.mean(dist)),
        "similarity_mean": float(np.mean(sim)),
        "blank": blank,
    }
    columns: dict[str, list] = {
        "decoded_original": [" ".join(map(str, s)) for s in dec_a],
        "decoded_quantized": [" ".join(map(str, s)) for s in dec_b],
        "edit_distance": dist,
        "similarity": sim,
    }
    if references is not None:
        summary["error_rate"] = _drop(error_rate(dec_a, references), error_rate(dec_b, references))
        summary["error_rate"]["increase"] = -summary["error_rate"].pop("drop")
        rel = summary["error_rate"].pop("drop_rel")
        summary["error_rate"]["increase_rel"] = None if rel is None else -rel
        columns["reference"] = [" ".join(map(str, r)) for r in references]
        columns["error_rate_original"] = sample_error_rates(dec_a, references).tolist()
        columns["error_rate_quantized"] = sample_error_rates(dec_b, references).tolist()
    return summary, columns


def compare_logits(
    original: np.ndarray,
    quantized: np.ndarray,
    *,
    class_names: Sequence[str],
    y: np.ndarray | None = None,
    ids: Sequence[str] | None = None,
    references: Sequence[Sequence[int]] | None = None,
    blank: int = 0,
) -> Comparison:
    """All label-free metrics, plus the labelled ones when ``y`` (classifiers) or ``references`` (sequences) are given.

    ``[n, C]`` logits are a classifier's; ``[n, T, C]`` a sequence model's per-frame logits (greedy CTC with ``blank``).
    """
    a, b = np.asarray(original, dtype=np.float64), np.asarray(quantized, dtype=np.float64)
    per = sample_logit_metrics(a, b)
    n = len(a)
    frame = pd.DataFrame({"id": list(ids) if ids is not None else [str(i) for i in range(n)], **per})
    summary: dict = {"n": n, "labelled": y is not None or references is not None, "logits": logit_summary(per)}
    if a.ndim == 2:
        summary["kind"] = "classifier"
        summary["predictions"] = prediction_metrics(a, b, y, class_names)
        frame["pred_original"] = [class_names[i] for i in a.argmax(1)]
        frame["pred_quantized"] = [class_names[i] for i in b.argmax(1)]
        if y is not None:
            frame["label"] = [class_names[i] for i in np.asarray(y)]
    else:
        summary["kind"] = "sequence"
        summary["sequence"], columns = sequence_metrics(a, b, references, blank)
        for key, values in columns.items():
            frame[key] = values
    return Comparison(summary, frame)


def check_finite_logits(logits: np.ndarray, name: str, ids: Sequence[str] | None = None) -> None:
    """Non-finite logits mean a broken model (or input), never a number to report: one clear error."""
    bad = ~np.isfinite(np.asarray(logits)).reshape(len(logits), -1).all(axis=1)
    if bad.any():
        first = int(np.argmax(bad))
        row = f"id {ids[first]!r}" if ids is not None else f"row {first}"
        raise ArtifactError(f"{name} gives non-finite logits (NaN or inf) on {int(bad.sum())} of {len(bad)} rows "
                            f"(first: {row}); the model is broken and its outputs are not comparable")


@dataclass
class Rows:
    """The rows a comparison runs on: features, optional labels (codes into the models' classes) or references."""

    X: np.ndarray
    ids: np.ndarray
    y: np.ndarray | None = None
    references: list[list[int]] | None = None
    source: str = ""


def model_in_dim(model: nn.Module) -> int | None:
    """Input width a saved model expects (``in_dim`` of its architecture), or None when it does not say."""
    value = getattr(model, "in_dim", None)
    return None if value is None else int(value)


def check_pair(original: nn.Module, quantized: nn.Module, names: tuple[str, str]) -> None:
    """Both models must take the same input width and predict the same classes (one clear error line)."""
    a_cls, b_cls = getattr(original, "classes", None), getattr(quantized, "classes", None)
    if a_cls is not None and b_cls is not None and len(a_cls) != len(b_cls):
        raise ArtifactError(f"{names[1]} predicts {len(b_cls)} classes but {names[0]} predicts {len(a_cls)}; "
                            "compare a quantized model with the original it was made from")
    if a_cls is not None and b_cls is not None and list(a_cls) != list(b_cls):
        raise ArtifactError(f"{names[1]} and {names[0]} name their classes differently; compare a quantized model "
                            "with the original it was made from")
    a_dim, b_dim = model_in_dim(original), model_in_dim(quantized)
    if a_dim is not None and b_dim is not None and a_dim != b_dim:
        raise ArtifactError(f"{names[1]} takes {b_dim} input features but {names[0]} takes {a_dim}")


def compare_models(
    original: nn.Module,
    quantized: nn.Module,
    rows: Rows,
    *,
    device: torch.device | str = "cpu",
    speed: bool = True,
    warmup: int = 3,
    repeats: int = 20,
    batch_size: int = 256,
    blank: int = 0,
    names: tuple[str, str] = ("original", "quantized"),
) -> Comparison:
    """Logit, prediction (or sequence), speed and kernel-audit comparison of two loaded models on ``rows``.

    The audit (``qwave.eval.speed.layer_audit``) lists every packed layer's format, kernel, bytes and share of
    time; a layer that ran the reference recipe instead of a fast kernel is logged as a warning.
    """
    check_pair(original, quantized, names)
    in_dim = model_in_dim(original)
    if in_dim is not None and rows.X.shape[1] != in_dim:
        raise DataError(f"{rows.source}: the table has {rows.X.shape[1]} feature columns but {names[0]} takes "
                        f"{in_dim} input features")
    device = torch.device(device)
    classes = list(getattr(original, "classes", None) or [])
    X = torch.as_tensor(rows.X, dtype=torch.float32, device=device)
    original, quantized = original.to(device).eval(), quantized.to(device).eval()
    a, b = (predict_logits(m, X, batch_size).float().cpu().numpy() for m in (original, quantized))
    for name, logits in zip(names, (a, b), strict=True):
        check_finite_logits(logits, name, list(rows.ids))
    if not classes:
        classes = [str(c) for c in range(a.shape[-1])]
    if a.shape[-1] != len(classes) or b.shape[-1] != len(classes):
        raise ArtifactError(f"{names[1]} outputs {b.shape[-1]} classes, {names[0]} {a.shape[-1]}, manifest "
                            f"lists {len(classes)}")
    result = compare_logits(a, b, class_names=classes, y=rows.y if a.ndim == 2 else None, ids=list(rows.ids),
                            references=rows.references if a.ndim == 3 else None, blank=blank)
    result.summary["device"] = device.type
    if speed and len(X):
        timing = time_pair({"original": original, "quantized": quantized}, X, warmup=warmup, repeats=repeats,
                           batch_size=batch_size)
        timing["speedup"] = timing["original"]["seconds_per_sample"] / timing["quantized"]["seconds_per_sample"]
        timing["threads"] = torch.get_num_threads()
        result.summary["speed"] = timing
    audit_rows = X[: min(len(X), batch_size)]
    result.summary["kernels"] = {"original": [a.as_dict() for a in layer_audit(original, audit_rows)],
                                 "quantized": [a.as_dict() for a in layer_audit(quantized, audit_rows)]}
    for which, layers in result.summary["kernels"].items():
        for layer in layers:
            if layer["fallback"]:
                log.warning("%s layer %s (%s) ran %s, the dequantize-then-float reference, not a fast kernel",
                            names[0 if which == "original" else 1], layer["path"], layer["format"], layer["kernel"])
    return result
