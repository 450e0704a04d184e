"""Model kinds a benchmark can name: a registered format (QAT), ``ptq<format>`` (PTQ), or a model family with a
benchmark kind (``moe``: ``qwave.nn.family``).

A kind says how to build the training module and how to turn the trained module into the packed module that is
saved, reloaded and evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from qwave.bench.config import BenchConfig, ModelConfig
from qwave.data.normalize import Normalize
from qwave.errors import ConfigError, FormatError
from qwave.formats import QuantPlan
from qwave.nn.family import family, family_names, resolve
from qwave.nn.mlp import MLPClassifier, build_mlp
from qwave.nn.surgery import calibrate, pack_model, ptq, quantize_model


@dataclass
class BuildContext:
    """Everything a kind may use to build and deploy one model of one fold: never the test rows."""

    in_dim: int
    num_classes: int
    normalize: Normalize
    cfg: BenchConfig
    seed: int
    X_fit: np.ndarray
    y_fit: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray


@dataclass(frozen=True)
class ModelKind:
    """How to build a trainable module, deploy (quantize + pack) it, and simulate the deployed model.

    ``simulate`` returns the float module whose logits the packed artifact must reproduce: the trained QAT
    module itself, or for PTQ a fake-quantized copy of the trained FP32 module. ``evaluate`` (optional) lets a
    kind write its own per-fold outputs from the loaded artifact and return extra metrics for metrics.json.
    """

    name: str
    build: Callable[[BuildContext], nn.Module]
    deploy: Callable[[nn.Module, BuildContext], nn.Module]
    method: str = "qat"
    simulate: Callable[[nn.Module, BuildContext], nn.Module] = lambda model, ctx: model
    evaluate: Callable[[nn.Module, FoldData, Path], dict] | None = None


@dataclass
class FoldData:
    """The held-out fold as a kind's ``evaluate`` hook sees it (after training and deployment)."""

    X: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    classes: list[str]
    ctx: BuildContext


def mlp(ctx: BuildContext, formats: list[str] | None = None) -> MLPClassifier:
    """A fresh FP32 MLP of the configured shape with the fold's fitted normaliser.

    ``model.activation=auto`` picks ``hardtanh`` when a hidden layer's format binarises or ternarises its input
    (``formats``: the format of each linear layer, or one for all), else ``relu``.
    """
    m = ctx.cfg.model
    return build_mlp(ctx.in_dim, ctx.num_classes, m.hidden, m.dropout, m.layer_norm, ctx.normalize, m.activation,
                     formats)


def plan_for(name: str, m: ModelConfig) -> QuantPlan:
    """The quantization plan of model ``name`` under the ``model.*`` options (``model.layer_formats`` unless the
    name is itself mixed)."""
    try:
        return QuantPlan.parse(name, layer_formats=m.layer_formats, keep_last_fp=m.keep_last_fp,
                               group_size=m.group_size, weight_only=m.weight_only)
    except FormatError as err:  # the name itself was checked by resolve_kind
        raise ConfigError(f"model.layer_formats: {err}") from None


def _format_kind(name: str, plan: QuantPlan) -> ModelKind:
    """QAT: the MLP trains quantized and is packed. PTQ: the float MLP trains, then is calibrated, packed, gated."""

    def build(ctx: BuildContext) -> nn.Module:
        full = plan_for(name, ctx.cfg.model)
        return quantize_model(mlp(ctx, list(full.formats)), full)

    def deploy(model: nn.Module, ctx: BuildContext) -> nn.Module:
        m = ctx.cfg.model
        return ptq(model, plan_for(name, m), calib=ctx.X_fit, calib_labels=ctx.y_fit,
                   min_agreement=m.ptq_min_agreement, strict=m.ptq_strict)

    def simulate(model: nn.Module, ctx: BuildContext) -> nn.Module:
        return calibrate(model, plan_for(name, ctx.cfg.model), ctx.X_fit)

    if plan.method == "ptq":
        return ModelKind(name, mlp, deploy, "ptq", simulate)
    method = "fp32" if plan.formats == ("fp32",) and not plan.per_layer else "qat"
    return ModelKind(name, build, lambda model, ctx: pack_model(model), method)


def resolve_kind(name: str) -> ModelKind:
    """The ModelKind for a config name: ``fp32``, ``4``, ``bitnet``, ``ptq8``, ``moe``, ...

    A name of formats joined by ``-`` (``1-1-8``; ``ptq1-1-8`` for PTQ) gives each linear layer its own format
    (mixed precision), in module order (``QuantPlan.parse``).
    """
    key = str(name).strip()
    found = family(key)
    if found is not None and found.kind is not None:
        return resolve(found.kind)(key)
    try:
        plan = QuantPlan.parse(key)
    except FormatError as err:
        kinds = family_names(need="kind")
        extra = f"; other model kinds: {', '.join(kinds)}" if kinds else ""
        raise ConfigError(f"models: {err}{extra}") from None
    return _format_kind(key, plan)
