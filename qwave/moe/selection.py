"""Choosing ``moe.num_experts`` expert formats from ``moe.pool`` before the MoE is built.

Each pool format is probed: a single classifier of the expert shape in that format is trained for
``moe.selection_epochs`` on the fit rows, scored by its macro-F1 on the inner validation rows and sized by the
stored bytes of its packed body. The rule (``moe.selection``) ranks the probes:

* ``f1``: inner-validation macro-F1 (the most accurate formats);
* ``f1_per_byte``: macro-F1 divided by stored bytes (accuracy bought per byte; favours small formats);
* ``order``: the first ``num_experts`` formats of the pool, no probing.

Ties keep pool order. Only the selected formats become experts, so no expert that can never be routed to is
built or stored; the probes' scores are kept in the MoE's config (and so in the artifact manifest).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

from qwave.formats import canonical_name
from qwave.moe.config import MoEConfig
from qwave.nn.mlp import MLPClassifier
from qwave.nn.surgery import pack_model, quantize_model
from qwave.size import report
from qwave.train import train_model


@dataclass
class Probe:
    """One pool format's probe: its inner-validation macro-F1, packed body bytes and score under the rule."""

    format: str
    val_macro_f1: float | None
    stored_bytes: int | None
    score: float
    selected: bool = False


def rank(f1: list[float | None], stored_bytes: list[int | None], rule: str) -> list[float]:
    """Score of each probe under ``rule`` (higher is better): F1, F1 / bytes, or minus the pool position."""
    if rule == "order":
        return [-float(i) for i in range(len(f1))]
    if rule == "f1":
        return [float(f) for f in f1]
    if rule == "f1_per_byte":
        return [float(f) / float(b) for f, b in zip(f1, stored_bytes, strict=True)]
    raise ValueError(f"unknown selection rule {rule!r}")


def choose(scores: list[float], n: int) -> list[int]:
    """Indices of the ``n`` best scores, in pool order (ties keep pool order)."""
    best = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:n]
    return sorted(best)


def probe_pool(cfg: MoEConfig, ctx, hidden: list[int], quant_options: dict) -> list[Probe]:
    """Probe every format of ``cfg.pool`` on the fold's fit / inner-validation rows and mark the chosen ones.

    ``ctx`` is the benchmark's ``BuildContext`` (fit and validation rows, normaliser, training config, seed).
    """
    names = [canonical_name(f) for f in cfg.pool]
    f1: list[float | None] = [None] * len(names)
    sizes: list[int | None] = [None] * len(names)
    if cfg.selection != "order":
        m = ctx.cfg.model
        train_cfg = replace(ctx.cfg.train, epochs=cfg.selection_epochs)
        for i, name in enumerate(names):
            probe = MLPClassifier(
                ctx.in_dim, ctx.num_classes, hidden, m.dropout, m.layer_norm, copy.deepcopy(ctx.normalize)
            )
            quantize_model(probe, name, **quant_options)
            result = train_model(
                probe, ctx.X_fit, ctx.y_fit, ctx.X_val, ctx.y_val, ctx.num_classes, train_cfg, ctx.seed
            )
            f1[i] = result.best_val_macro_f1
            sizes[i] = report(pack_model(probe.cpu())).bytes_under("body")
    scores = rank(f1, sizes, cfg.selection)
    chosen = set(choose(scores, cfg.num_experts))
    return [Probe(n, f1[i], sizes[i], scores[i], i in chosen) for i, n in enumerate(names)]
