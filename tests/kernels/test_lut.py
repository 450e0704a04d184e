"""The table-lookup kernel for 2-bit weights (``lut``) against a brute-force int64 reference, on both variants (the
folder runs again with numba targeting an AVX2-only CPU): odd shapes, K not a multiple of a step or of an int16
block, extreme codes, batches below and above ``LUT_ROWS``; and the formats it serves against their recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qwave import kernels
from qwave.formats import get_format

from .brute import ACTS, wa8

pytestmark = pytest.mark.skipif(not kernels.FAST_KERNELS, reason=f"fast kernels unavailable: {kernels.REASON}")

# (out, in, batch): 1 and 2 rows run the tables, 3 and 9 the wa8 tiles; 1031 and 2100 inputs cross int16 blocks
CASES = [(7, 77, 1), (13, 130, 2), (70, 301, 1), (65, 64, 2), (3, 1, 1), (64, 8, 1), (129, 1031, 2),
         (50, 2100, 1), (37, 301, 3), (5, 1000, 9)]
MAPS = [(1, 2), (2, 3), (1, 1)]  # (alpha, beta): int2 symmetric, int2 half-step, ternary


def _state(u: np.ndarray, scale: np.ndarray, alpha: int, beta: int):
    from qwave.kernels import lowbit, lut

    out, n = u.shape
    wide = lowbit.prepare_unsigned(u, torch.from_numpy(scale).half(), (out, n), None, 2, alpha, beta, "avx2")
    return lut.with_tables(wide, u.astype(np.uint8))


@pytest.mark.parametrize(("alpha", "beta"), MAPS)
@pytest.mark.parametrize(("out", "n", "batch"), CASES)
def test_lut_kernel_equals_brute_force_integer_reference(alpha, beta, out, n, batch):
    from qwave.kernels import lut

    rng = np.random.default_rng(out * 1000 + n + beta)
    u = rng.integers(0, 4 if beta != 1 else 3, (out, n))
    u[0, :] = 3  # extreme codes: every table entry at its largest on one column
    u[-1, ::2] = 0
    scale = rng.uniform(0.01, 2.0, (out, 1)).astype(np.float16).astype(np.float32)
    x = rng.standard_normal((batch, n)).astype(np.float32)
    x[0, :] = 127.0  # activation codes all 127 on one row (the int16 blocks at their bound), all 0 on another
    x[-1, :] = -1.0
    bias = rng.standard_normal(out).astype(np.float32)
    act = "hardtanh" if batch % 2 else "relu"
    got = lut.linear_np(_state(u, scale, alpha, beta), x, bias, ACTS[act])
    assert np.array_equal(got, wa8(x, alpha * u - beta, scale, None, bias, act=act))


def test_lut_long_rows_of_largest_codes_stay_exact_across_blocks():
    from qwave.kernels import lut

    n = 3 * lut.BLOCK_STEPS * lut.STEP + 5  # three int16 blocks and a partial step
    u = np.full((67, n), 3)
    u[1, ::3] = 0
    x = np.full((2, n), 127.0, dtype=np.float32)
    x[1, ::2] = -127.0
    scale = np.ones((67, 1), np.float32)
    got = lut.linear_np(_state(u, scale, 2, 3), x, np.empty(0, np.float32), 0)
    assert np.array_equal(got, wa8(x, 2 * u - 3, scale, None))


def test_a_zero_row_gives_the_bias():
    from qwave.kernels import lut

    u = np.random.default_rng(0).integers(0, 3, (9, 40))
    bias = np.arange(9, dtype=np.float32)
    got = lut.linear_np(_state(u, np.ones((9, 1), np.float32), 1, 1), np.zeros((1, 40), np.float32), bias, 0)
    assert np.array_equal(got, bias[None, :])


FORMATS = [("int2", {}), ("int2", {"grid": "symmetric"}), ("ternary", {})]


@pytest.mark.parametrize(("name", "options"), FORMATS)
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_lut_formats_equal_their_reference_recipe_and_unprepare_inverts(name, options, batch):
    from qwave.kernels import lowbit, lut

    fmt = get_format(name, **options)
    gen = torch.Generator().manual_seed(batch)
    w, x = torch.randn(37, 301, generator=gen), torch.randn(batch, 301, generator=gen)
    packed = fmt.pack(fmt.quantize(w))
    state = lut.prepare(fmt, packed, (37, 301))
    got = lut.linear_np(state, x.numpy(), np.empty(0, np.float32), 0)
    assert torch.equal(torch.from_numpy(got), fmt.matmul(x, packed, (37, 301)))
    restored = lowbit.unprepare(fmt, state)
    assert list(restored) == list(packed) and all(torch.equal(restored[k], packed[k]) for k in packed)


@pytest.mark.parametrize("batch", [1, 2, 7])
@pytest.mark.parametrize("formats", [["ternary", "int2", "ternary"], ["int8", "ternary", "int4"]])
def test_wa8_chains_with_table_layers_equal_run_np_layer_after_layer(batch, formats):
    """All-table chains run the tables up to ``LUT_ROWS`` rows, mixed W·A8 chains run ``wa8`` on every layer (one
    compiled call either way); both equal the layers' own ``run_np`` one after the other."""
    from qwave.kernels import int8, lowbit, lut, wa8

    gen = torch.Generator().manual_seed(batch)
    widths, acts = (77, 33, 17, 5), (kernels.HARDTANH, kernels.RELU, kernels.NO_ACTIVATION)
    layers, runs = [], []
    for i, name in enumerate(formats):
        fmt, shape = get_format(name), (widths[i + 1], widths[i])
        packed = fmt.pack(fmt.quantize(torch.randn(shape, generator=gen)))
        module = lut if name in lut.FORMATS else (int8 if name in int8.FORMATS else lowbit)
        state = lut.prepare(fmt, packed, shape) if module is lut else module.prepare(fmt, packed, shape, "avx2")
        layers.append((state, torch.randn(shape[0], generator=gen).numpy(), acts[i]))
        runs.append(lut.linear_np if module is lut else wa8.linear_np)
    x = np.random.default_rng(batch).standard_normal((batch, widths[0])).astype(np.float32) * 3
    want = x
    for (state, bias, act), run in zip(layers, runs, strict=True):
        want = run(state, want, bias, act)
    assert np.array_equal(wa8.chain_layers(layers)(x), want)


@pytest.mark.parametrize("name", ["int2", "ternary"])
def test_the_tables_serve_one_group_formats_on_avx2_only_cpus(name):
    from qwave.kernels import int8

    expected = "lut2-a8-numba-avx2" if int8.ISA == "avx2" else f"lowbit-a8-numba-{int8.ISA}"
    assert kernels.kernel_for(get_format(name), "cpu").name == expected
    if name == "int2":  # grouped weights: the register-unpacking kernel
        assert kernels.kernel_for(get_format(name, group_size=32), "cpu").name.startswith("lowbit-a8")


@pytest.mark.parametrize(("formats", "batch", "tables"), [
    (["ternary", "int2"], 1, True), (["ternary", "int2"], 3, False), (["int4", "ternary"], 1, False),
    (["ternary"] * 5, 2, False)])  # deeper than CHAIN_DEPTH: wa8
def test_the_chain_runs_the_tables_only_for_all_table_layers_and_few_rows(monkeypatch, formats, batch, tables):
    from qwave.kernels import lowbit, lut, wa8

    calls = []
    real = lut._chain
    monkeypatch.setattr(lut, "_chain", lambda *args: calls.append(1) or real(*args))
    layers, widths = [], [20] + [9] * (len(formats) - 1) + [4]
    for name, shape in zip(formats, zip(widths[1:], widths[:-1], strict=True), strict=True):
        fmt = get_format(name)
        packed = fmt.pack(fmt.quantize(torch.randn(shape, generator=torch.Generator().manual_seed(shape[0]))))
        state = lut.prepare(fmt, packed, shape) if name in lut.FORMATS else lowbit.prepare(fmt, packed, shape, "avx2")
        layers.append((state, np.zeros(shape[0], np.float32), kernels.RELU))
    x = np.ones((batch, 20), np.float32)
    want = x
    for state, bias, act in layers:
        want = (lut.linear_np if isinstance(state, lut.LutWeights) else wa8.linear_np)(state, want, bias, act)
    assert np.array_equal(wa8.chain_layers(layers)(x), want)
    assert bool(calls) == tables
