"""Model surgery over any ``nn.Module``: quantize its Linear layers (QAT), pack them (inference), or both after
training (PTQ, with an optional calibration pass and an agreement gate).

A ``QuantPlan`` (``qwave.formats.spec``) says which format each Linear gets, with which options; a bare format
name stands for the plan of that name (``"4"``, ``"ptq4"`` and ``"1-1-8"`` read as ``qwave bench`` reads them).
"""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qwave.errors import ConfigError, FormatError
from qwave.formats import QuantPlan, get_format
from qwave.nn.packed_linear import PackedLinear
from qwave.nn.quant_linear import QuantLinear

log = logging.getLogger("qwave.ptq")

# Clipping ratios tried per layer by the PTQ calibration (1.0 = no clipping, always a candidate).
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)
# Calibration rows used for the clipping search (the agreement gate uses every row).
MAX_CALIB_ROWS = 1024


def linear_paths(model: nn.Module) -> list[str]:
    """Module paths of every ``nn.Linear`` (QuantLinear included) in module order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def set_module(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at ``path`` inside ``model``; returns the (possibly new) root."""
    if not path:
        return module
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)
    return model


def quantize_model(model: nn.Module, plan: QuantPlan | str | int) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` in place by a ``QuantLinear`` (sharing its Parameters) of the
    plan's format for that layer; returns the model (a new object only when ``model`` itself is a Linear)."""
    paths, plan = linear_paths(model), plan if isinstance(plan, QuantPlan) else QuantPlan.parse(plan)
    for path, spec in zip(paths, plan.layer_specs(len(paths)), strict=True):
        linear = model.get_submodule(path) if path else model
        model = set_module(model, path, QuantLinear.from_linear(linear, spec.build()))
    return model


def pack_linear(linear: nn.Linear) -> PackedLinear:
    """The PackedLinear of a QuantLinear (its format) or of a plain Linear (fp32)."""
    fmt = linear.fmt if isinstance(linear, QuantLinear) else get_format("fp32")
    weight = linear.weight.detach()
    bias = None if linear.bias is None else linear.bias.detach()
    return PackedLinear(fmt, fmt.pack(fmt.quantize(weight)), tuple(weight.shape), bias)


def pack_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every QuantLinear (and remaining nn.Linear, as fp32) replaced by PackedLinear."""
    packed = copy.deepcopy(model)
    for path in linear_paths(packed):
        packed = set_module(packed, path, pack_linear(packed.get_submodule(path) if path else packed))
    return packed.eval()


@contextmanager
def _eval_mode(model: nn.Module):
    """Run ``model`` in eval mode and restore its training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _as_rows(data, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data).float().to(device)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _clip_rows(w: torch.Tensor, ratio: float) -> torch.Tensor:
    """``clamp(w, -r * max|w_row|, r * max|w_row|)`` per output channel."""
    if ratio == 1.0:
        return w
    limit = ratio * w.abs().amax(dim=1, keepdim=True)
    return torch.maximum(torch.minimum(w, limit), -limit)


def _layer_inputs(model: nn.Module, x: torch.Tensor, paths: list[str]) -> dict[str, torch.Tensor]:
    """The input each Linear at ``paths`` receives when the float ``model`` runs on ``x``."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(p).register_forward_pre_hook(lambda _m, args, p=p: seen.__setitem__(p, args[0].detach()))
        for p in paths
    ]
    try:
        with torch.no_grad(), _eval_mode(model):
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def calibrate(model: nn.Module, plan: QuantPlan | str | int, calib=None) -> nn.Module:
    """A QuantLinear copy of the trained float ``model``, weights clipped per layer to fit the calibration rows.

    Rule: for every layer whose format has fewer than 16 bits, each ratio ``r`` in ``CLIP_RATIOS`` clips the
    weight rows to ``r * max|w_row|``; the ratio kept minimises the mean squared error between the layer's
    simulated quantized output ``fake_quant_input(x) @ fake_quant(clip(W, r)).T + b`` and its float output
    ``x @ W.T + b``, with ``x`` the layer's input in the float model on (at most ``MAX_CALIB_ROWS``)
    calibration rows. ``r = 1`` is a candidate, so calibration never increases that error. The clipped weight
    is written into the layer, so packing it reproduces the choice. The choices are in ``model.calibration``.
    """
    sim = quantize_model(copy.deepcopy(model), plan)
    sim.calibration = {}
    if calib is None:
        return sim
    paths = linear_paths(model)
    x = _as_rows(calib, _model_device(model))[:MAX_CALIB_ROWS]
    inputs = _layer_inputs(model, x, paths)
    with torch.no_grad():
        for path in paths:
            layer = sim.get_submodule(path) if path else sim
            if layer.fmt.bits >= 16 or path not in inputs:
                continue
            x_in = inputs[path].reshape(-1, layer.in_features)
            w = layer.weight.detach().clone()
            target = F.linear(x_in, w, layer.bias)
            x_q = layer.fmt.fake_quant_input(x_in)
            errors = [
                F.mse_loss(F.linear(x_q, layer.fmt.fake_quant(_clip_rows(w, r)), layer.bias), target).item()
                for r in CLIP_RATIOS
            ]
            best = int(np.argmin(errors))
            layer.weight.data = _clip_rows(w, CLIP_RATIOS[best])
            sim.calibration[path] = {
                "format": layer.fmt.name,
                "clip_ratio": CLIP_RATIOS[best],
                "mse_unclipped": errors[0],
                "mse_calibrated": errors[best],
            }
    return sim


def ptq(
    model: nn.Module,
    plan: QuantPlan | str | int,
    calib=None,
    *,
    calib_labels=None,
    min_agreement: float = 0.9,
    strict: bool = False,
) -> nn.Module:
    """Post-training quantization of a trained float ``model``: calibrate (see :func:`calibrate`), pack, and
    gate the result.

    With ``calib`` rows, the packed model's top-1 predictions are compared with the float model's (and, with
    ``calib_labels``, their accuracies); an agreement below ``min_agreement`` logs a warning on the
    ``qwave.ptq`` logger pointing to QAT, or raises FormatError when ``strict``. The measurements are attached
    as ``packed.ptq_report`` (a dict).
    """
    plan = plan if isinstance(plan, QuantPlan) else QuantPlan.parse(plan)
    sim = calibrate(model, plan, calib)
    packed = pack_model(sim)
    names = sorted({layer.fmt.name for layer in packed.modules() if isinstance(layer, PackedLinear)})
    label = "+".join(names) if plan.per_layer else plan.default.name
    report: dict = {"format": label, "calibrated": calib is not None, "layers": sim.calibration}
    if calib is not None:
        report.update(_agreement(model, packed, calib, calib_labels))
        report["min_agreement"] = float(min_agreement)
        report["passed"] = report["agreement"] >= min_agreement
        if not report["passed"]:
            drop = report.get("accuracy_drop")
            message = (
                f"PTQ to {label} keeps only {report['agreement']:.1%} top-1 agreement with the float model on "
                f"{report['rows']} calibration rows (accuracy drop "
                f"{'unknown, no labels' if drop is None else f'{drop:.1%}'}), below min_agreement={min_agreement}; "
                f"train this format with QAT instead (models=[{'-'.join(plan.formats)}])"
            )
            if strict:
                raise FormatError(message)
            log.warning(message)
    packed.__dict__.pop("calibration", None)
    packed.ptq_report = report
    return packed


def _agreement(float_model: nn.Module, packed: nn.Module, calib, labels) -> dict:
    """Top-1 agreement of ``packed`` with ``float_model`` on ``calib`` (and both accuracies with ``labels``)."""
    device = _model_device(float_model)
    x = _as_rows(calib, device)
    with torch.no_grad(), _eval_mode(float_model):
        ref = float_model(x).argmax(-1).cpu()
    with torch.no_grad():
        got = packed.to(device)(x).argmax(-1).cpu()
    result: dict = {"rows": int(x.shape[0]), "agreement": float((ref == got).float().mean()) if len(x) else 1.0}
    if labels is not None:
        y = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
        if y.shape[0] != x.shape[0]:
            raise ConfigError(f"calib_labels has {y.shape[0]} labels for {x.shape[0]} calibration rows")
        acc_float, acc_packed = float((ref == y).float().mean()), float((got == y).float().mean())
        result.update(accuracy_float=acc_float, accuracy_packed=acc_packed, accuracy_drop=acc_float - acc_packed)
    return result
