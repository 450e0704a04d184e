"""quantize_model / pack_model over any module, mixed precision, and PTQ (calibration and the agreement gate)."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qwave.errors import ConfigError, FormatError
from qwave.formats import QuantPlan
from qwave.nn import MLPClassifier, PackedLinear, QuantLinear, calibrate, pack_model, ptq, quantize_model
from qwave.nn.surgery import CLIP_RATIOS


def mlp(seed: int = 0, in_dim: int = 48, hidden=(32, 16), classes: int = 6) -> MLPClassifier:
    torch.manual_seed(seed)
    return MLPClassifier(in_dim, classes, hidden).eval()


def formats_of(model: nn.Module) -> list[str]:
    return [m.fmt.name for m in model.modules() if isinstance(m, (QuantLinear, PackedLinear))]


def test_quantize_model_replaces_every_linear_in_place_sharing_parameters():
    model = mlp()
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    same = quantize_model(model, "4")
    assert same is model
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert all(type(m) is QuantLinear for m in layers) and formats_of(model) == ["int4"] * 3
    assert all(m.weight is w for m, w in zip(layers, weights, strict=True))


def test_layer_formats_keep_last_fp_and_options_apply_per_layer():
    model = quantize_model(mlp(), QuantPlan.parse("fp32", layer_formats=["1", "bitnet", "8"], group_size=16))
    assert formats_of(model) == ["binary", "ternary", "int8"]
    assert model.body[6].fmt.group_size == 16
    model = quantize_model(mlp(), QuantPlan.parse("4", keep_last_fp=True, group_size=16))
    assert formats_of(model) == ["int4", "int4", "fp32"]
    assert model.body[0].fmt.group_size == 16


def test_wrong_layer_format_count_names_the_option_and_the_counts():
    with pytest.raises(ConfigError, match=r"model\.layer_formats has 2 entries .* 3 Linear layers"):
        quantize_model(mlp(), QuantPlan.parse("4", layer_formats=["1", "8"]))


def test_a_format_name_stands_for_its_plan():
    assert formats_of(quantize_model(mlp(), "ptq1-1-8")) == ["binary", "binary", "int8"]
    with pytest.raises(FormatError, match="'int9'"):
        quantize_model(mlp(), "int9")


def test_pack_model_is_a_copy_whose_linears_are_all_packed():
    model = mlp()
    model.body[3] = QuantLinear.from_linear(model.body[3], "2")
    packed = pack_model(model)
    assert type(model.body[0]) is nn.Linear and type(model.body[3]) is QuantLinear
    assert formats_of(packed) == ["fp32", "int2", "fp32"]
    assert not any(isinstance(m, nn.Linear) for m in packed.modules())
    x = torch.randn(10, 48)
    with torch.no_grad():
        assert torch.allclose(packed(x), model(x), atol=1e-5)


def layer_errors(float_model: nn.Module, packed: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Mean squared error of each packed layer's output against the float layer's, on the float model's
    inputs to that layer (computed here independently of the calibration code)."""
    inputs = {}
    hooks = [
        m.register_forward_pre_hook(lambda _m, a, n=n: inputs.__setitem__(n, a[0]))
        for n, m in float_model.named_modules()
        if isinstance(m, nn.Linear)
    ]
    with torch.no_grad():
        float_model(x)
        for h in hooks:
            h.remove()
        return {
            n: F.mse_loss(packed.get_submodule(n)(x_in), float_model.get_submodule(n)(x_in)).item()
            for n, x_in in inputs.items()
        }


@pytest.mark.parametrize("fmt", ["2", "4", "1", "bitnet", "qesc"])
def test_calibrated_ptq_error_is_at_most_the_uncalibrated_error_on_calibration_rows(fmt):
    model = mlp(1)
    with torch.no_grad():  # a few outlier weights, the case clipping exists for
        model.body[0].weight[::5, 3] = 2.0
    x = torch.randn(300, 48)
    calibrated, plain = ptq(model, fmt, x, min_agreement=0.0), ptq(model, fmt, None)
    after, before = layer_errors(model, calibrated, x), layer_errors(model, plain, x)
    assert all(after[n] <= before[n] * (1 + 1e-5) + 1e-12 for n in before)
    report = calibrated.ptq_report["layers"]
    assert set(report) == set(before) and all(r["clip_ratio"] in CLIP_RATIOS for r in report.values())
    if fmt == "2":
        assert after["body.0"] < before["body.0"]  # 2-bit codes with outliers: clipping must help


def test_calibrate_returns_the_qat_model_that_packs_to_the_ptq_artifact():
    model, x = mlp(2), torch.randn(100, 48)
    sim = calibrate(model, "2", x)
    packed = ptq(model, "2", x, min_agreement=0.0)
    with torch.no_grad():
        assert torch.allclose(sim.eval()(x), packed(x), atol=1e-4)


def test_float_formats_are_not_clipped():
    packed = ptq(mlp(), "fp16", torch.randn(50, 48))
    assert packed.ptq_report["layers"] == {} and packed.ptq_report["agreement"] == 1.0


def collapsing_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Class = argmax of the first 4 features of positive inputs: binarised activations are all +1, so a
    binary PTQ model predicts one class for every row (about 25% agreement)."""
    model = MLPClassifier(16, 4, hidden=())
    with torch.no_grad():
        model.body[0].weight.copy_(torch.eye(4, 16) * 3)
        model.body[0].bias.zero_()
    x = torch.rand(400, 16, generator=torch.Generator().manual_seed(0))
    return model.eval(), x, x[:, :4].argmax(1)


def test_ptq_gate_warns_when_binary_ptq_collapses(caplog):
    model, x, y = collapsing_model()
    with caplog.at_level(logging.WARNING, logger="qwave.ptq"):
        packed = ptq(model, "1", x, calib_labels=y)
    report = packed.ptq_report
    assert report["agreement"] < 0.5 and not report["passed"]
    assert report["accuracy_float"] == 1.0 and report["accuracy_drop"] == pytest.approx(1 - report["accuracy_packed"])
    message = caplog.records[-1].getMessage()
    assert "binary" in message and f"{report['agreement']:.1%}" in message and "QAT" in message


def test_ptq_gate_strict_raises_and_a_good_ptq_passes_silently(caplog):
    model, x, y = collapsing_model()
    with pytest.raises(FormatError, match="agreement"):
        ptq(model, "1", x, calib_labels=y, strict=True)
    with caplog.at_level(logging.WARNING, logger="qwave.ptq"):
        packed = ptq(model, "8", x, calib_labels=y, strict=True)
    assert packed.ptq_report["passed"] and packed.ptq_report["agreement"] >= 0.9 and not caplog.records
