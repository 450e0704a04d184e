"""Every fast CPU kernel against its slow reference (the format's ``matmul``) on odd shapes, batch 1 included."""

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


def _int8_isas() -> list[str]:
    from qwave.kernels import int8

    return sorted({"avx2", int8.ISA})  # the AVX2 variant (Zen 3's) is always checked, plus the one this CPU picks


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("group_size", [None, 32, 50])
def test_int8_kernel_equals_reference_bit_for_bit(shape, batch, group_size):
    fmt, packed, x, kernel, state = _case("int8", shape, batch, group_size=group_size)
    assert torch.equal(kernel.run(state, x), fmt.matmul(x, packed, shape))


@pytest.mark.parametrize("isa", _int8_isas())
@pytest.mark.parametrize(("shape", "batch", "group_size"), [((7, 77), 1, None), ((13, 130), 6, 50), ((70, 301), 9, 40),
                                                           ((37, 301), 300, None), ((3, 1), 2, None)])
def test_int8_each_variant_equals_reference_bit_for_bit(isa, shape, batch, group_size):
    from qwave.kernels import int8

    fmt, packed, x, _, _ = _case("int8", shape, batch, group_size=group_size)
    x[:, 0] = 127.0  # s_x = 1 on most rows, so the codes below sit exactly on rounding ties
    x[:, 1 : min(shape[1], 40)] = (torch.arange(min(shape[1], 40) - 1) - 19).float() * 0.5
    state = int8.prepare_codes(packed["codes"], packed["scale"], shape, group_size, isa)
    bias = torch.randn(shape[0]).numpy()
    got = int8.linear_np(state, x.numpy(), bias, True)
    assert torch.equal(torch.from_numpy(got), torch.relu(fmt.matmul(x, packed, shape) + torch.from_numpy(bias)))


@pytest.mark.parametrize("isa", _int8_isas())
def test_int8_integer_accumulators_equal_brute_force(isa):
    from qwave.formats.intk import quantize_rows_int8
    from qwave.kernels import int8

    fmt, packed, x, _, _ = _case("int8", (5, 77), 3, group_size=40)
    state = int8.prepare_codes(packed["codes"], torch.ones(5, 2), (5, 77), 40, isa)
    x[:, 0] = 127.0  # s_x = 1: the outputs are the integer dot products, exact in float32 at this size
    got = int8.linear_np(state, x.numpy(), np.empty(0, np.float32), False)
    xq = quantize_rows_int8(x)[0].long()
    wq = fmt.unpack(packed, (5, 77)).codes.long()
    assert np.array_equal(got, (xq @ wq.T).float().numpy())


def test_int8_large_batch_takes_parallel_path_and_stays_exact():
    fmt, packed, x, kernel, state = _case("int8", (37, 301), 300)
    assert torch.equal(kernel.run(state, x), fmt.matmul(x, packed, (37, 301)))


def test_int8_zero_rows_give_zero_outputs():
    fmt, packed, _, kernel, state = _case("int8", (7, 77), 1)
    x = torch.zeros(2, 77)
    assert torch.equal(kernel.run(state, x), fmt.matmul(x, packed, (7, 77)))


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
    fmt, packed, x, kernel, state = _case(name, (7, 77), 3)
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
