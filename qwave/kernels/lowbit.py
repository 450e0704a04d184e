"""Low-bit weights x int8 activations (W4A8, W2A8, W1.58A8) with the weights unpacked in registers: the formats whose
codes fit 4 bits (int3, int4) or 2 bits (int2, ternary), as unsigned codes ``u`` with ``code = alpha * u - beta``,
run by the shared W·A8 machinery of ``wa8`` (``bits = 4`` or ``2``; layouts and bounds there). Bit for bit the
format's reference recipe; both variants (``avx2``: ``vpmaddubsw`` with int16 accumulation; ``avx512vnni``:
``vpdpbusd``).
"""

from __future__ import annotations

import numpy as np
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

FORMATS = ("int4", "int3", "int2", "ternary")  # unsigned codes of 2 bits (int2, ternary) or 4 bits (int3, int4)
STEP = {("avx2", 4): 4, ("avx2", 2): 8, ("avx512vnni", 4): 4, ("avx512vnni", 2): 4}  # group padding (inputs)


def pack_fields(u: np.ndarray, bits: int, isa: str) -> np.ndarray:
    """``[tiles, groups, steps, tile, 4]`` unsigned codes -> the variant's bytes (the layouts are in ``wa8``)."""
    tiles, groups, steps, tile, _ = u.shape
    u = u.astype(np.uint8)
    if isa == "avx2" and bits == 4:  # columns 8-15 into the high nibble
        halves = u.reshape(tiles, groups, steps, 2, 8, 4)
        return halves[:, :, :, 0] | (halves[:, :, :, 1] << 4)
    if isa == "avx2":  # two steps x two column halves into the four bit pairs
        quads = u.reshape(tiles, groups, steps // 2, 2, 2, 8, 4)
        return (quads[:, :, :, 0, 0] | (quads[:, :, :, 0, 1] << 2) | (quads[:, :, :, 1, 0] << 4)
                | (quads[:, :, :, 1, 1] << 6))
    if bits == 4:  # per step: [16 lo | 16 hi] twice
        parts = u.reshape(tiles, groups, steps, 2, 2, 16, 4)
        return parts[:, :, :, :, 0] | (parts[:, :, :, :, 1] << 4)
    parts = u.reshape(tiles, groups, steps, 4, 16, 4)
    return parts[:, :, :, 0] | (parts[:, :, :, 1] << 2) | (parts[:, :, :, 2] << 4) | (parts[:, :, :, 3] << 6)


def unpack_fields(codes: np.ndarray, bits: int, isa: str, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Inverse of :func:`pack_fields`: the variant's bytes -> unsigned codes ``[tiles, groups, steps, tile, 4]``
    (``shape`` is ``(tiles, groups, steps, tile)``)."""
    tiles, groups, steps, tile = shape
    if isa == "avx2" and bits == 4:  # low nibbles columns 0-7, high nibbles 8-15
        b = codes.reshape(tiles, groups, steps, 8, 4)
        u = np.stack([b & 15, b >> 4], axis=3)
    elif isa == "avx2":  # bit pairs (step 0, columns 0-7), (0, 8-15), (1, 0-7), (1, 8-15) of two steps
        b = codes.reshape(tiles, groups, steps // 2, 8, 4)
        u = np.stack([(b >> (2 * j)) & 3 for j in range(4)], axis=3)
    elif bits == 4:  # per step, twice: low nibbles 16 columns, high nibbles the next 16
        b = codes.reshape(tiles, groups, steps, 2, 16, 4)
        u = np.stack([b & 15, b >> 4], axis=4)
    else:  # bit pairs: columns 0-15, 16-31, 32-47, 48-63
        b = codes.reshape(tiles, groups, steps, 16, 4)
        u = np.stack([(b >> (2 * j)) & 3 for j in range(4)], axis=3)
    return u.reshape(tiles, groups, steps, tile, 4)


def prepare_unsigned(
    u: np.ndarray, scale: torch.Tensor, shape: tuple[int, int], group_size: int | None, bits: int,
    alpha: int, beta: int, isa: str,
) -> IntWeights:
    """Kernel state from unsigned codes ``u [out, in]`` (``0 <= u < 2^bits``, ``code = alpha * u - beta``) and fp16
    scales ``[out, groups]``. Padding inputs get ``u = 0``: their activation codes are 0 too."""
    out_features, in_features = shape
    size, groups, padded = group_layout(in_features, group_size, STEP[(isa, bits)])
    tiled = tile_rows(np.ascontiguousarray(u, dtype=np.uint8), groups, size, padded, TILES[isa])
    codes = pack_fields(tiled, bits, isa)
    signed = int(alpha) * np.asarray(u, dtype=np.int64) - int(beta)  # the codes, for their column sums
    return IntWeights(isa, bits, np.ascontiguousarray(codes.reshape(codes.shape[0], -1)),
                      tile_scales(scale, out_features, groups, TILES[isa]),
                      column_sums(signed, groups, size, TILES[isa]), int(alpha), int(beta), out_features, in_features,
                      size, padded)


def unprepare(fmt, weights: IntWeights) -> dict[str, torch.Tensor]:
    """The format's packed tensors, bit for bit, from the kernel state (the inverse of ``prepare``):
    ``code = alpha * u - beta``, packed again by the format."""
    shape = (weights.out_features, weights.in_features)
    tiled = unpack_fields(weights.codes, weights.bits, weights.isa, (weights.codes.shape[0], weights.scale.shape[0],
                                                                     weights.padded_group // 4, TILES[weights.isa]))
    u = untile_rows(tiled, shape, weights.group_size).astype(np.int16)
    codes = torch.from_numpy((weights.alpha * u - weights.beta).astype(np.int8))
    return fmt.pack(QuantizedTensor(codes, untile_scales(weights.scale, shape[0]), shape))


if FAST_KERNELS:
    from qwave.kernels.int8 import ISA
    from qwave.kernels.wa8 import register_wa8


    def prepare(fmt, packed: dict[str, torch.Tensor], shape: tuple[int, int], isa: str = ISA) -> IntWeights:
        """Kernel state of a format with ``unsigned_codes`` of at most 2 (int2, ternary) or 4 bits, variant ``isa``."""
        q = fmt.unpack(packed, shape)
        u, alpha, beta = fmt.unsigned_codes(q)
        bits = 2 if fmt.bits <= 2 else 4
        return prepare_unsigned(u.numpy(), q.scale, shape, getattr(fmt, "group_size", None), bits, alpha, beta, isa)

    KERNEL = register_wa8(f"lowbit-a8-numba-{ISA}", FORMATS, prepare, unprepare)
