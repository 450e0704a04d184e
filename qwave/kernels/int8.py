"""int8 x int8 -> int32 linear layers: dynamic per-row int8 activations (``act8``) times packed int8 weights.

Recipe (the ``int8`` format's): exact integer dot products per weight group, then
``y = s_x * sum_g(float(acc_g) * s_w[:, g])``. Both variants reproduce it bit for bit; the CPU's features pick one
(``ISA``), and numba's cache is keyed by them. Both keep a register tile of rows x columns in int32 accumulators for
the whole reduction, with weights laid out per column tile as ``[group, k/4, columns, 4 bytes]`` so one vector load
feeds a whole vector of columns and each row's activations are broadcast 4 bytes at a time: no horizontal sums
(the MLAS / fbgemm u8s8 scheme).

* ``avx2`` (Zen 3 and every AVX2 CPU): 4 rows x 16 columns, ``vpmaddubsw`` + ``vpmaddwd`` + ``vpaddd``. ``vpmaddubsw``
  multiplies unsigned by signed bytes and saturates int16 pairs, so it gets ``|w|`` (``vpabsb``, once per weight
  vector for the 4 rows) and the activation codes with the weight's sign moved onto them (``vpsignb``, the sign
  trick): ``|w| * sign(w) q_x = w q_x``, and a pair is at most ``2 * 127 * 127 < 2^15``, so it never saturates.
  Row tiles whose codes are all >= 0 (every row after a ReLU) skip the sign step: ``vpmaddubsw(q_x, w)``.
* ``avx512vnni``: 4 rows x 64 columns, 512-bit ``vpdpbusd`` on ``q_x + 128`` (unsigned); ``128 * sum(w)`` per
  column and group is subtracted at the end.

Bound: int32 accumulators see at most ``BLOCK`` inputs before they are added into int64 (``|q_x w| <= 127 * 127``
per product, ``(q_x + 128) |w| <= 255 * 127`` on VNNI: ``65536 * 255 * 127 < 2^31``), so a group of any length is
exact. Small batches run on one core (no thread wake-up cost); larger ones split row chunks x column blocks over
the numba threads. The weight copy in the kernel layout is reported by ``cached_bytes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from qwave.kernels import FAST_KERNELS, Kernel, register_kernel

TILES = {"avx2": 16, "avx512vnni": 64}  # output columns per register tile
BLOCK = 1 << 16  # inputs per int32 accumulation before the int64 spill (see the bound above)
ROW_CHUNK = 64  # batch rows per work item
COL_BLOCK = 64  # output columns per work item
FORMATS = ("int8", "int7", "int6", "int5")  # integer codes that need a byte (|code| <= 127), int8 activations
PARALLEL_MACS = 1 << 18  # below this many multiply-adds a call stays on one thread (measured: 2 threads pay off
# from a 640 x 320 layer at batch 1 up)


@dataclass
class Int8Weights:
    """Weight codes in one variant's kernel layout, kept on the layer between calls."""

    isa: str  # "avx2" or "avx512vnni"
    codes: np.ndarray  # int8 [tiles, groups * padded * tile]: per tile [group, k/4, tile columns, 4 bytes]
    scale: np.ndarray  # float32 [groups, tiles * tile] (0 on padded columns)
    offset: np.ndarray  # int64 [groups, tiles * tile]: 128 * the group's code sum (avx512vnni; empty for avx2)
    out_features: int
    in_features: int
    group_size: int
    padded_group: int  # group width padded to a multiple of 4

    @property
    def cached_bytes(self) -> int:
        return int(self.codes.nbytes + self.scale.nbytes + self.offset.nbytes)


def group_layout(in_features: int, group_size: int | None, step: int = 4) -> tuple[int, int, int]:
    """``(group width, number of groups, group width padded to a multiple of step)`` as the int8 format groups."""
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


def prepare_codes(
    codes: torch.Tensor, scale: torch.Tensor, shape: tuple[int, int], group_size: int | None, isa: str
) -> Int8Weights:
    """Kernel layout from integer codes ``[out, in]`` in [-127, 127] (int8, or the uint8 view of int8 codes) and
    fp16 scales ``[out, groups]``."""
    out_features, in_features = shape
    tile = TILES[isa]
    size, groups, padded = group_layout(in_features, group_size)
    w = codes.detach().cpu().contiguous().view(torch.int8).numpy()
    tiled = tile_rows(w, groups, size, padded, tile)
    offset = np.empty((0, 0), np.int64)
    if isa == "avx512vnni":
        offset = 128 * tiled.astype(np.int64).sum(axis=(2, 4)).transpose(1, 0, 2).reshape(groups, -1)
    return Int8Weights(isa, tiled.reshape(tiled.shape[0], -1), tile_scales(scale, out_features, groups, tile),
                       np.ascontiguousarray(offset), out_features, in_features, size, padded)


if FAST_KERNELS:
    from numba import njit, prange

    from qwave.kernels._simd import (
        HAS_AVX512_VNNI,
        abs_i8,
        bcast4_i8x32,
        bcast4_i32x16,
        dpbusd,
        load_i8x32,
        load_i32x16,
        maddubs,
        sign_i8,
        store,
        vadd,
        widen_pairs,
        zero_i32x8,
        zero_i32x16,
    )
    from qwave.kernels.act8 import OFFSET, SIGNED, emit, quantize_rows

    # numba's cache key includes the CPU's features, so this choice never goes stale in the cache.
    ISA = "avx512vnni" if HAS_AVX512_VNNI else "avx2"

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _mac(acc, q, w, w_abs, signed):
        """``acc + 4-product dots`` of one broadcast activation word ``q`` and one weight vector (8 columns)."""
        if signed:
            return vadd(acc, widen_pairs(maddubs(w_abs, sign_i8(q, w))))
        return vadd(acc, widen_pairs(maddubs(q, w)))

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _dot4x16(qs, wf, x0, width, w0, steps, signed):
        """Eight int32x8 accumulators: rows ``x0 + i * width`` (i < 4) x 16 columns over ``steps`` k/4 steps."""
        a00 = zero_i32x8(); a01 = zero_i32x8(); a10 = zero_i32x8(); a11 = zero_i32x8()  # noqa: E702
        a20 = zero_i32x8(); a21 = zero_i32x8(); a30 = zero_i32x8(); a31 = zero_i32x8()  # noqa: E702
        x1, x2, x3 = x0 + width, x0 + 2 * width, x0 + 3 * width
        for s in range(steps):
            wk, k = w0 + 64 * s, 4 * s
            b0, b1 = load_i8x32(wf, wk), load_i8x32(wf, wk + 32)
            c0, c1 = (abs_i8(b0), abs_i8(b1)) if signed else (b0, b1)
            q = bcast4_i8x32(qs, x0 + k)
            a00 = _mac(a00, q, b0, c0, signed); a01 = _mac(a01, q, b1, c1, signed)  # noqa: E702
            q = bcast4_i8x32(qs, x1 + k)
            a10 = _mac(a10, q, b0, c0, signed); a11 = _mac(a11, q, b1, c1, signed)  # noqa: E702
            q = bcast4_i8x32(qs, x2 + k)
            a20 = _mac(a20, q, b0, c0, signed); a21 = _mac(a21, q, b1, c1, signed)  # noqa: E702
            q = bcast4_i8x32(qs, x3 + k)
            a30 = _mac(a30, q, b0, c0, signed); a31 = _mac(a31, q, b1, c1, signed)  # noqa: E702
        return a00, a01, a10, a11, a20, a21, a30, a31

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _dot1x16(qs, wf, x0, w0, steps, signed):
        """One row x 16 columns, two interleaved accumulator pairs (latency hiding for batch 1)."""
        a0 = zero_i32x8(); a1 = zero_i32x8(); b0 = zero_i32x8(); b1 = zero_i32x8()  # noqa: E702
        s = 0
        while s + 1 < steps:
            wk, k = w0 + 64 * s, x0 + 4 * s
            q, v0, v1 = bcast4_i8x32(qs, k), load_i8x32(wf, wk), load_i8x32(wf, wk + 32)
            a0 = _mac(a0, q, v0, abs_i8(v0), signed); a1 = _mac(a1, q, v1, abs_i8(v1), signed)  # noqa: E702
            q, v0, v1 = bcast4_i8x32(qs, k + 4), load_i8x32(wf, wk + 64), load_i8x32(wf, wk + 96)
            b0 = _mac(b0, q, v0, abs_i8(v0), signed); b1 = _mac(b1, q, v1, abs_i8(v1), signed)  # noqa: E702
            s += 2
        if s < steps:
            wk, k = w0 + 64 * s, x0 + 4 * s
            q, v0, v1 = bcast4_i8x32(qs, k), load_i8x32(wf, wk), load_i8x32(wf, wk + 32)
            a0 = _mac(a0, q, v0, abs_i8(v0), signed); a1 = _mac(a1, q, v1, abs_i8(v1), signed)  # noqa: E702
        return vadd(a0, b0), vadd(a1, b1)

    @njit(cache=True, boundscheck=False, nogil=True)
    def _block_avx2(qs, neg, x_scale, w, w_scale, n_out, groups, padded, r0, r1, t0, t1, bias, relu, out):
        """Output rows ``r0:r1`` x column tiles ``t0:t1`` (16 outputs each), ``vpmaddubsw`` variant."""
        width, steps_g, block = groups * padded, padded // 4, BLOCK // 4
        qs_f = qs.reshape(-1)
        acc = np.empty(64, dtype=np.int32)
        total = np.empty((4, 16), dtype=np.int64)
        f = np.empty((4, 16), dtype=np.float32)
        for t in range(t0, t1):
            wf, c0 = w[t], t * 16
            for r in range(r0, r1, 4):
                rows = min(4, r1 - r)
                signed = False
                for i in range(rows):
                    signed |= neg[r + i]
                f[:] = 0.0
                for g in range(groups):
                    total[:] = 0
                    for b in range(0, steps_g, block):
                        n = min(block, steps_g - b)
                        x0, w0 = r * width + g * padded + 4 * b, (g * steps_g + b) * 64
                        if rows == 4:
                            if signed:
                                v = _dot4x16(qs_f, wf, x0, width, w0, n, True)
                            else:
                                v = _dot4x16(qs_f, wf, x0, width, w0, n, False)
                            store(acc, 0, v[0]); store(acc, 8, v[1]); store(acc, 16, v[2]); store(acc, 24, v[3])  # noqa: E702
                            store(acc, 32, v[4]); store(acc, 40, v[5]); store(acc, 48, v[6]); store(acc, 56, v[7])  # noqa: E702
                        else:
                            for i in range(rows):
                                if neg[r + i]:
                                    lo, hi = _dot1x16(qs_f, wf, x0 + i * width, w0, n, True)
                                else:
                                    lo, hi = _dot1x16(qs_f, wf, x0 + i * width, w0, n, False)
                                store(acc, 16 * i, lo); store(acc, 16 * i + 8, hi)  # noqa: E702
                        for i in range(rows):
                            for c in range(16):
                                total[i, c] += acc[16 * i + c]
                    sc = w_scale[g, c0 : c0 + 16]
                    for i in range(rows):
                        for c in range(16):
                            f[i, c] += np.float32(total[i, c]) * sc[c]
                emit(f, rows, r, c0, min(16, n_out - c0), x_scale, bias, relu, out)

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _dot4x64(qa, wf, x0, width, w0, steps):
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
    def _dot1x64(qa, wf, x0, w0, steps):
        """One row x 64 columns, ``vpdpbusd``."""
        c0 = zero_i32x16(); c1 = zero_i32x16(); c2 = zero_i32x16(); c3 = zero_i32x16()  # noqa: E702
        for s in range(steps):
            wk = w0 + 256 * s
            u = bcast4_i32x16(qa, x0 + 4 * s)
            c0 = dpbusd(c0, u, load_i32x16(wf, wk)); c1 = dpbusd(c1, u, load_i32x16(wf, wk + 64))  # noqa: E702
            c2 = dpbusd(c2, u, load_i32x16(wf, wk + 128)); c3 = dpbusd(c3, u, load_i32x16(wf, wk + 192))  # noqa: E702
        return c0, c1, c2, c3

    @njit(cache=True, boundscheck=False, nogil=True)
    def _block_512(qa, x_scale, w, w_scale, offset, n_out, groups, padded, r0, r1, t0, t1, bias, relu, out):
        """Output rows ``r0:r1`` x column tiles ``t0:t1`` (64 outputs each), 512-bit ``vpdpbusd`` variant."""
        width, steps_g, block = groups * padded, padded // 4, BLOCK // 4
        qa_f = qa.reshape(-1)
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
                        x0, w0 = r * width + g * padded + 4 * b, (g * steps_g + b) * 256
                        if rows == 4:
                            v = _dot4x64(qa_f, wf, x0, width, w0, n)
                            for j in range(16):
                                store(acc, 16 * j, v[j])
                        else:
                            for i in range(rows):
                                v1 = _dot1x64(qa_f, wf, x0 + i * width, w0, n)
                                for j in range(4):
                                    store(acc, 64 * i + 16 * j, v1[j])
                        for i in range(rows):
                            for c in range(64):
                                total[i, c] += acc[64 * i + c]
                    off, sc = offset[g, c0 : c0 + 64], w_scale[g, c0 : c0 + 64]
                    for i in range(rows):
                        for c in range(64):
                            f[i, c] += np.float32(total[i, c] - off[c]) * sc[c]
                emit(f, rows, r, c0, min(64, n_out - c0), x_scale, bias, relu, out)

    @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
    def gemm_avx2(qs, neg, x_scale, w, w_scale, n_out, groups, padded, bias, relu, out, parallel):
        """All outputs (avx2 layout); with ``parallel``, row chunk x column block items over the numba threads."""
        m, n_tiles = qs.shape[0], w.shape[0]
        if not parallel:
            _block_avx2(qs, neg, x_scale, w, w_scale, n_out, groups, padded, 0, m, 0, n_tiles, bias, relu, out)
            return
        per_block = COL_BLOCK // 16
        n_blocks = (n_tiles + per_block - 1) // per_block
        chunk = ROW_CHUNK if m > 2 * ROW_CHUNK else m
        n_chunks = (m + chunk - 1) // chunk
        for item in prange(n_chunks * n_blocks):
            r0, t0 = (item // n_blocks) * chunk, (item % n_blocks) * per_block
            _block_avx2(qs, neg, x_scale, w, w_scale, n_out, groups, padded, r0, min(m, r0 + chunk), t0,
                        min(n_tiles, t0 + per_block), bias, relu, out)

    @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
    def gemm_512(qa, x_scale, w, w_scale, offset, n_out, groups, padded, bias, relu, out, parallel):
        """All outputs (avx512vnni layout); with ``parallel``, row chunk x column tile items over the threads."""
        m, n_tiles = qa.shape[0], w.shape[0]
        if not parallel:
            _block_512(qa, x_scale, w, w_scale, offset, n_out, groups, padded, 0, m, 0, n_tiles, bias, relu, out)
            return
        chunk = ROW_CHUNK if m > 2 * ROW_CHUNK else m
        n_chunks = (m + chunk - 1) // chunk
        for item in prange(n_chunks * n_tiles):
            r0, t = (item // n_tiles) * chunk, item % n_tiles
            _block_512(qa, x_scale, w, w_scale, offset, n_out, groups, padded, r0, min(m, r0 + chunk), t, t + 1,
                       bias, relu, out)

    def linear_np(weights: Int8Weights, x: np.ndarray, bias: np.ndarray, relu: bool) -> np.ndarray:
        """``relu?(int8 recipe(x) + bias)`` on float32 rows ``x [batch, in]`` (``bias`` may be empty)."""
        m, n_out = x.shape[0], weights.out_features
        groups, padded = weights.scale.shape[0], weights.padded_group
        out = np.empty((m, n_out), dtype=np.float32)
        parallel = m * n_out * weights.in_features >= PARALLEL_MACS
        if weights.isa == "avx512vnni":
            qa, _, x_scale, _, _ = quantize_rows(x, weights.group_size, groups, padded, OFFSET, parallel)
            gemm_512(qa, x_scale, weights.codes, weights.scale, weights.offset, n_out, groups, padded, bias, relu,
                     out, parallel)
        else:
            _, qs, x_scale, _, neg = quantize_rows(x, weights.group_size, groups, padded, SIGNED, parallel)
            gemm_avx2(qs, neg, x_scale, weights.codes, weights.scale, n_out, groups, padded, bias, relu, out, parallel)
        return out

    _NO_BIAS = np.empty(0, dtype=np.float32)

    def prepare(fmt, packed: dict[str, torch.Tensor], shape: tuple[int, int], isa: str = ISA) -> Int8Weights:
        """Kernel state of a format with int8-range codes and int8 activations, in variant ``isa``."""
        return prepare_codes(fmt.unpack(packed, shape).codes, packed["scale"], shape, fmt.group_size, isa)

    def _run(weights: Int8Weights, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(linear_np(weights, x.detach().contiguous().numpy(), _NO_BIAS, False))

    KERNEL = register_kernel(
        Kernel(
            name=f"int8-numba-{ISA}",
            formats=FORMATS,
            device="cpu",
            prepare=prepare,
            run=_run,
            cached_bytes=lambda weights: weights.cached_bytes,
            supports=lambda fmt: fmt.activations == "int8",
            run_np=linear_np,
        )
    )
