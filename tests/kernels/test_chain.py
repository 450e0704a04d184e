"""The whole-chain entry points (``wa8.chain_layers``, ``popcount.chain_layers``, ``half.chain_layers``) give the
per-layer ``run_np`` outputs bit for bit, layer after layer, on both variants: mixed formats of one family, every
activation code, odd widths, batch 1, odd batches and the threaded sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qwave import kernels
from qwave.formats import get_format

from .brute import variants

pytestmark = pytest.mark.skipif(not kernels.FAST_KERNELS, reason=f"fast kernels unavailable: {kernels.REASON}")

WIDTHS = (77, 33, 17, 5)  # in, two hidden widths, out: none a multiple of a tile
ACTS = (kernels.HARDTANH, kernels.RELU, kernels.NO_ACTIVATION)  # the last layer gets none


def _layers(formats: list[str], prepare, isa: str) -> list[tuple]:
    gen = torch.Generator().manual_seed(len(formats))
    layers = []
    for i, name in enumerate(formats):
        fmt = get_format(name)
        shape = (WIDTHS[i + 1], WIDTHS[i])
        packed = fmt.pack(fmt.quantize(torch.randn(shape, generator=gen)))
        bias = torch.randn(shape[0], generator=gen).numpy()
        layers.append((prepare(fmt, packed, shape, isa), bias, ACTS[i] if i < len(formats) - 1 else ACTS[-1]))
    return layers


def _layer_by_layer(run_np, layers, x: np.ndarray) -> np.ndarray:
    for state, bias, act in layers:
        x = run_np(state, x, bias, act)
    return x


@pytest.mark.parametrize("isa", variants())
@pytest.mark.parametrize("formats", [["int8", "int4", "ternary"], ["int2", "int8", "int3"]])
@pytest.mark.parametrize("batch", [1, 7, 301])
def test_wa8_chain_equals_linear_np_layer_after_layer(isa, formats, batch):
    from qwave.kernels import int8, lowbit, wa8

    def prepare(fmt, packed, shape, isa):
        return (int8 if fmt.name in int8.FORMATS else lowbit).prepare(fmt, packed, shape, isa)

    layers = _layers(formats, prepare, isa)
    x = np.random.default_rng(batch).standard_normal((batch, WIDTHS[0])).astype(np.float32) * 3
    got = wa8.chain_layers(layers)(x)
    assert np.array_equal(got, _layer_by_layer(wa8.linear_np, layers, x))


@pytest.mark.parametrize("isa", ["avx512" if isa == "avx512vnni" else isa for isa in variants()])
@pytest.mark.parametrize("formats", [["binary", "qesc", "binary"], ["qesc", "qesc", "binary"]])
@pytest.mark.parametrize("batch", [1, 7, 301])
def test_popcount_chain_equals_run_np_layer_after_layer(isa, formats, batch):
    from qwave.kernels import popcount

    prepares = {"binary": (popcount.prepare_binary, popcount.binary_np), "qesc": (popcount.prepare_qesc,
                                                                                  popcount.qesc_np)}
    layers = _layers(formats, lambda fmt, packed, shape, isa: prepares[fmt.name][0](fmt, packed, shape, isa), isa)
    x = np.random.default_rng(batch).standard_normal((batch, WIDTHS[0])).astype(np.float32) * 3
    want = x
    for (state, bias, act), name in zip(layers, formats, strict=True):
        want = prepares[name][1](state, want, bias, act)
    assert np.array_equal(popcount.chain_layers(layers)(x), want)


@pytest.mark.parametrize("isa", ["avx512" if isa == "avx512vnni" else isa for isa in variants()])
@pytest.mark.parametrize("batch", [1, 5, 7, 301])
def test_half_chain_equals_linear_np_layer_after_layer(isa, batch):
    from qwave.kernels import half

    layers = _layers(["fp16", "bf16", "fp16"], lambda fmt, packed, shape, isa: half.prepare_weight(
        packed["weight"], isa), isa)
    x = np.random.default_rng(batch).standard_normal((batch, WIDTHS[0])).astype(np.float32) * 3
    assert np.array_equal(half.chain_layers(layers)(x), _layer_by_layer(half.linear_np, layers, x))


def test_chains_take_any_depth_keep_their_arrays_alive_and_refuse_mixed_variants():
    import gc

    from qwave.kernels import int8, wa8

    isa = variants()[-1]
    layers = _layers(["int8"], int8.prepare, isa)
    state, bias, _ = layers[0]
    square = [(state, bias, kernels.RELU)]  # 77 -> 33 is not square: a deep chain of one 33 x 33 layer instead
    fmt = get_format("int8")
    w = torch.randn(33, 33, generator=torch.Generator().manual_seed(5))
    deep = [(int8.prepare(fmt, fmt.pack(fmt.quantize(w)), (33, 33), isa), torch.randn(33).numpy(), kernels.RELU)
            for _ in range(9)]
    x = np.random.default_rng(0).standard_normal((3, 77)).astype(np.float32)
    want = _layer_by_layer(wa8.linear_np, square + deep, x)
    run = wa8.chain_layers(square + deep)
    del layers, state, bias, square, deep, w  # the chain's table points into these arrays: it must hold them
    gc.collect()
    assert np.array_equal(run(x), want)
    if "avx512vnni" in variants():
        mixed = _layers(["int8"], int8.prepare, "avx2") + _layers(["int8"], int8.prepare, "avx512vnni")
        assert wa8.chain_layers(mixed) is None


def test_address_table_refuses_a_strided_array_and_records_address_and_shape():
    from qwave.kernels.table import SLOT, address_table

    a, b = np.zeros((4, 6), np.uint8), np.arange(5, dtype=np.float32)
    t = address_table([(a, b)], [(7, 8)])
    assert t.table.tolist() == [[a.ctypes.data, 4, 6, 1, b.ctypes.data, 5, 1, 1, 7, 8]] and SLOT == 4
    assert t.arrays[0] is a and t.arrays[1] is b
    with pytest.raises(ValueError, match="C-contiguous"):
        address_table([(a[:, ::2],)], [()])
    with pytest.raises(ValueError, match="1 to 3 dimensions"):
        address_table([(np.zeros((1, 1, 1, 1)),)], [()])
