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

from qwave.bench.config import BenchConfig
from qwave.data.normalize import Normalize
from qwave.errors import ConfigError, FormatError
from qwave.formats import canonical_name
from qwave.nn.family import family, family_names, resolve
from qwave.nn.mlp import MLPClassifier, build_mlp
from qwave.nn.surgery import calibrate, pack_model, ptq, quant_options, quantize_model


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


def _quant_options(ctx: BuildContext, layer_formats: list[str] | None = None) -> dict:
    m = ctx.cfg.model
    return quant_options(keep_last_fp=m.keep_last_fp, group_size=m.group_size, weight_only=m.weight_only,
                         layer_formats=layer_formats or m.layer_formats)


def _qat_kind(name: str, fmt: str, layer_formats: list[str] | None = None) -> ModelKind:
    def build(ctx: BuildContext) -> nn.Module:
        options = _quant_options(ctx, layer_formats)
        return quantize_model(mlp(ctx, options.get("layer_formats") or [fmt]), fmt, **options)

    def deploy(model: nn.Module, ctx: BuildContext) -> nn.Module:
        return pack_model(model)

    method = "fp32" if fmt == "fp32" and not layer_formats else "qat"
    return ModelKind(name, build, deploy, method)


def _ptq_kind(name: str, fmt: str, layer_formats: list[str] | None = None) -> ModelKind:
    def deploy(model: nn.Module, ctx: BuildContext) -> nn.Module:
        m = ctx.cfg.model
        return ptq(
            model, fmt, calib=ctx.X_fit, calib_labels=ctx.y_fit, min_agreement=m.ptq_min_agreement,
            strict=m.ptq_strict, **_quant_options(ctx, layer_formats),
        )

    def simulate(model: nn.Module, ctx: BuildContext) -> nn.Module:
        return calibrate(model, fmt, ctx.X_fit, **_quant_options(ctx, layer_formats))

    return ModelKind(name, mlp, deploy, "ptq", simulate)


def _mixed(spec: str) -> list[str]:
    """``"1-1-8"`` -> ``["binary", "binary", "int8"]``: one format per linear layer, in order."""
    return [canonical_name(part) for part in spec.split("-")]


def resolve_kind(name: str) -> ModelKind:
    """The ModelKind for a config name: ``fp32``, ``4``, ``bitnet``, ``ptq8``, ``moe``, ...

    A name of formats joined by ``-`` (``1-1-8``; ``ptq1-1-8`` for PTQ) gives each linear layer its own format
    (mixed precision), in module order.
    """
    key = str(name).strip()
    found = family(key)
    if found is not None and found.kind is not None:
        return resolve(found.kind)(key)
    try:
        ptq_name = key.lower().startswith("ptq") and key[3:]
        spec = key[3:] if ptq_name else key
        layer_formats = _mixed(spec) if "-" in spec else None
        fmt = layer_formats[0] if layer_formats else canonical_name(spec)
        return (_ptq_kind if ptq_name else _qat_kind)(key, fmt, layer_formats)
    except FormatError as err:
        kinds = family_names(need="kind")
        extra = f"; other model kinds: {', '.join(kinds)}" if kinds else ""
        raise ConfigError(f"models: {err}{extra}") from None
