"""The kernel registry, and the popcount and weight-only kernels against their slow references (the format's
``matmul``) on odd shapes, batch 1 included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qwave import kernels
from qwave.formats import get_format

pytestmark = pytest.mark.skipif(not kernels.FAST_KERNELS, reason=f"fast kernels unavailable: {kernels.REASON}")

SHAPES = [(7, 77), (5, 64), (13, 130), (3, 1)]  # in_features off multiples of 8/32/64, exactly 64, a single input
BATCHES = [1, 6]


def _case(name: str, shape: tuple[int, int], batch: int, seed: int = 0, **options):
    fmt = get_format(name, **options)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen)
    x = torch.randn(batch, shape[1], generator=gen)
    packed = fmt.pack(fmt.quantize(w))
    kernel = kernels.kernel_for(fmt, "cpu")
    assert kernel is not None, f"no CPU kernel for {name}"
    return fmt, packed, x, kernel, kernel.prepare(fmt, packed, shape)


@pytest.mark.parametrize("name", ["binary", "qesc"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", [1, 6, 300])
def test_popcount_kernels_match_reference(name, shape, batch):
    fmt, packed, x, kernel, state = _case(name, shape, batch)
    torch.testing.assert_close(kernel.run(state, x), fmt.matmul(x, packed, shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_binary_integer_dots_equal_brute_force(shape):
    from qwave.kernels import popcount

    fmt, packed, x, _, state = _case("binary", shape, 5)
    bits, _ = popcount.pack_signs(x.numpy(), False)
    out = np.empty((5, shape[0]), np.float32)
    ones = np.ones(5, np.float32)
    popcount.binary_gemm(bits, ones, state.planes[0], np.ones(shape[0], np.float32), shape[1], np.empty(0, np.float32),
                         False, out, False)
    signs = torch.where(x >= 0, 1, -1).long()
    w_signs = fmt.unpack(packed, shape).codes.long()
    assert np.array_equal(out, (signs @ w_signs.T).float().numpy())


@pytest.mark.parametrize("shape", SHAPES)
def test_qesc_integer_dots_equal_brute_force(shape):
    from qwave.kernels import popcount

    fmt, packed, x, _, state = _case("qesc", shape, 5)
    plus, minus, scale = popcount.pack_trits(x.numpy(), False)
    out = np.empty((5, shape[0]), np.float32)
    popcount.qesc_gemm(plus, minus, np.ones(5, np.float32), *state.planes, np.ones(shape[0], np.float32),
                       np.empty(0, np.float32), False, out, False)
    s = torch.from_numpy(scale).unsqueeze(1)
    trits = torch.where(s > 0, (x / s).round().clamp(-1, 1), torch.zeros_like(x)).long()
    w_trits = fmt.unpack(packed, shape).codes.long()
    assert np.array_equal(out, (trits @ w_trits.T).float().numpy())


@pytest.mark.parametrize("name", ["fp32", "fp16", "bf16", "int4", "int2", "ternary"])
def test_weight_only_kernels_equal_reference(name):
    options = {} if name.startswith(("fp", "bf")) else {"activations": "float"}
    fmt, packed, x, kernel, state = _case(name, (7, 77), 3, **options)
    assert torch.equal(kernel.run(state, x), fmt.matmul(x, packed, (7, 77)))
    assert kernel.cached_bytes(state) == (0 if name == "fp32" else 7 * 77 * 4)


def test_switching_fast_kernels_off_returns_no_kernel():
    fmt = get_format("int8")
    previous = kernels.set_fast_kernels(False)
    try:
        assert kernels.kernel_for(fmt, "cpu") is None
        assert kernels.status()["fast_kernels"] is False
    finally:
        kernels.set_fast_kernels(previous)
    assert kernels.kernel_for(fmt, "cpu") is not None
