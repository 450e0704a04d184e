"""The fp16 / bf16 kernel (both variants) against a float64 reference on the stored 16-bit values.

The kernel sums in float32 with fused multiply-adds in input order; the bound used is the classic one for a
float32 dot product of length n: ``|error| <= n * 2^-24 * sum_k |x_k w_k|`` (plus the bias add's rounding).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qwave import kernels
from qwave.formats import get_format

from .brute import ACTS, variants

pytestmark = pytest.mark.skipif(not kernels.FAST_KERNELS, reason=f"fast kernels unavailable: {kernels.REASON}")

# (out, in, batch): batches under 6 rows (converted in registers, 4 column tiles at a time, a short group: 90
# outputs are 6 avx2 tiles, 3 avx512 ones), K off every tile and K-block multiple (600 = 256 + 256 + 88 for avx2,
# 4 x 128 + 88 for avx512), row chunks of 66 ending in 1 row (133) and in 2 rows (200, a short 6-row tile), the
# parallel path (300 and 200 rows, and 5 rows x 700 outputs, are past ``half.PARALLEL_MACS``), a single input.
CASES = [(7, 77, 1), (13, 130, 6), (70, 301, 13), (37, 301, 300), (3, 1, 2), (33, 64, 7), (41, 600, 133),
         (70, 600, 200), (50, 320, 1), (90, 300, 5), (700, 600, 5)]


def _half_isas() -> list[str]:
    return ["avx512" if isa == "avx512vnni" else isa for isa in variants()]


@pytest.mark.parametrize("isa", _half_isas())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("out", "n", "batch"), CASES)
@pytest.mark.parametrize("act", ["relu", "hardtanh"])
def test_half_kernel_matches_float64_products_of_the_stored_values(isa, dtype, out, n, batch, act):
    from qwave.kernels import half

    gen = torch.Generator().manual_seed(out + n)
    w = torch.randn(out, n, generator=gen).to(dtype)
    w[0, 0] = 65504.0 if dtype == torch.float16 else 1e30  # beyond fp16's range for bf16; subnormals below
    w[-1, -1] = 6e-8 if dtype == torch.float16 else 1e-39
    x = torch.randn(batch, n, generator=gen).numpy()
    bias = torch.randn(out, generator=gen).numpy()
    got = half.linear_np(half.prepare_weight(w, isa), x, bias, ACTS[act])
    exact = x.astype(np.float64) @ w.double().numpy().T + bias
    bound = n * 2.0**-24 * (np.abs(x).astype(np.float64) @ np.abs(w.double().numpy()).T) + 2.0**-23 * np.abs(exact)
    want = np.maximum(exact, 0) if act == "relu" else np.clip(exact, -1, 1)  # both 1-Lipschitz: the bound holds
    assert np.all(np.abs(got - want) <= bound + 1e-30)


@pytest.mark.parametrize("isa", _half_isas())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_kernel_gives_each_row_the_same_bits_in_any_batch(isa, dtype):
    """Every row is summed in input order whatever tile, chunk or thread it falls in: a batch (parallel, with short
    tiles and a one-row tail) gives each row the bits it gets alone."""
    from qwave.kernels import half

    gen = torch.Generator().manual_seed(3)
    w = half.prepare_weight(torch.randn(70, 600, generator=gen).to(dtype), isa)
    x = torch.randn(133, 600, generator=gen).numpy()
    bias = torch.randn(70, generator=gen).numpy()
    batch = half.linear_np(w, x, bias, ACTS["relu"])
    alone = np.concatenate([half.linear_np(w, x[i : i + 1], bias, ACTS["relu"]) for i in range(x.shape[0])])
    assert np.array_equal(batch.view(np.uint32), alone.view(np.uint32))


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_half_formats_run_the_in_kernel_conversion_and_hold_only_16_bit_weights(name):
    from qwave.kernels import half

    fmt = get_format(name)
    gen = torch.Generator().manual_seed(7)
    packed = fmt.pack(fmt.quantize(torch.randn(37, 301, generator=gen)))
    kernel = kernels.kernel_for(fmt, "cpu")
    assert kernel.name.startswith("half-numba")
    state = kernel.prepare(fmt, packed, (37, 301))
    tile = half.TILES[half.ISA]
    assert kernel.cached_bytes(state) == 2 * 301 * math.ceil(37 / tile) * tile
    x = torch.randn(5, 301, generator=gen)
    # two float32 sums of 301 products in different orders: each within n * 2^-24 * sum|x w| of the exact one
    w = fmt.dequantize(fmt.unpack(packed, (37, 301))).double()
    bound = 2 * 301 * 2.0**-24 * (x.double().abs() @ w.abs().T)
    assert torch.all((kernel.run(state, x).double() - fmt.matmul(x, packed, (37, 301)).double()).abs() <= bound)
