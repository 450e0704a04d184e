"""The whole-chain entry points (``wa8.chain_layers``, ``popcount.chain_layers``) give the per-layer ``run_np``
outputs bit for bit, layer after layer, on both variants: mixed formats of one family, every activation code,
odd widths, batch 1, odd batches and the threaded sizes."""

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


def test_chains_refuse_more_layers_than_one_call_takes_and_mixed_variants():
    from qwave.kernels import int8, wa8

    layers = _layers(["int8"], int8.prepare, "avx2")
    assert wa8.chain_layers(layers * (wa8.CHAIN_LAYERS + 1)) is None
    if "avx512vnni" in variants():
        assert wa8.chain_layers(layers + _layers(["int8"], int8.prepare, "avx512vnni")) is None
