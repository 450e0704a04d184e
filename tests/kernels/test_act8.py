"""The kernels' activation quantizer (``qwave.kernels.act8.quantize_rows``) against the format's torch recipe
(``qwave.formats.base.quantize_rows_int8``): codes, zero points, scales and per-group code sums, with each group's
padding zero, for mixed, one-signed, all-zero and huge-range rows, serial and parallel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qwave import kernels
from qwave.formats.base import quantize_rows_int8

pytestmark = pytest.mark.skipif(not kernels.FAST_KERNELS, reason=f"fast kernels unavailable: {kernels.REASON}")


def _rows(m: int, n: int) -> np.ndarray:
    x = np.random.default_rng(m * 1000 + n).standard_normal((m, n)).astype(np.float32) * 3
    x[0] = 0.0  # scale 0: all codes 0
    x[1] = np.abs(x[1])  # after a ReLU: zero point 0
    x[2] = -np.abs(x[2])  # all negative: zero point 127
    x[3, ::2] *= 1e6  # a huge range: most codes collapse onto the zero point
    return x


@pytest.mark.parametrize(("n", "group_size", "padded"), [(77, 77, 80), (300, 64, 64), (61, 16, 24), (1536, 1536, 1536)])
@pytest.mark.parametrize("parallel", [False, True])
def test_quantize_rows_equals_the_torch_recipe_with_zero_padding(n, group_size, padded, parallel):
    from qwave.kernels.act8 import quantize_rows

    m, groups = 37, -(-n // group_size)
    x = _rows(m, n)
    for _ in range(2):  # the second call may get the first call's freed (non-zero) memory
        a, scale, zero, sums = quantize_rows(x, group_size, groups, padded, parallel)
    codes, want_zero, want_scale = quantize_rows_int8(torch.from_numpy(x))
    assert np.array_equal(scale, want_scale.flatten().numpy()) and np.array_equal(zero, want_zero.flatten().numpy())
    blocks = a.reshape(m, groups, padded).astype(np.int64)
    for g in range(groups):
        width = min(n, (g + 1) * group_size) - g * group_size
        want = codes[:, g * group_size : g * group_size + width].numpy().astype(np.int64)
        assert np.array_equal(blocks[:, g, :width], want)
        assert not blocks[:, g, width:].any()
        assert np.array_equal(sums[:, g], want.sum(axis=1))
