"""The ``moe`` model kind of ``qwave bench``: build (probe the pool, select experts, quantize each), deploy
(pack), evaluate (per-fold routing analysis). The ``moe`` model family (``qwave.moe.model``) names ``moe_kind``
as its benchmark kind; loading an MoE artifact never imports this module.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from qwave.bench.models import BuildContext, FoldData, ModelKind, resolve_kind
from qwave.bench.runner import fit_model
from qwave.errors import ConfigError
from qwave.formats import FormatSpec, QuantPlan
from qwave.moe.analysis import evaluate_moe
from qwave.moe.config import MoEConfig
from qwave.moe.model import MoEClassifier, quantize_moe
from qwave.moe.selection import Probe, choose, eligible, rank
from qwave.nn.surgery import pack_model
from qwave.size import report


def build(ctx: BuildContext) -> MoEClassifier:
    """Select the experts (from ``moe.pool`` if set), build the MoE with the fold's normaliser (expert activations
    from ``model.activation``), quantize experts and router."""
    cfg: MoEConfig = ctx.cfg.moe
    cfg.validate()
    m = ctx.cfg.model
    if m.layer_formats:
        raise ConfigError(
            f"model.layer_formats={list(m.layer_formats)} does not apply to moe: each expert's format comes from "
            "moe.experts (or moe.pool)"
        )
    plan = QuantPlan.parse(None, keep_last_fp=m.keep_last_fp, group_size=m.group_size)  # experts name formats
    hidden = list(cfg.expert_hidden or m.hidden)
    probes = probe_pool(cfg, ctx, hidden) if cfg.pool else []
    formats = [p.format for p in probes if p.selected] if cfg.pool else list(cfg.experts)
    model = MoEClassifier(
        ctx.in_dim, ctx.num_classes, formats, hidden, m.dropout, m.layer_norm, cfg.top_k, cfg.router_hidden,
        cfg.router_dropout, cfg.balance_weight, cfg.curiosity, mask_seed=ctx.seed, normalize=ctx.normalize,
        selection=[asdict(p) for p in probes], activation=m.activation, router_format=cfg.router_format,
    )
    return quantize_moe(model, plan)


def evaluate(loaded: nn.Module, fold: FoldData, out_dir: Path) -> dict:
    return evaluate_moe(loaded, fold.X, fold.y, fold.ids, fold.classes, out_dir, plots=fold.ctx.cfg.plots)


def moe_kind(name: str) -> ModelKind:
    """The ``moe`` kind: MoE of quantized experts (QAT), configured by the ``moe.*`` keys."""
    return ModelKind(name, build, lambda model, ctx: pack_model(model), "moe", evaluate=evaluate)


def probe_pool(cfg: MoEConfig, ctx: BuildContext, hidden: list[int]) -> list[Probe]:
    """Probe every format of ``cfg.pool`` and mark the chosen ones (the rules: ``qwave.moe.selection``). A probe is
    the benchmark's fit (``fit_model``) of that format, shaped like an expert (``hidden``, the experts' quantization
    options: no ``weight_only``), trained for ``moe.selection_epochs`` on the fold's fit rows on the CPU and run on
    its inner-validation rows. The probes fit in a chain from the fold's seeded RNG state (each builds where the
    previous one's training left the RNG, and so does the MoE after them)."""
    names = [FormatSpec.parse(f).name for f in cfg.pool]
    f1: list[float | None] = [None] * len(names)
    sizes: list[int | None] = [None] * len(names)
    if cfg.selection != "order":
        model = replace(ctx.cfg.model, hidden=hidden, weight_only=False)
        probe_cfg = replace(ctx.cfg, model=model, train=replace(ctx.cfg.train, epochs=cfg.selection_epochs))
        for i, name in enumerate(names):
            probe_ctx = replace(ctx, cfg=probe_cfg, normalize=copy.deepcopy(ctx.normalize))
            fit = fit_model(resolve_kind(name), probe_ctx, ctx.X_val, torch.device("cpu"), label=f"probe {name}")
            torch.set_rng_state(fit.rng_after_training)
            f1[i] = fit.trained.best_val_macro_f1
            sizes[i] = report(fit.deployed).bytes_under("body")
    scores = rank(f1, sizes, cfg.selection)
    ok = eligible(f1, cfg.selection, cfg.selection_floor)
    chosen = set(choose(scores, cfg.num_experts, ok, f1))
    return [Probe(n, f1[i], sizes[i], scores[i], ok[i], i in chosen) for i, n in enumerate(names)]
