"""The fused whole-model path gives the per-layer path's logits bit for bit and records its kernels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qwave import kernels
from qwave.eval.speed import packed_reference
from qwave.kernels.fused import compile_model
from qwave.nn.mlp import MLPClassifier

pytestmark = pytest.mark.skipif(not kernels.FAST_KERNELS, reason=f"fast kernels unavailable: {kernels.REASON}")


@pytest.fixture(scope="module")
def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return MLPClassifier(77, 5, hidden=(33, 17), dropout=0.1).eval()


@pytest.mark.parametrize("fmt", ["int8", "binary", "qesc", "int4", "fp16"])
@pytest.mark.parametrize("batch", [1, 9])
def test_fused_equals_per_layer_path(small_mlp, fmt, batch):
    model = packed_reference(small_mlp, fmt)
    fused = compile_model(model)
    assert fused is not None
    x = torch.randn(batch, 77)
    with torch.inference_mode():
        assert torch.equal(fused(x), model(x))
    assert all(name.endswith("+fused") for name in fused.kernel_names)


def test_fused_refuses_layer_norm():
    torch.manual_seed(0)
    model = packed_reference(MLPClassifier(20, 3, hidden=(8,), layer_norm=True).eval(), "int8")
    assert compile_model(model) is None
