"""The int8 kernel (both variants) against a brute-force int64 reference and the format's own recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qwave import kernels
from qwave.formats import get_format

from .brute import ACTS, int8_activations, variants, wa8

pytestmark = pytest.mark.skipif(not kernels.FAST_KERNELS, reason=f"fast kernels unavailable: {kernels.REASON}")

# (out, in, batch, group_size): K off every tile multiple, batch 1, a 4-row tile plus remainder rows, the parallel
# path (batch 300), a single input, groups that do not divide the row.
CASES = [(7, 77, 1, None), (13, 130, 6, 50), (70, 301, 9, 40), (37, 301, 300, None), (3, 1, 2, None),
         (17, 5, 5, 2), (65, 64, 4, 32)]


def _codes(out: int, n: int, rng: np.random.Generator) -> np.ndarray:
    codes = rng.integers(-127, 128, (out, n)).astype(np.int8)
    codes[0, :] = 127  # extreme codes in whole rows
    codes[-1, ::2] = -127
    return codes


def _inputs(batch: int, n: int, rng: np.random.Generator, signs: str) -> np.ndarray:
    x = rng.standard_normal((batch, n)).astype(np.float32)
    if signs == "nonneg":  # rows after a ReLU: zero point 0
        x = np.abs(x)
    elif signs == "ties":  # s_x = 1 on every row (max - min = 127), zero point 60 on even rows and 0 on odd ones,
        # codes exactly on rounding ties and at both ends 0 and 127
        x[1::2] = np.abs(x[1::2])
        mid = (np.arange(min(n, 40) - 1) - 19) * 0.5
        x[::2, 1 : min(n, 40)] = mid
        x[1::2, 1 : min(n, 40)] = mid + 10.0
        x[::2, 0], x[1::2, 0] = 67.0, 127.0
        x[::2, -1], x[1::2, -1] = -60.0, 0.0
    return x


def _prepare(codes: np.ndarray, scale: np.ndarray, group_size, isa: str):
    from qwave.kernels import int8

    return int8.prepare_codes(torch.from_numpy(codes), torch.from_numpy(scale).half(), codes.shape, group_size, isa)


@pytest.mark.parametrize("isa", variants())
@pytest.mark.parametrize(("out", "n", "batch", "group_size"), CASES)
@pytest.mark.parametrize("signs", ["mixed", "nonneg", "ties"])
@pytest.mark.parametrize("act", ["relu", "hardtanh"])
def test_int8_kernel_equals_brute_force_integer_reference(isa, out, n, batch, group_size, signs, act):
    from qwave.kernels import int8

    rng = np.random.default_rng(out * 1000 + n)
    codes = _codes(out, n, rng)
    groups = -(-n // (n if group_size is None else min(group_size, n)))
    scale = rng.uniform(0.01, 2.0, (out, groups)).astype(np.float16).astype(np.float32)
    x = _inputs(batch, n, rng, signs)
    bias = rng.standard_normal(out).astype(np.float32)
    state = _prepare(codes, scale, group_size, isa)
    got = int8.KERNEL.run_np(state, x, bias, ACTS[act])
    assert np.array_equal(got, wa8(x, codes, scale, group_size, bias, act=act))


@pytest.mark.parametrize("isa", variants())
def test_int8_kernel_outputs_are_the_integer_dots_when_scales_are_one(isa):
    from qwave.kernels import int8

    rng = np.random.default_rng(3)
    codes = _codes(5, 77, rng)
    x = _inputs(3, 77, rng, "ties")
    got = int8.KERNEL.run_np(_prepare(codes, np.ones((5, 1), np.float32), None, isa), x, np.empty(0, np.float32), 0)
    q, _ = int8_activations(x)
    assert np.array_equal(got, (q @ codes.astype(np.int64).T).astype(np.float32))


@pytest.mark.parametrize("isa", variants())
def test_int8_groups_longer_than_the_int32_bound_stay_exact(isa):
    """127 * 127 * 140,000 = 2.26e9 overflows int32 (the AVX2 path wrapped from K > 133,143, VNNI from ~66k)."""
    from qwave.kernels import int8

    n = 140_000
    codes = np.full((3, n), 127, dtype=np.int8)
    codes[1] = -127
    codes[2, ::3] = -127
    x = np.full((2, n), 127.0, dtype=np.float32)
    x[1, ::2] = -127.0
    got = int8.KERNEL.run_np(_prepare(codes, np.ones((3, 1), np.float32), None, isa), x, np.empty(0, np.float32), 0)
    q, s = int8_activations(x)
    dots = q @ codes.astype(np.int64).T
    assert np.abs(dots).max() > 2**31 and np.array_equal(got, dots.astype(np.float32) * s[:, None])


@pytest.mark.parametrize("isa", variants())
@pytest.mark.parametrize(("name", "options"), [("int8", {}), ("int8", {"group_size": 32}), ("int7", {}),
                                               ("int6", {"grid": "halfstep"}), ("int5", {})])
def test_formats_on_the_int8_kernel_equal_their_reference_recipe(isa, name, options):
    from qwave.kernels import int8

    fmt = get_format(name, **options)
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(37, 301, generator=gen), torch.randn(9, 301, generator=gen)
    packed = fmt.pack(fmt.quantize(w))
    got = int8.KERNEL.run_np(int8.prepare(fmt, packed, (37, 301), isa), x.numpy(), np.empty(0, np.float32), 0)
    assert torch.equal(torch.from_numpy(got), fmt.matmul(x, packed, (37, 301)))


def test_int8_zero_rows_give_zero_outputs():
    fmt = get_format("int8")
    packed = fmt.pack(fmt.quantize(torch.randn(7, 77)))
    kernel = kernels.kernel_for(fmt, "cpu")
    x = torch.zeros(2, 77)
    assert torch.equal(kernel.run(kernel.prepare(fmt, packed, (7, 77)), x), torch.zeros(2, 7))
