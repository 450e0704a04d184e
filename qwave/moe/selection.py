"""Choosing ``moe.num_experts`` expert formats from ``moe.pool`` before the MoE is built: the ranking rules.

Each pool format is probed (``qwave.bench.moe.probe_pool``, by the benchmark's fold pipeline): a single classifier
of the expert shape in that format (with the hidden activation the format needs, ``activation_for``, unless
``model.activation`` names one) is trained for ``moe.selection_epochs`` on the fit rows, scored by its macro-F1 on
the inner validation rows and sized by the stored bytes of its packed body. The rule (``moe.selection``) ranks the
probes:

* ``f1``: inner-validation macro-F1 (the most accurate formats);
* ``f1_per_byte``: macro-F1 divided by stored bytes (accuracy bought per byte), among the *eligible* probes:
  those whose F1 is at least ``moe.selection_floor`` times the best probe's F1. Without the floor a 1-bit probe
  beats an int8 probe with F1 = 1.0 as soon as its own F1 passes about 0.15. When fewer than ``num_experts``
  probes are eligible, the rest are the ineligible probes with the best F1;
* ``order``: the first ``num_experts`` formats of the pool, no probing.

Ties keep pool order. Only the selected formats become experts, so no expert that can never be routed to is
built or stored; the probes' scores are kept in the MoE's config (and so in the artifact manifest).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Probe:
    """One pool format's probe: inner-validation macro-F1, packed body bytes, score and eligibility under the rule."""

    format: str
    val_macro_f1: float | None
    stored_bytes: int | None
    score: float
    eligible: bool = True
    selected: bool = False


def eligible(f1: list[float | None], rule: str, floor: float) -> list[bool]:
    """Which probes may be chosen first: under ``f1_per_byte``, those with ``F1 >= floor * max F1``; else all."""
    if rule != "f1_per_byte":
        return [True] * len(f1)
    best = max(float(f) for f in f1)
    return [float(f) >= floor * best for f in f1]


def rank(f1: list[float | None], stored_bytes: list[int | None], rule: str) -> list[float]:
    """Score of each probe under ``rule`` (higher is better): F1, F1 / bytes, or minus the pool position."""
    if rule == "order":
        return [-float(i) for i in range(len(f1))]
    if rule == "f1":
        return [float(f) for f in f1]
    if rule == "f1_per_byte":
        return [float(f) / float(b) for f, b in zip(f1, stored_bytes, strict=True)]
    raise ValueError(f"unknown selection rule {rule!r}")


def choose(scores: list[float], n: int, ok: list[bool] | None = None, f1: list | None = None) -> list[int]:
    """Indices of the ``n`` best scores among the eligible probes (``ok``, default all), topped up by the
    ineligible ones with the best ``f1``; returned in pool order (ties keep pool order)."""
    ok = ok or [True] * len(scores)
    first = sorted((i for i in range(len(scores)) if ok[i]), key=lambda i: (-scores[i], i))
    rest = sorted((i for i in range(len(scores)) if not ok[i]), key=lambda i: (-float(f1[i]), i))
    return sorted((first + rest)[:n])
