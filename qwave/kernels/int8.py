"""int8 x int8 -> int32 linear layers (the ``int8`` format, and int5..int7 whose codes need a byte): dynamic per-row
int8 activations times the integer weight codes, with the shared W·A8 machinery of ``wa8`` (``bits = 8``).

Variants, picked from the CPU's features (``ISA``; numba's cache is keyed by them): ``avx512vnni`` (512-bit
``vpdpbusd``) and ``avx2`` (``vpmaddubsw`` on activation codes below 128, exact with no sign step, on Zen 3 and every
AVX2 CPU); see ``wa8``.
"""

from __future__ import annotations

import torch

from qwave.formats.base import QuantizedTensor
from qwave.kernels import FAST_KERNELS
from qwave.kernels.wa8 import (
    TILES,
    IntWeights,
    column_sums,
    group_layout,
    tile_rows,
    tile_scales,
    untile_rows,
    untile_scales,
)

FORMATS = ("int8", "int7", "int6", "int5")  # integer codes that need a byte (|code| <= 127), int8 activations


def prepare_codes(
    codes: torch.Tensor, scale: torch.Tensor, shape: tuple[int, int], group_size: int | None, isa: str
) -> IntWeights:
    """Kernel layout from integer codes ``[out, in]`` in [-128, 127] (int8, or the uint8 view of int8 codes) and
    fp16 scales ``[out, groups]``."""
    out_features, in_features = shape
    size, groups, padded = group_layout(in_features, group_size)
    w = codes.detach().cpu().contiguous().view(torch.int8).numpy()
    tiled = tile_rows(w, groups, size, padded, TILES[isa])
    return IntWeights(isa, 8, tiled.reshape(tiled.shape[0], -1), tile_scales(scale, out_features, groups, TILES[isa]),
                      column_sums(w, groups, size, TILES[isa]), 1, 0, out_features, in_features, size, padded)


def unprepare(fmt, weights: IntWeights) -> dict[str, torch.Tensor]:
    """The format's packed tensors, bit for bit, from the kernel state (the inverse of ``prepare``)."""
    shape = (weights.out_features, weights.in_features)
    tiled = weights.codes.reshape(weights.codes.shape[0], weights.scale.shape[0], weights.padded_group // 4,
                                  TILES[weights.isa], 4)
    codes = torch.from_numpy(untile_rows(tiled, shape, weights.group_size))
    return fmt.pack(QuantizedTensor(codes, untile_scales(weights.scale, shape[0]), shape))


if FAST_KERNELS:
    from qwave.kernels._simd import HAS_AVX512_VNNI
    from qwave.kernels.wa8 import register_wa8

    # numba's cache key includes the CPU's features, so this choice never goes stale in the cache.
    ISA = "avx512vnni" if HAS_AVX512_VNNI else "avx2"

    def prepare(fmt, packed: dict[str, torch.Tensor], shape: tuple[int, int], isa: str = ISA) -> IntWeights:
        """Kernel state of a format with int8-range codes and int8 activations, in variant ``isa``."""
        return prepare_codes(fmt.unpack(packed, shape).codes, packed["scale"], shape, fmt.group_size, isa)

    KERNEL = register_wa8(f"int8-numba-{ISA}", FORMATS, prepare, unprepare)
