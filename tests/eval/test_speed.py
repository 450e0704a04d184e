"""The reference models, the float twin and the per-layer kernel audit (fallback warnings when fast kernels
are off)."""

from __future__ import annotations

import pytest
import torch

from qwave import kernels
from qwave.eval import speed
from qwave.nn.mlp import MLPClassifier


def _small_packed(fmt: str):
    torch.manual_seed(0)
    return speed.packed_reference(MLPClassifier(70, 4, hidden=(12,), dropout=0.0).eval(), fmt)


@pytest.mark.skipif(not kernels.FAST_KERNELS, reason="fast kernels unavailable")
def test_audit_names_the_fast_kernel_of_each_layer():
    audit = speed.layer_audit(_small_packed("int8"), torch.randn(3, 70), repeats=2)
    assert [a.path for a in audit] == ["body.0", "body.3"]
    assert all(a.kernel.startswith("int8-numba") and not a.fallback for a in audit)
    assert sum(a.time_share for a in audit) == pytest.approx(1.0)
    assert audit[0].stored_bytes == 12 * 70 + 12 * 2 + 12 * 4  # int8 codes, fp16 scales, fp32 bias


def test_audit_flags_fallback_when_fast_path_forced_off():
    model = _small_packed("binary")
    previous = kernels.set_fast_kernels(False)
    try:
        audit = speed.layer_audit(model, torch.randn(2, 70), repeats=1)
    finally:
        kernels.set_fast_kernels(previous)
    assert all(a.fallback and a.kernel == kernels.FALLBACK for a in audit)


@pytest.mark.parametrize(("fmt", "activation"), [("binary", "hardtanh"), ("qesc", "hardtanh"), ("int8", "relu"),
                                                 ("ternary", "relu")])
def test_the_deployed_reference_has_its_formats_training_activation_and_the_reference_weights(fmt, activation):
    model = speed.deployed_reference(0, fmt)
    assert speed.hidden_activation(model) == activation
    assert any(isinstance(m, torch.nn.Hardtanh if activation == "hardtanh" else torch.nn.ReLU)
               for m in model.modules())
    same_weights = speed.packed_reference(speed.reference_mlp(0), fmt).state_dict()
    assert all(torch.equal(t, same_weights[k]) for k, t in model.state_dict().items())


@pytest.mark.parametrize("fmt", ["int8", "ternary", "binary"])
def test_the_float_twin_is_the_same_network_with_float_layers_of_the_dequantized_weights(fmt):
    from qwave.formats import get_format
    from qwave.nn.packed_linear import PackedLinear

    torch.manual_seed(0)
    float_model = MLPClassifier(70, 4, hidden=(12,), dropout=0.0).eval()
    twin = speed.float_twin(speed.packed_reference(float_model, fmt))
    assert not any(isinstance(m, PackedLinear) for m in twin.modules())
    f = get_format(fmt)
    x = torch.randn(5, 70)
    h = float_model.norm(x)
    for m in float_model.body:  # the float model with every weight replaced by its quantized value
        if isinstance(m, torch.nn.Linear):
            h = h @ f.dequantize(f.quantize(m.weight.detach())).T + m.bias.detach()
        elif isinstance(m, torch.nn.ReLU):
            h = torch.relu(h)
    with torch.no_grad():
        assert torch.allclose(twin(x), h, atol=1e-5)
