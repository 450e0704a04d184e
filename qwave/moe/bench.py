"""The ``moe`` model kind of ``qwave bench``: build (select experts, quantize each), deploy (pack), evaluate.

Importing this module registers the kind with the benchmark, the architecture with ``qwave.artifact`` (so MoE
artifacts load) and the ``moe`` row of the ``qwave size`` calculator.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from torch import nn

from qwave import artifact
from qwave.bench.models import BuildContext, FoldData, ModelKind, register_kind
from qwave.errors import ConfigError
from qwave.moe.analysis import evaluate_moe
from qwave.moe.config import MoEConfig
from qwave.moe.model import MoEClassifier
from qwave.moe.selection import probe_pool
from qwave.nn.surgery import pack_model, quantize_model
from qwave.size import SizeSpec, quantization_options, register_size_model

SIZE_EXPERTS = 3


def quantize_moe(model: MoEClassifier, options: dict) -> MoEClassifier:
    """Quantize expert ``e`` to ``model.formats[e]`` (with the format ``options``) and the router to
    ``model.router_format``, in place (QAT)."""
    for expert, fmt in zip(model.experts, model.formats, strict=True):
        quantize_model(expert, fmt, **options)
    quantize_model(model.router, model.router_format)
    return model


def _quant_options(ctx: BuildContext) -> dict:
    m = ctx.cfg.model
    if m.layer_formats:
        raise ConfigError(
            f"model.layer_formats={list(m.layer_formats)} does not apply to moe: each expert's format comes from "
            "moe.experts (or moe.pool)"
        )
    options: dict = {"keep_last_fp": m.keep_last_fp}
    if m.group_size:
        options["group_size"] = m.group_size
    return options


def build(ctx: BuildContext) -> MoEClassifier:
    """Select the experts (from ``moe.pool`` if set), build the MoE with the fold's normaliser (expert activations
    from ``model.activation``), quantize experts and router."""
    cfg: MoEConfig = ctx.cfg.moe
    cfg.validate()
    options = _quant_options(ctx)
    m = ctx.cfg.model
    hidden = list(cfg.expert_hidden or m.hidden)
    probes = probe_pool(cfg, ctx, hidden, options) if cfg.pool else []
    formats = [p.format for p in probes if p.selected] if cfg.pool else list(cfg.experts)
    model = MoEClassifier(
        ctx.in_dim, ctx.num_classes, formats, hidden, m.dropout, m.layer_norm, cfg.top_k, cfg.router_hidden,
        cfg.router_dropout, cfg.balance_weight, cfg.curiosity, mask_seed=ctx.seed, normalize=ctx.normalize,
        selection=[asdict(p) for p in probes], activation=m.activation, router_format=cfg.router_format,
    )
    return quantize_moe(model, options)


def deploy(model: nn.Module, ctx: BuildContext) -> nn.Module:
    return pack_model(model)


def evaluate(loaded: nn.Module, fold: FoldData, out_dir: Path) -> dict:
    return evaluate_moe(loaded, fold.X, fold.y, fold.ids, fold.classes, out_dir, plots=fold.ctx.cfg.plots)


def moe_kind(name: str) -> ModelKind:
    """The ``moe`` kind: MoE of quantized experts (QAT), configured by the ``moe.*`` keys."""
    return ModelKind(name, build, deploy, "moe", evaluate=evaluate)


def build_size_model(spec: SizeSpec, fmt: str) -> nn.Module:
    """Size-calculator row: ``SIZE_EXPERTS`` experts of ``spec``'s shape, all in ``fmt``, an int8 router, top-1
    routing (active size under uniform usage)."""
    if fmt == "mixed":
        raise ConfigError("the moe size row takes one format per expert set; drop --layer-formats for --models moe")
    model = MoEClassifier(spec.in_dim, spec.num_classes, [fmt] * SIZE_EXPERTS, spec.hidden)
    return pack_model(quantize_moe(model, quantization_options(spec, fmt)))


register_kind("moe", moe_kind)
artifact.register_architecture("moe", MoEClassifier)
register_size_model("moe", build_size_model)
