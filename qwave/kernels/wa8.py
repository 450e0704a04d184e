"""Integer weights x int8 activations (W8A8, W4A8, W2A8, W1.58A8): the register tiles, blocks and parallel drivers
shared by the int8 kernel (``int8``) and the low-bit kernels (``lowbit``).

Recipe (``qwave.formats.base.int8_activation_matmul``): activations quantized per row to codes ``q`` in 0..127 with a
zero point ``z`` (``act8``), exact integer dots of ``q - z`` with the weight codes per group, ``y = s_x *
sum_g(float(dot_g) * s_w[:, g])``, bit for bit: ``dot_g = sum(q * code) - z * colsum_g`` with the weights' column sums
per group precomputed (``column_sums``, fbgemm's zero-point correction).
Every kernel state (``IntWeights``) keeps a register tile of 4 rows x ``TILES[isa]`` columns in int32 accumulators
for a whole block of inputs, with the weights laid out per column tile as ``[group, k/4, columns, 4 inputs]`` so one
vector load feeds a vector of columns and each row's activation codes are broadcast 4 at a time: no horizontal sums
(the MLAS / fbgemm u8s8 scheme). ``bits`` selects the weight codes:

* 8 (``int8``, int5..int7): the signed codes themselves (int8 bytes). ``avx2``: ``vpmaddubsw(q, w)`` + ``vpmaddwd``
  + ``vpaddd``: ``vpmaddubsw`` multiplies unsigned by signed bytes and saturates int16 pairs, and with ``q <= 127`` a
  pair is at most ``2 * 127 * 128 < 2^15``: exact with no sign step (fbgemm's ``reduce_range``).
  ``avx512vnni``: 512-bit ``vpdpbusd(q, w)``.
* 4 or 2 (int2..int4, ternary): unsigned codes ``u`` in ``[0, 2^bits)`` with ``code = alpha * u - beta`` (int4:
  ``u = code + 8``; half-step int2: ``code = 2u - 3``; ternary: ``u = t + 1``), so
  ``dot_g = alpha * sum(u * q_x) - beta * sum(q_x)``: ``u`` is the *unsigned* operand of ``vpmaddubsw`` /
  ``vpdpbusd`` against the activation codes (0..127, the signed operand), and the narrow ``u`` keeps products small
  enough to add several ``vpmaddubsw`` results in int16 before one ``vpmaddwd`` widens them (``avx2``: 8 steps of
  4 inputs for 4-bit codes, ``8 * 2 * 15 * 127 < 2^15``; 40 for 2-bit ones). The codes are unpacked in registers
  (shift and mask): ``avx2`` 4-bit, 32 bytes per step, low nibbles columns 0-7, high nibbles 8-15; 2-bit, 32 bytes
  per two steps, bit pairs 0..3 = (step 0, columns 0-7), (0, 8-15), (1, 0-7), (1, 8-15). ``avx512vnni`` 4-bit, 128
  bytes per step (low / high nibbles: columns 0-15 / 16-31, then 32-47 / 48-63); 2-bit, 64 bytes per step, bit pairs
  0..3 = columns 0-15, 16-31, 32-47, 48-63.

Bound: int32 accumulators see at most ``BLOCK`` inputs before they are added into int64 (``|q w| <= 127 * 128`` per
product: ``65536 * 127 * 128 < 2^31``), so a group of any length is exact. Calls below ``PARALLEL_MACS`` run on the
calling thread; larger ones cut row chunks x column blocks that the numba threads take one at a time
(``qwave.kernels.work``). Each kernel layout is a permutation of the codes, so the stored tensors are re-derived
from it bit for bit (``untile_rows``, ``untile_scales``: the kernels' ``unprepare``) and the layer keeps no other
copy; ``cached_bytes`` is what it holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from qwave.errors import FormatError
from qwave.kernels import FAST_KERNELS, NO_ACTIVATION, Kernel, register_kernel
from qwave.kernels.cache import variant

TILES = {"avx2": 16, "avx512vnni": 64}  # output columns per register tile
BLOCK = 1 << 16  # inputs per int32 accumulation before the int64 spill (see the bound above)
CHAIN4, CHAIN2 = 8, 40  # avx2: steps of 4 inputs summed in int16 before widening (4-bit and 2-bit codes)
ROW_CHUNK = 64  # batch rows per work item
COL_BLOCK = 64  # output columns per work item
PARALLEL_MACS = 1 << 21  # below this many multiply-adds a call stays on the calling thread (``qwave.kernels.work``;
# measured on 2 threads, forced AVX2: batch 1 and 2 of the reference MLP gain nothing from a second thread, batch 4
# of its 1536 x 640 layer does)


@dataclass
class IntWeights:
    """Weight codes in one variant's kernel layout, kept on the layer between calls."""

    isa: str  # "avx2" or "avx512vnni"
    bits: int  # 8: signed codes; 4 or 2: unsigned codes u with code = alpha * u - beta
    codes: np.ndarray  # [tiles, bytes per tile] (see the module docstring)
    scale: np.ndarray  # float32 [groups, tiles * tile] (0 on padded columns)
    column_sums: np.ndarray  # int32 [groups, tiles * tile]: sum of the (signed) codes per group and column
    alpha: int
    beta: int
    out_features: int
    in_features: int
    group_size: int
    padded_group: int  # group width padded to the layout's step (4 inputs; 8 for 2-bit codes on avx2)

    @property
    def cached_bytes(self) -> int:
        return int(self.codes.nbytes + self.scale.nbytes + self.column_sums.nbytes)


def group_layout(in_features: int, group_size: int | None, step: int = 4) -> tuple[int, int, int]:
    """``(group width, number of groups, group width padded to a multiple of step)`` as the formats group."""
    size = max(1, in_features if group_size is None else min(group_size, in_features))
    return size, math.ceil(in_features / size), math.ceil(size / step) * step


def tile_rows(codes: np.ndarray, groups: int, size: int, padded: int, tile: int) -> np.ndarray:
    """Integer codes ``[out, in]`` -> ``[tiles, groups, padded / 4, tile, 4]`` (zero padding), one tile of output
    columns per leading index: the ``[k/4][columns][4]`` layout of the dot-product kernels."""
    out, n = codes.shape
    tiles = math.ceil(out / tile)
    full = np.zeros((tiles * tile, groups * size), dtype=codes.dtype)
    full[:out, :n] = codes
    padded_w = np.zeros((tiles * tile, groups, padded), dtype=codes.dtype)
    padded_w[:, :, :size] = full.reshape(tiles * tile, groups, size)
    return np.ascontiguousarray(padded_w.reshape(tiles, tile, groups, padded // 4, 4).transpose(0, 2, 3, 1, 4))


def tile_scales(scale: torch.Tensor, out_features: int, groups: int, tile: int) -> np.ndarray:
    """fp16 scales ``[out, groups]`` -> float32 ``[groups, tiles * tile]`` (0 on padded columns)."""
    full = np.zeros((groups, math.ceil(out_features / tile) * tile), np.float32)
    full[:, :out_features] = scale.detach().cpu().float().numpy().reshape(out_features, groups).T
    return full


def column_sums(codes: np.ndarray, groups: int, size: int, tile: int) -> np.ndarray:
    """Signed integer codes ``[out, in]`` -> int32 ``[groups, tiles * tile]``: the sum of each column's codes over
    each group of ``size`` inputs (0 on padded columns), which the kernels multiply by a row's zero point (int32:
    ``|sum| <= 128 * size`` holds for groups below 2^24 inputs; longer ones are refused)."""
    out, n = codes.shape
    if size >= 1 << 24:
        raise FormatError(f"a weight group of {size} inputs is too long for the W·A8 kernels (at most {(1 << 24) - 1})")
    full = np.zeros((math.ceil(out / tile) * tile, groups * size), np.int64)
    full[:out, :n] = codes
    return np.ascontiguousarray(full.reshape(full.shape[0], groups, size).sum(axis=2).T.astype(np.int32))


def untile_rows(tiled: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """Inverse of :func:`tile_rows`: ``[tiles, groups, padded / 4, tile, 4]`` -> codes ``[out, in]`` (padding
    dropped)."""
    tiles, groups, steps, tile, _ = tiled.shape
    rows = tiled.transpose(0, 3, 1, 2, 4).reshape(tiles * tile, groups, 4 * steps)[:, :, :size]
    return np.ascontiguousarray(rows.reshape(tiles * tile, groups * size)[: shape[0], : shape[1]])


def untile_scales(scale: np.ndarray, out_features: int) -> torch.Tensor:
    """Inverse of :func:`tile_scales`: float32 ``[groups, tiles * tile]`` -> the fp16 scales ``[out, groups]``
    (exact: every fp16 value is a float32 value)."""
    return torch.from_numpy(np.ascontiguousarray(scale[:, :out_features].T)).half()


if FAST_KERNELS:
    from numba import njit, prange

    from qwave.kernels._simd import (
        activate,
        bcast4_i8x32,
        bcast4_i32x16,
        dpbusd,
        load_f32x8,
        load_i8x32,
        load_i32x8,
        load_i32x16,
        maddubs,
        shr_mask,
        splat_f32x8,
        splat_i32x8,
        store,
        to_f32,
        vadd,
        vmul,
        vsub,
        widen_pairs,
        zero_i16x16,
        zero_i32x8,
        zero_i32x16,
    )
    from qwave.kernels.act8 import emit, quantize_rows
    from qwave.kernels.table import chained, meta, view1, view2
    from qwave.kernels.work import MAX_THREADS, new_counter, take

    # ---- avx2 register tiles: 4 rows x 16 columns (8 int32x8 accumulators), and 1 row x 16 columns --------------

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _mac(acc, q, w):
        """``acc + 4-product dots`` of one broadcast activation word ``q`` (codes 0..127) and one weight vector (8
        columns)."""
        return vadd(acc, widen_pairs(maddubs(q, w)))

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _int8_4x16(qs, wf, x0, width, w0, steps):
        """Eight int32x8 accumulators: rows ``x0 + i * width`` (i < 4) x 16 columns over ``steps`` k/4 steps."""
        a00 = zero_i32x8(); a01 = zero_i32x8(); a10 = zero_i32x8(); a11 = zero_i32x8()  # noqa: E702
        a20 = zero_i32x8(); a21 = zero_i32x8(); a30 = zero_i32x8(); a31 = zero_i32x8()  # noqa: E702
        x1, x2, x3 = x0 + width, x0 + 2 * width, x0 + 3 * width
        for s in range(steps):
            wk, k = w0 + 64 * s, 4 * s
            b0, b1 = load_i8x32(wf, wk), load_i8x32(wf, wk + 32)
            q = bcast4_i8x32(qs, x0 + k)
            a00 = _mac(a00, q, b0); a01 = _mac(a01, q, b1)  # noqa: E702
            q = bcast4_i8x32(qs, x1 + k)
            a10 = _mac(a10, q, b0); a11 = _mac(a11, q, b1)  # noqa: E702
            q = bcast4_i8x32(qs, x2 + k)
            a20 = _mac(a20, q, b0); a21 = _mac(a21, q, b1)  # noqa: E702
            q = bcast4_i8x32(qs, x3 + k)
            a30 = _mac(a30, q, b0); a31 = _mac(a31, q, b1)  # noqa: E702
        return a00, a01, a10, a11, a20, a21, a30, a31

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _int8_1x16(qs, wf, x0, w0, steps):
        """One row x 16 columns, two interleaved accumulator pairs (latency hiding for batch 1)."""
        a0 = zero_i32x8(); a1 = zero_i32x8(); b0 = zero_i32x8(); b1 = zero_i32x8()  # noqa: E702
        s = 0
        while s + 1 < steps:
            wk, k = w0 + 64 * s, x0 + 4 * s
            q, v0, v1 = bcast4_i8x32(qs, k), load_i8x32(wf, wk), load_i8x32(wf, wk + 32)
            a0 = _mac(a0, q, v0); a1 = _mac(a1, q, v1)  # noqa: E702
            q, v0, v1 = bcast4_i8x32(qs, k + 4), load_i8x32(wf, wk + 64), load_i8x32(wf, wk + 96)
            b0 = _mac(b0, q, v0); b1 = _mac(b1, q, v1)  # noqa: E702
            s += 2
        if s < steps:
            wk, k = w0 + 64 * s, x0 + 4 * s
            q, v0, v1 = bcast4_i8x32(qs, k), load_i8x32(wf, wk), load_i8x32(wf, wk + 32)
            a0 = _mac(a0, q, v0); a1 = _mac(a1, q, v1)  # noqa: E702
        return vadd(a0, b0), vadd(a1, b1)

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _rows4(c, qs, x0, width, k, b0, b1):
        """Add one step (4 inputs) of 4 rows x 16 columns to the int16 chains ``c`` (8 vectors)."""
        a = bcast4_i8x32(qs, x0 + k)
        c0, c1 = vadd(c[0], maddubs(b0, a)), vadd(c[1], maddubs(b1, a))
        a = bcast4_i8x32(qs, x0 + width + k)
        c2, c3 = vadd(c[2], maddubs(b0, a)), vadd(c[3], maddubs(b1, a))
        a = bcast4_i8x32(qs, x0 + 2 * width + k)
        c4, c5 = vadd(c[4], maddubs(b0, a)), vadd(c[5], maddubs(b1, a))
        a = bcast4_i8x32(qs, x0 + 3 * width + k)
        c6, c7 = vadd(c[6], maddubs(b0, a)), vadd(c[7], maddubs(b1, a))
        return c0, c1, c2, c3, c4, c5, c6, c7

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _widen_into(acc, c):
        """``acc[8j : 8j + 8] += vpmaddwd(c[j], 1)``: the int32 sums live in memory (L1), so the register file holds
        only the int16 chains, the weight vectors and one broadcast."""
        for j in range(8):
            store(acc, 8 * j, vadd(load_i32x8(acc, 8 * j), widen_pairs(c[j])))

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _zeros8_16():
        z = zero_i16x16()
        return z, z, z, z, z, z, z, z

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _low_4x16(qs, wf, x0, width, w0, steps, bits, chain, acc):
        """``acc`` (int32 [64], zeroed) = sums ``u * q_x``: rows ``x0 + i * width`` (i < 4) x 16 columns over
        ``steps`` steps, row-major; ``chain`` steps are summed in int16 at a time (a run-time value, so the compiler
        does not unroll a whole chain and keep every step's vectors live at once)."""
        for s0 in range(0, steps, chain):
            c = _zeros8_16()
            if bits == 4:
                for s in range(s0, min(steps, s0 + chain)):
                    v = load_i8x32(wf, w0 + 32 * s)
                    c = _rows4(c, qs, x0, width, 4 * s, shr_mask(v, 0, 0x0F), shr_mask(v, 4, 0x0F))
            else:
                for s in range(s0, min(steps, s0 + chain), 2):
                    v = load_i8x32(wf, w0 + 16 * s)
                    c = _rows4(c, qs, x0, width, 4 * s, shr_mask(v, 0, 3), shr_mask(v, 2, 3))
                    c = _rows4(c, qs, x0, width, 4 * s + 4, shr_mask(v, 4, 3), shr_mask(v, 6, 3))
            _widen_into(acc, c)

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _low_1x16(qs, wf, x0, w0, steps, bits, chain):
        """Two int32x8 sums ``u * q_x``: one row x 16 columns."""
        lo, hi = zero_i32x8(), zero_i32x8()
        for s0 in range(0, steps, chain):
            c0, c1 = zero_i16x16(), zero_i16x16()
            if bits == 4:
                for s in range(s0, min(steps, s0 + chain)):
                    v, a = load_i8x32(wf, w0 + 32 * s), bcast4_i8x32(qs, x0 + 4 * s)
                    c0 = vadd(c0, maddubs(shr_mask(v, 0, 0x0F), a))
                    c1 = vadd(c1, maddubs(shr_mask(v, 4, 0x0F), a))
            else:
                for s in range(s0, min(steps, s0 + chain), 2):
                    v, a = load_i8x32(wf, w0 + 16 * s), bcast4_i8x32(qs, x0 + 4 * s)
                    b = bcast4_i8x32(qs, x0 + 4 * s + 4)
                    c0 = vadd(vadd(c0, maddubs(shr_mask(v, 0, 3), a)), maddubs(shr_mask(v, 4, 3), b))
                    c1 = vadd(vadd(c1, maddubs(shr_mask(v, 2, 3), a)), maddubs(shr_mask(v, 6, 3), b))
            lo, hi = vadd(lo, widen_pairs(c0)), vadd(hi, widen_pairs(c1))
        return lo, hi

    # ---- avx512vnni register tiles: 4 rows x 64 columns (16 int32x16 accumulators), and 1 row x 64 ----------------

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _int8_4x64(qa, wf, x0, width, w0, steps):
        """Sixteen int32x16 accumulators: rows ``x0 + i * width`` (i < 4) x 64 columns, ``vpdpbusd``."""
        a00 = zero_i32x16(); a01 = zero_i32x16(); a02 = zero_i32x16(); a03 = zero_i32x16()  # noqa: E702
        a10 = zero_i32x16(); a11 = zero_i32x16(); a12 = zero_i32x16(); a13 = zero_i32x16()  # noqa: E702
        a20 = zero_i32x16(); a21 = zero_i32x16(); a22 = zero_i32x16(); a23 = zero_i32x16()  # noqa: E702
        a30 = zero_i32x16(); a31 = zero_i32x16(); a32 = zero_i32x16(); a33 = zero_i32x16()  # noqa: E702
        x1, x2, x3 = x0 + width, x0 + 2 * width, x0 + 3 * width
        for s in range(steps):
            wk, k = w0 + 256 * s, 4 * s
            b0, b1 = load_i32x16(wf, wk), load_i32x16(wf, wk + 64)
            b2, b3 = load_i32x16(wf, wk + 128), load_i32x16(wf, wk + 192)
            u = bcast4_i32x16(qa, x0 + k)
            a00 = dpbusd(a00, u, b0); a01 = dpbusd(a01, u, b1); a02 = dpbusd(a02, u, b2); a03 = dpbusd(a03, u, b3)  # noqa: E501, E702
            u = bcast4_i32x16(qa, x1 + k)
            a10 = dpbusd(a10, u, b0); a11 = dpbusd(a11, u, b1); a12 = dpbusd(a12, u, b2); a13 = dpbusd(a13, u, b3)  # noqa: E501, E702
            u = bcast4_i32x16(qa, x2 + k)
            a20 = dpbusd(a20, u, b0); a21 = dpbusd(a21, u, b1); a22 = dpbusd(a22, u, b2); a23 = dpbusd(a23, u, b3)  # noqa: E501, E702
            u = bcast4_i32x16(qa, x3 + k)
            a30 = dpbusd(a30, u, b0); a31 = dpbusd(a31, u, b1); a32 = dpbusd(a32, u, b2); a33 = dpbusd(a33, u, b3)  # noqa: E501, E702
        return a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _int8_1x64(qa, wf, x0, w0, steps):
        """One row x 64 columns, ``vpdpbusd``; odd and even steps in two accumulator sets, so eight independent
        ``vpdpbusd`` chains hide its latency (one set of four left batch 1 latency-bound at 2.5x its throughput)."""
        c0 = zero_i32x16(); c1 = zero_i32x16(); c2 = zero_i32x16(); c3 = zero_i32x16()  # noqa: E702
        d0 = zero_i32x16(); d1 = zero_i32x16(); d2 = zero_i32x16(); d3 = zero_i32x16()  # noqa: E702
        s = 0
        while s + 1 < steps:
            wk, k = w0 + 256 * s, x0 + 4 * s
            u = bcast4_i32x16(qa, k)
            c0 = dpbusd(c0, u, load_i32x16(wf, wk)); c1 = dpbusd(c1, u, load_i32x16(wf, wk + 64))  # noqa: E702
            c2 = dpbusd(c2, u, load_i32x16(wf, wk + 128)); c3 = dpbusd(c3, u, load_i32x16(wf, wk + 192))  # noqa: E702
            u = bcast4_i32x16(qa, k + 4)
            d0 = dpbusd(d0, u, load_i32x16(wf, wk + 256)); d1 = dpbusd(d1, u, load_i32x16(wf, wk + 320))  # noqa: E702
            d2 = dpbusd(d2, u, load_i32x16(wf, wk + 384)); d3 = dpbusd(d3, u, load_i32x16(wf, wk + 448))  # noqa: E702
            s += 2
        if s < steps:
            wk = w0 + 256 * s
            u = bcast4_i32x16(qa, x0 + 4 * s)
            c0 = dpbusd(c0, u, load_i32x16(wf, wk)); c1 = dpbusd(c1, u, load_i32x16(wf, wk + 64))  # noqa: E702
            c2 = dpbusd(c2, u, load_i32x16(wf, wk + 128)); c3 = dpbusd(c3, u, load_i32x16(wf, wk + 192))  # noqa: E702
        return vadd(c0, d0), vadd(c1, d1), vadd(c2, d2), vadd(c3, d3)

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _nibbles4(wf, wk):
        """The four 16-column vectors of one 4-bit step of a 64-column tile."""
        v, u = load_i32x16(wf, wk), load_i32x16(wf, wk + 64)
        return shr_mask(v, 0, 0x0F), shr_mask(v, 4, 0x0F), shr_mask(u, 0, 0x0F), shr_mask(u, 4, 0x0F)

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _crumbs4(wf, wk):
        """The four 16-column vectors of one 2-bit step of a 64-column tile."""
        v = load_i32x16(wf, wk)
        return shr_mask(v, 0, 3), shr_mask(v, 2, 3), shr_mask(v, 4, 3), shr_mask(v, 6, 3)

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _low_4x64(qs, wf, x0, width, w0, steps, bits):
        """Sixteen int32x16 sums ``u * q_x``: rows ``x0 + i * width`` (i < 4) x 64 columns, ``vpdpbusd``."""
        a00 = zero_i32x16(); a01 = zero_i32x16(); a02 = zero_i32x16(); a03 = zero_i32x16()  # noqa: E702
        a10 = zero_i32x16(); a11 = zero_i32x16(); a12 = zero_i32x16(); a13 = zero_i32x16()  # noqa: E702
        a20 = zero_i32x16(); a21 = zero_i32x16(); a22 = zero_i32x16(); a23 = zero_i32x16()  # noqa: E702
        a30 = zero_i32x16(); a31 = zero_i32x16(); a32 = zero_i32x16(); a33 = zero_i32x16()  # noqa: E702
        x1, x2, x3 = x0 + width, x0 + 2 * width, x0 + 3 * width
        step_bytes = 128 if bits == 4 else 64
        for s in range(steps):
            k = 4 * s
            if bits == 4:
                b0, b1, b2, b3 = _nibbles4(wf, w0 + step_bytes * s)
            else:
                b0, b1, b2, b3 = _crumbs4(wf, w0 + step_bytes * s)
            a = bcast4_i32x16(qs, x0 + k)
            a00 = dpbusd(a00, b0, a); a01 = dpbusd(a01, b1, a); a02 = dpbusd(a02, b2, a); a03 = dpbusd(a03, b3, a)  # noqa: E501, E702
            a = bcast4_i32x16(qs, x1 + k)
            a10 = dpbusd(a10, b0, a); a11 = dpbusd(a11, b1, a); a12 = dpbusd(a12, b2, a); a13 = dpbusd(a13, b3, a)  # noqa: E501, E702
            a = bcast4_i32x16(qs, x2 + k)
            a20 = dpbusd(a20, b0, a); a21 = dpbusd(a21, b1, a); a22 = dpbusd(a22, b2, a); a23 = dpbusd(a23, b3, a)  # noqa: E501, E702
            a = bcast4_i32x16(qs, x3 + k)
            a30 = dpbusd(a30, b0, a); a31 = dpbusd(a31, b1, a); a32 = dpbusd(a32, b2, a); a33 = dpbusd(a33, b3, a)  # noqa: E501, E702
        return a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _low_steps(wf, wk, bits):
        """The four 16-column vectors of one step of a 64-column tile: 4-bit or 2-bit codes."""
        return _nibbles4(wf, wk) if bits == 4 else _crumbs4(wf, wk)

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _low_1x64(qs, wf, x0, w0, steps, bits):
        """One row x 64 columns, ``vpdpbusd``; odd and even steps in two accumulator sets (see ``_int8_1x64``)."""
        c0 = zero_i32x16(); c1 = zero_i32x16(); c2 = zero_i32x16(); c3 = zero_i32x16()  # noqa: E702
        d0 = zero_i32x16(); d1 = zero_i32x16(); d2 = zero_i32x16(); d3 = zero_i32x16()  # noqa: E702
        step_bytes = 128 if bits == 4 else 64
        s = 0
        while s + 1 < steps:
            b0, b1, b2, b3 = _low_steps(wf, w0 + step_bytes * s, bits)
            a = bcast4_i32x16(qs, x0 + 4 * s)
            c0 = dpbusd(c0, b0, a); c1 = dpbusd(c1, b1, a); c2 = dpbusd(c2, b2, a); c3 = dpbusd(c3, b3, a)  # noqa: E702
            b0, b1, b2, b3 = _low_steps(wf, w0 + step_bytes * (s + 1), bits)
            a = bcast4_i32x16(qs, x0 + 4 * s + 4)
            d0 = dpbusd(d0, b0, a); d1 = dpbusd(d1, b1, a); d2 = dpbusd(d2, b2, a); d3 = dpbusd(d3, b3, a)  # noqa: E702
            s += 2
        if s < steps:
            b0, b1, b2, b3 = _low_steps(wf, w0 + step_bytes * s, bits)
            a = bcast4_i32x16(qs, x0 + 4 * s)
            c0 = dpbusd(c0, b0, a); c1 = dpbusd(c1, b1, a); c2 = dpbusd(c2, b2, a); c3 = dpbusd(c3, b3, a)  # noqa: E702
        return vadd(c0, d0), vadd(c1, d1), vadd(c2, d2), vadd(c3, d3)

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _epilogue(f, total, rows, r, g, c0, tile, sums, zero, w_scale, colsum, alpha, beta):
        """``f += float32(alpha * total - beta * sum(q) - z * colsum) * s_w`` for one group of one register tile:
        ``dot_g`` of ``q - z`` with the signed codes ``alpha * u - beta``."""
        sc, cs = w_scale[g, c0 : c0 + tile], colsum[g, c0 : c0 + tile]
        for i in range(rows):
            correction, z = beta * np.int64(sums[r + i, g]), np.int64(zero[r + i])
            for c in range(tile):
                f[i, c] += np.float32(alpha * total[i, c] - correction - z * cs[c]) * sc[c]

    @njit(cache=True, boundscheck=False, nogil=True)
    def _tile4_avx2(qs, wf, r, c0, a_width, w_step, sums, zero, x_scale, w_scale, colsum, bits, alpha, beta, chain,
                    n_out, groups, padded, bias, act, outf, acc, fv):
        """Four rows x one full tile of 16 columns when every group fits one int32 pass (at most ``BLOCK``
        inputs), with the epilogue in vectors: ``dot = alpha * acc - beta * sum(q) - z * colsum`` in wrapping int32
        (exact: ``|dot| <= 127 * 128 * BLOCK < 2^31``), ``f += float32(dot) * s_w`` per group, then ``act(f * s_x
        + bias)``: the float32 operations of ``_epilogue`` and ``emit`` in the same order."""
        steps_g = padded // 4
        fv[:] = 0.0
        for g in range(groups):
            x0, w0 = r * a_width + g * padded, g * steps_g * w_step
            if bits == 8:
                v = _int8_4x16(qs, wf, x0, a_width, w0, steps_g)
                for j in range(8):
                    store(acc, 8 * j, v[j])
            else:
                acc[:] = 0
                if bits == 4:
                    _low_4x16(qs, wf, x0, a_width, w0, steps_g, 4, chain, acc)
                else:
                    _low_4x16(qs, wf, x0, a_width, w0, steps_g, 2, chain, acc)
            cs, sc = colsum[g], w_scale[g]
            for i in range(4):
                z, correction = splat_i32x8(zero[r + i]), splat_i32x8(beta * sums[r + i, g])
                for h in range(2):
                    d = load_i32x8(acc, 16 * i + 8 * h)
                    if alpha != 1:
                        d = vmul(d, splat_i32x8(alpha))
                    d = vsub(vsub(d, correction), vmul(z, load_i32x8(cs, c0 + 8 * h)))
                    k = 16 * i + 8 * h
                    store(fv, k, vadd(load_f32x8(fv, k), vmul(to_f32(d), load_f32x8(sc, c0 + 8 * h))))
        for i in range(4):
            xs = splat_f32x8(x_scale[r + i])
            for h in range(2):
                y = vmul(load_f32x8(fv, 16 * i + 8 * h), xs)
                if bias.shape[0] > 0:
                    y = vadd(y, load_f32x8(bias, c0 + 8 * h))
                store(outf, (r + i) * n_out + c0 + 8 * h, activate(y, act))

    @njit(cache=True, boundscheck=False, nogil=True)
    def _block_avx2(a, sums, zero, x_scale, w, w_scale, colsum, bits, alpha, beta, chain, n_out, groups, padded, r0,
                    r1, t0, t1, bias, act, out):
        """Output rows ``r0:r1`` x column tiles ``t0:t1`` (16 outputs each) of the ``avx2`` variant."""
        width, steps_g, block = groups * padded, padded // 4, BLOCK // 4
        step_bytes = 64 if bits == 8 else (32 if bits == 4 else 16)
        qs = a.reshape(-1).view(np.int8)
        acc = np.empty(64, dtype=np.int32)
        total = np.empty((4, 16), dtype=np.int64)
        f = np.empty((4, 16), dtype=np.float32)
        fv, outf = f.reshape(-1), out.reshape(-1)
        for t in range(t0, t1):
            wf, c0 = w[t], t * 16
            for r in range(r0, r1, 4):
                rows = min(4, r1 - r)
                if rows == 4 and steps_g <= block and c0 + 16 <= n_out:
                    _tile4_avx2(qs, wf, r, c0, width, step_bytes, sums, zero, x_scale, w_scale, colsum, bits, alpha,
                                beta, chain, n_out, groups, padded, bias, act, outf, acc, fv)
                    continue
                f[:] = 0.0
                for g in range(groups):
                    total[:] = 0
                    for b in range(0, steps_g, block):
                        n = min(block, steps_g - b)
                        x0, w0 = r * width + g * padded + 4 * b, (g * steps_g + b) * step_bytes
                        if rows == 4 and bits == 8:
                            v = _int8_4x16(qs, wf, x0, width, w0, n)
                            for j in range(8):
                                store(acc, 8 * j, v[j])
                        elif rows == 4:
                            acc[:] = 0
                            if bits == 4:
                                _low_4x16(qs, wf, x0, width, w0, n, 4, chain, acc)
                            else:
                                _low_4x16(qs, wf, x0, width, w0, n, 2, chain, acc)
                        else:
                            for i in range(rows):
                                xi = x0 + i * width
                                if bits == 8:
                                    lo, hi = _int8_1x16(qs, wf, xi, w0, n)
                                elif bits == 4:
                                    lo, hi = _low_1x16(qs, wf, xi, w0, n, 4, chain)
                                else:
                                    lo, hi = _low_1x16(qs, wf, xi, w0, n, 2, chain)
                                store(acc, 16 * i, lo); store(acc, 16 * i + 8, hi)  # noqa: E702
                        for i in range(rows):
                            for c in range(16):
                                total[i, c] += acc[16 * i + c]
                    _epilogue(f, total, rows, r, g, c0, 16, sums, zero, w_scale, colsum, alpha, beta)
                emit(f, rows, r, c0, min(16, n_out - c0), x_scale, bias, act, out)

    @njit(cache=True, boundscheck=False, nogil=True)
    def _block_512(a, sums, zero, x_scale, w, w_scale, colsum, bits, alpha, beta, chain, n_out, groups, padded, r0,
                   r1, t0, t1, bias, act, out):
        """Output rows ``r0:r1`` x column tiles ``t0:t1`` (64 outputs each) of the ``avx512vnni`` variant."""
        width, steps_g, block = groups * padded, padded // 4, BLOCK // 4
        step_bytes = 256 if bits == 8 else (128 if bits == 4 else 64)
        qa = a.reshape(-1)
        acc = np.empty(256, dtype=np.int32)
        total = np.empty((4, 64), dtype=np.int64)
        f = np.empty((4, 64), dtype=np.float32)
        for t in range(t0, t1):
            wf, c0 = w[t], t * 64
            for r in range(r0, r1, 4):
                rows = min(4, r1 - r)
                f[:] = 0.0
                for g in range(groups):
                    total[:] = 0
                    for b in range(0, steps_g, block):
                        n = min(block, steps_g - b)
                        x0, w0 = r * width + g * padded + 4 * b, (g * steps_g + b) * step_bytes
                        if rows == 4:
                            v = _int8_4x64(qa, wf, x0, width, w0, n) if bits == 8 else (
                                _low_4x64(qa, wf, x0, width, w0, n, 4) if bits == 4 else
                                _low_4x64(qa, wf, x0, width, w0, n, 2))
                            for j in range(16):
                                store(acc, 16 * j, v[j])
                        else:
                            for i in range(rows):
                                xi = x0 + i * width
                                v1 = _int8_1x64(qa, wf, xi, w0, n) if bits == 8 else (
                                    _low_1x64(qa, wf, xi, w0, n, 4) if bits == 4 else _low_1x64(qa, wf, xi, w0, n, 2))
                                for j in range(4):
                                    store(acc, 64 * i + 16 * j, v1[j])
                        for i in range(rows):
                            for c in range(64):
                                total[i, c] += acc[64 * i + c]
                    _epilogue(f, total, rows, r, g, c0, 64, sums, zero, w_scale, colsum, alpha, beta)
                emit(f, rows, r, c0, min(64, n_out - c0), x_scale, bias, act, out)

    def _driver(wide: bool):
        """A parallel GEMM of one variant (``wide``: avx512vnni). ``wide`` is a closure constant, never the block
        function itself: numba prunes the other variant's branch, so a CPU compiles only the block it runs, and the
        on-disk cache key (which hashes closure values; a dispatcher's differs in every process) holds between
        runs."""
        tile = TILES["avx512vnni" if wide else "avx2"]

        @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
        @variant("512" if wide else "avx2")
        def gemm(a, sums, zero, x_scale, w, w_scale, colsum, bits, alpha, beta, chain, n_out, groups, padded, bias,
                 act, out, parallel):
            m, n_tiles, first = a.shape[0], w.shape[0], np.int64(0)  # int64, not Literal[0]: one compiled block
            if not parallel:
                if wide:
                    _block_512(a, sums, zero, x_scale, w, w_scale, colsum, bits, alpha, beta, chain, n_out, groups,
                               padded, first, m, first, n_tiles, bias, act, out)
                else:
                    _block_avx2(a, sums, zero, x_scale, w, w_scale, colsum, bits, alpha, beta, chain, n_out, groups,
                                padded, first, m, first, n_tiles, bias, act, out)
                return
            per_block = max(1, COL_BLOCK // tile)
            n_blocks = (n_tiles + per_block - 1) // per_block
            chunk = ROW_CHUNK if m > 2 * ROW_CHUNK else m
            n_items = ((m + chunk - 1) // chunk) * n_blocks
            counter = new_counter()
            for _ in prange(min(n_items, MAX_THREADS)):  # items handed out one at a time (``qwave.kernels.work``)
                item = take(counter)
                while item < n_items:
                    r0, t0 = (item // n_blocks) * chunk, (item % n_blocks) * per_block
                    r1, t1 = min(m, r0 + chunk), min(n_tiles, t0 + per_block)
                    if wide:
                        _block_512(a, sums, zero, x_scale, w, w_scale, colsum, bits, alpha, beta, chain, n_out,
                                   groups, padded, r0, r1, t0, t1, bias, act, out)
                    else:
                        _block_avx2(a, sums, zero, x_scale, w, w_scale, colsum, bits, alpha, beta, chain, n_out,
                                    groups, padded, r0, r1, t0, t1, bias, act, out)
                    item = take(counter)

        return gemm

    GEMM_AVX2, GEMM_512 = _driver(False), _driver(True)
    GEMM = {"avx2": GEMM_AVX2, "avx512vnni": GEMM_512}

    def _chain(wide: bool):
        """Consecutive W·A8 layers in one compiled call (the fused path's batch-1 case: no Python between layers).
        ``table`` (``qwave.kernels.table``) has a row per layer: its codes (as uint8), scale, column sums and bias,
        then ``[bits, alpha, beta, chain, out, in, group size, groups, padded group, act]``; each layer is what
        ``linear_np`` computes."""

        @njit(cache=True, boundscheck=False, nogil=True)
        @variant("512" if wide else "avx2")
        def chain(x, table):
            h = x
            for i in range(table.shape[0]):
                codes, scale = view2(table, i, 0, np.uint8), view2(table, i, 1, np.float32)
                colsum, bias = view2(table, i, 2, np.int32), view1(table, i, 3, np.float32)
                bits, alpha, beta = meta(table, i, 4, 0), meta(table, i, 4, 1), meta(table, i, 4, 2)
                steps, n_out, n_in = meta(table, i, 4, 3), meta(table, i, 4, 4), meta(table, i, 4, 5)
                group_size, groups, padded = meta(table, i, 4, 6), meta(table, i, 4, 7), meta(table, i, 4, 8)
                act = meta(table, i, 4, 9)
                m = h.shape[0]
                parallel = m * n_out * n_in >= PARALLEL_MACS
                a, x_scale, zero, sums = quantize_rows(h, group_size, groups, padded, parallel)
                out = np.empty((m, n_out), dtype=np.float32)
                if wide:
                    GEMM_512(a, sums, zero, x_scale, codes, scale, colsum, bits, alpha, beta, steps, n_out, groups,
                             padded, bias, act, out, parallel)
                else:
                    GEMM_AVX2(a, sums, zero, x_scale, codes, scale, colsum, bits, alpha, beta, steps, n_out, groups,
                              padded, bias, act, out, parallel)
                h = out
            return h

        return chain

    CHAIN = {"avx2": _chain(False), "avx512vnni": _chain(True)}

    def chain_layers(layers: list[tuple[IntWeights, np.ndarray, int]]):
        """A callable ``x float32 [batch, in] -> float32 [batch, out]`` running the ``(weights, bias, act)`` layers
        in one compiled call, bit for bit ``linear_np`` layer after layer; ``None`` for mixed variants."""
        return chained(CHAIN, layers, lambda w, bias: (w.codes.view(np.uint8), w.scale, w.column_sums, bias),
                       lambda w, act: (w.bits, w.alpha, w.beta, CHAIN4 if w.bits == 4 else CHAIN2, w.out_features,
                                       w.in_features, w.group_size, w.scale.shape[0], w.padded_group, act))

    def linear_np(weights: IntWeights, x: np.ndarray, bias: np.ndarray, act: int) -> np.ndarray:
        """``act(W·A8 recipe(x) + bias)`` on float32 rows ``x [batch, in]`` (``bias`` may be empty)."""
        m, n_out = x.shape[0], weights.out_features
        groups, padded = weights.scale.shape[0], weights.padded_group
        parallel = m * n_out * weights.in_features >= PARALLEL_MACS
        a, x_scale, zero, sums = quantize_rows(x, weights.group_size, groups, padded, parallel)
        out = np.empty((m, n_out), dtype=np.float32)
        chain = CHAIN4 if weights.bits == 4 else CHAIN2
        codes = weights.codes.view(np.uint8)  # as the chain passes them: int8 and low-bit share one compiled GEMM
        GEMM[weights.isa](a, sums, zero, x_scale, codes, weights.scale, weights.column_sums, weights.bits,
                          weights.alpha, weights.beta, chain, n_out, groups, padded, bias, act, out, parallel)
        return out

    def register_wa8(name: str, formats: tuple[str, ...], prepare, unprepare) -> Kernel:
        """Register one member of the W·A8 family (int8 codes, or unpacked low-bit codes): the same drivers,
        NumPy entry point and chain call, its own ``prepare`` / ``unprepare`` of the format's packed tensors."""
        no_bias = np.empty(0, dtype=np.float32)
        return register_kernel(
            Kernel(
                name=name,
                formats=formats,
                device="cpu",
                prepare=prepare,
                run=lambda w, x: torch.from_numpy(linear_np(w, x.detach().contiguous().numpy(), no_bias,
                                                            NO_ACTIVATION)),
                cached_bytes=lambda weights: weights.cached_bytes,
                unprepare=unprepare,
                supports=lambda fmt: fmt.activations == "int8" and fmt.act_recipe == "zero_point",
                run_np=linear_np,
                chain=chain_layers,
            )
        )
