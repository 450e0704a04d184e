"""The binary and qesc popcount kernels (both variants) against brute-force int64 dot products of the signs /
trits, and against each format's reference recipe (float outputs to float32 rounding: see the module docstring)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qwave import kernels
from qwave.formats import get_format

from .brute import ACTS, int_dots, variants

pytestmark = pytest.mark.skipif(not kernels.FAST_KERNELS, reason=f"fast kernels unavailable: {kernels.REASON}")

# in_features off multiples of 64, exactly 64, a single input, and more words (70) than the AVX2 variant adds in
# bytes before widening (31)
SHAPES = [(7, 77), (5, 64), (13, 130), (3, 1), (20, 64 * 70 + 5)]
BATCHES = [1, 5, 300]


def _isas() -> list[str]:
    return ["avx512" if isa == "avx512vnni" else isa for isa in variants()]


def _case(name: str, shape: tuple[int, int], batch: int):
    fmt = get_format(name)
    gen = torch.Generator().manual_seed(shape[0] + batch)
    w, x = torch.randn(shape, generator=gen), torch.randn(batch, shape[1], generator=gen)
    x[0, : shape[1] // 2] = 0.0  # zeros: sign +1 for binary, trit 0 for qesc
    return fmt, fmt.pack(fmt.quantize(w)), x


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", BATCHES)
def test_binary_integer_dots_equal_brute_force(isa, shape, batch):
    from qwave.kernels import popcount

    fmt, packed, x = _case("binary", shape, batch)
    state = popcount.prepare_binary(fmt, packed, shape, isa)
    bits, _ = popcount.pack_signs(x.numpy(), batch > 100)
    out = np.empty((batch, shape[0]), np.float32)
    popcount.BINARY_GEMM[isa](bits, np.ones(batch, np.float32), state.planes[0], np.ones(shape[0], np.float32),
                              shape[1], np.empty(0, np.float32), 0, out, batch > 100)
    signs = np.where(x.numpy() >= 0, 1, -1)
    assert np.array_equal(out, int_dots(signs, fmt.unpack(packed, shape).codes.numpy()).astype(np.float32))


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", BATCHES)
def test_qesc_integer_dots_equal_brute_force(isa, shape, batch):
    from qwave.kernels import popcount

    fmt, packed, x = _case("qesc", shape, batch)
    state = popcount.prepare_qesc(fmt, packed, shape, isa)
    nonzero, negative, scale = popcount.pack_trits(x.numpy(), batch > 100)
    out = np.empty((batch, shape[0]), np.float32)
    popcount.QESC_GEMM[isa](nonzero, negative, np.ones(batch, np.float32), *state.planes,
                            np.ones(shape[0], np.float32), np.empty(0, np.float32), 0, out, batch > 100)
    s = scale[:, None]
    trits = np.where(s > 0, np.clip(np.rint(x.numpy() / np.where(s > 0, s, 1)), -1, 1), 0).astype(np.int64)
    assert np.array_equal(out, int_dots(trits, fmt.unpack(packed, shape).codes.numpy()).astype(np.float32))


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("name", ["binary", "qesc"])
@pytest.mark.parametrize("shape", SHAPES[:4])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("act", ["relu", "hardtanh"])
def test_popcount_kernels_match_the_format_recipe(isa, name, shape, batch, act):
    from qwave.kernels import popcount

    fmt, packed, x = _case(name, shape, batch)
    prepare, run = ((popcount.prepare_binary, popcount.binary_np) if name == "binary" else
                    (popcount.prepare_qesc, popcount.qesc_np))
    bias = torch.randn(shape[0])
    got = run(prepare(fmt, packed, shape, isa), x.numpy(), bias.numpy(), ACTS[act])
    y = fmt.matmul(x, packed, shape) + bias
    want = torch.relu(y) if act == "relu" else torch.clamp(y, -1.0, 1.0)
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-5, atol=1e-6)


def test_qesc_trits_at_the_rounding_boundaries_equal_rint():
    """Quotients exactly at +-0.5 and +-1.5 (``rint`` rounds half to even: 0 and +-2, clamped to +-1), one float32
    step either side of +-0.5, zeros, in the vector body (64 per word) and in the tail of a row."""
    from qwave.kernels import popcount

    near = [0.5, -0.5, 1.5, -1.5, np.nextafter(np.float32(0.5), np.float32(1)),
            -np.nextafter(np.float32(0.5), np.float32(1)), np.nextafter(np.float32(0.5), np.float32(0)),
            -np.nextafter(np.float32(0.5), np.float32(0)), 0.0, -0.0, 1.0, -1.0]
    row = np.resize(np.array(near, np.float32), 64 * 3 + 20)
    row = np.roll(row, 5)
    row[-1] = np.float32(row.shape[0]) - (np.abs(row[:-1]).astype(np.float64).sum())  # mean |x| = 1 exactly
    x = np.stack([row, -row, row[::-1].copy()])
    nonzero, negative, scale = popcount.pack_trits(x, False)
    assert np.all(scale == 1.0)
    trits = np.clip(np.rint(x), -1, 1)
    bits = np.arange(64, dtype=np.uint64)
    for plane, want in ((nonzero, trits != 0), (negative, trits < 0)):
        got = (plane[:, :, None] >> bits) & np.uint64(1)
        assert np.array_equal(got.reshape(3, -1)[:, : row.shape[0]].astype(bool), want)
