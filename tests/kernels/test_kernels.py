"""The kernel registry, and the weight-only kernels against their slow references (the format's ``matmul``)."""

from __future__ import annotations

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


@pytest.mark.parametrize("name", ["fp32", "int4", "int2", "ternary"])
def test_weight_only_kernels_equal_reference(name):
    options = {} if name == "fp32" else {"activations": "float"}
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
