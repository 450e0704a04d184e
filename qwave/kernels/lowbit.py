"""Low-bit weights x int8 activations (W4A8, W2A8, W1.58A8) with the weights unpacked in registers: the formats whose
codes fit 4 bits (int3, int4) or 2 bits (int2, ternary), as unsigned codes ``u`` with ``code = alpha * u - beta``,
run by the shared W·A8 machinery of ``wa8`` (``bits = 4`` or ``2``; layouts and bounds there). Bit for bit the
format's reference recipe; both variants (``avx2``: ``vpmaddubsw`` with int16 accumulation; ``avx512vnni``:
``vpdpbusd``).
"""

from __future__ import annotations

import numpy as np
import torch

from qwave.kernels import FAST_KERNELS, Kernel, register_kernel
from qwave.kernels.wa8 import TILES, IntWeights, group_layout, tile_rows, tile_scales

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
    return IntWeights(isa, bits, np.ascontiguousarray(codes.reshape(codes.shape[0], -1)),
                      tile_scales(scale, out_features, groups, TILES[isa]), np.empty((0, 0), np.int64), int(alpha),
                      int(beta), out_features, in_features, size, padded)


if FAST_KERNELS:
    from qwave.kernels.int8 import ISA
    from qwave.kernels.wa8 import linear_np

    _NO_BIAS = np.empty(0, dtype=np.float32)

    def prepare(fmt, packed: dict[str, torch.Tensor], shape: tuple[int, int], isa: str = ISA) -> IntWeights:
        """Kernel state of a format with ``unsigned_codes`` of at most 2 (int2, ternary) or 4 bits, variant ``isa``."""
        q = fmt.unpack(packed, shape)
        u, alpha, beta = fmt.unsigned_codes(q)
        bits = 2 if fmt.bits <= 2 else 4
        return prepare_unsigned(u.numpy(), q.scale, shape, getattr(fmt, "group_size", None), bits, alpha, beta, isa)

    KERNEL = register_kernel(
        Kernel(
            name=f"lowbit-a8-numba-{ISA}",
            formats=FORMATS,
            device="cpu",
            prepare=prepare,
            run=lambda w, x: torch.from_numpy(linear_np(w, x.detach().contiguous().numpy(), _NO_BIAS, False)),
            cached_bytes=lambda weights: weights.cached_bytes,
            supports=lambda fmt: fmt.activations == "int8",
            run_np=linear_np,
        )
    )
