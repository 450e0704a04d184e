"""int8 x int8 -> int32 linear layers: dynamic per-row int8 activations times packed int8 weights.

Recipe (the ``int8`` format's): ``s_x = max|x_row| / 127`` (float32), ``q_x = clamp(round(x / s_x), -127, 127)``
(round half to even, 0 where ``s_x == 0``), exact integer dot products per weight group, then
``y = s_x * sum_g(float(acc_g) * s_w[:, g])``. Both variants reproduce it bit for bit; the CPU's features pick one
(``ISA``), and numba's cache is keyed by them:

* ``avx512vnni``: 512-bit ``vpdpbusd`` on a 4-row x 64-column register tile (16 accumulators). Weights are laid
  out per 64-column tile as ``[group, k/4, 64 columns, 4 bytes]`` so one load feeds 16 columns; activations are
  stored offset by 128 as unsigned bytes and broadcast 4 at a time, so accumulators hold whole outputs and need
  no horizontal sums; ``128 * sum(w)`` per column and group is subtracted when a group is flushed to float.
* ``avx2``: 256-bit ``vpsignb`` + ``vpmaddubsw`` + ``vpmaddwd`` on ``|q|`` and ``q`` over a 4-row x 3-column tile
  of row-major weight codes, with a horizontal sum per output and group.

The weight copy in the kernel layout is reported by ``cached_bytes``. Small batches run on one core (no thread
wake-up cost); larger ones split row chunks x column blocks over the numba threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from qwave.kernels import FAST_KERNELS, Kernel, register_kernel

ROW_TILE, COL_TILE, LANES = 4, 3, 32  # avx2 tile and vector width
TILE_512 = 64  # avx512vnni: output columns per tile (4 vectors of 16 int32)
COL_BLOCK = 16 * COL_TILE  # avx2: output columns per work item: 48 rows of a 1536-wide int8 matrix = 72 KiB
ROW_CHUNK = 64  # batch rows per work item
PARALLEL_MACS = 1 << 18  # below this many multiply-adds a call stays on one thread (measured: 2 threads pay off
# from a 640 x 320 layer at batch 1 up)


@dataclass
class Int8Weights:
    """Weight codes in one variant's kernel layout, kept on the layer between calls."""

    isa: str  # "avx512vnni" or "avx2"
    codes: np.ndarray  # int8; avx2: [ceil(out/3)*3, groups * padded]; avx512vnni: [tiles, groups*padded*64]
    scale: np.ndarray  # float32; avx2: [out, groups]; avx512vnni: [groups, tiles*64] (0 on padded columns)
    offset: np.ndarray  # int32 [groups, tiles*64]: 128 * the group's code sum (avx512vnni; empty for avx2)
    out_features: int
    in_features: int
    group_size: int
    padded_group: int  # group width padded to the variant's step (avx2: 32 bytes, avx512vnni: 4 bytes)

    @property
    def cached_bytes(self) -> int:
        return int(self.codes.nbytes + self.scale.nbytes + self.offset.nbytes)


def group_layout(in_features: int, group_size: int | None, step: int = LANES) -> tuple[int, int, int]:
    """``(group width, number of groups, group width padded to a multiple of step)`` as the int8 format groups."""
    size = max(1, in_features if group_size is None else min(group_size, in_features))
    return size, math.ceil(in_features / size), math.ceil(size / step) * step


def prepare_codes(
    codes: torch.Tensor, scale: torch.Tensor, shape: tuple[int, int], group_size: int | None, isa: str
) -> Int8Weights:
    """Kernel layout from int8 codes ``[out, in]`` (or their uint8 view) and fp16 scales ``[out, groups]``."""
    out_features, in_features = shape
    size, groups, padded = group_layout(in_features, group_size, 4 if isa == "avx512vnni" else LANES)
    rows = math.ceil(out_features / (TILE_512 if isa == "avx512vnni" else COL_TILE)) * (
        TILE_512 if isa == "avx512vnni" else COL_TILE)
    w = codes.detach().cpu().contiguous().view(torch.int8).numpy()
    full = np.zeros((out_features, groups * size), dtype=np.int8)
    full[:, :in_features] = w
    padded_w = np.zeros((rows, groups, padded), dtype=np.int8)
    padded_w[:out_features, :, :size] = full.reshape(out_features, groups, size)
    w_scale = scale.detach().cpu().float().numpy().reshape(out_features, groups)
    if isa == "avx2":
        return Int8Weights(isa, padded_w.reshape(rows, groups * padded), np.ascontiguousarray(w_scale),
                           np.empty((0, 0), np.int32), out_features, in_features, size, padded)
    tiles = rows // TILE_512
    # [tile, vector, lane, group, k/4, byte] -> [tile, group, k/4, vector, lane, byte]
    tiled = padded_w.reshape(tiles, 4, 16, groups, padded // 4, 4).transpose(0, 3, 4, 1, 2, 5)
    full_scale = np.zeros((groups, rows), np.float32)
    full_scale[:, :out_features] = w_scale.T
    offset = 128 * padded_w.astype(np.int32).sum(axis=2).T
    return Int8Weights(isa, np.ascontiguousarray(tiled).reshape(tiles, -1), full_scale,
                       np.ascontiguousarray(offset, dtype=np.int32), out_features, in_features, size, padded)


if FAST_KERNELS:
    from numba import njit, prange

    from qwave.kernels._simd import (
        HAS_AVX512_VNNI,
        bcast_u8x4,
        dot_i8,
        dpbusd,
        hsum_i32x8,
        load_i8x32,
        load_i32x16,
        store_i32x16,
        zero_i32x8,
        zero_i32x16,
    )

    # numba's cache key includes the CPU's features, so this choice never goes stale in the cache.
    ISA = "avx512vnni" if HAS_AVX512_VNNI else "avx2"

    @njit(cache=True, boundscheck=False, nogil=True)
    def abs_max_rows(x):
        """``max|x_row|`` per row, exactly (a max over the bit patterns of ``|x|``, which vectorizes)."""
        bits = x.view(np.int32)
        out = np.empty(x.shape[0], dtype=np.int32)
        for i in range(x.shape[0]):
            row = bits[i]
            top = np.int32(0)
            for k in range(row.shape[0]):
                top = max(top, row[k] & np.int32(0x7FFFFFFF))
            out[i] = top
        return out.view(np.float32)

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _round(v):
        """``rint(v)`` (half to even) for float32 ``|v| <= 127``: adding and removing 1.5 * 2^23 rounds to an
        integer in float32 arithmetic, and unlike ``rint`` it vectorizes. Clamping before rounding is the same as
        clamping after it on [-127, 127]."""
        magic = np.float32(12582912.0)
        return (v + magic) - magic

    @njit(cache=True, boundscheck=False, nogil=True)
    def _quantize_row(x, i, amax, a, b, scale, group_size, padded, vnni):
        n = x.shape[1]
        row, arow, brow = x[i], a[i], b[i]
        s = np.float32(amax[i] / np.float32(127.0))
        scale[i] = s
        if s == 0:
            if vnni:
                arow[:] = 128
            return
        lo, hi = np.float32(-127.0), np.float32(127.0)
        for g in range((n + group_size - 1) // group_size):
            src = row[g * group_size : min(n, (g + 1) * group_size)]
            dst_a, dst_b = arow[g * padded : (g + 1) * padded], brow[g * padded : (g + 1) * padded]
            if vnni:
                dst_a[src.shape[0] :] = 128
                for k in range(src.shape[0]):
                    dst_a[k] = np.uint8(np.int32(_round(min(max(src[k] / s, lo), hi))) + 128)
            else:
                for k in range(src.shape[0]):
                    c = np.int32(_round(min(max(src[k] / s, lo), hi)))
                    dst_a[k] = np.uint8(abs(c))
                    dst_b[k] = np.int8(c)

    @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
    def quantize_rows(x, group_size, groups, padded, vnni, parallel):
        """Per-row int8 activations in the padded kernel layout: ``(a, b, scale)``; VNNI: ``a = q + 128`` and
        ``b`` is ``a`` itself, otherwise ``a = |q|``, ``b = q``."""
        m = x.shape[0]
        a = np.empty((m, groups * padded), dtype=np.uint8) if vnni else np.zeros((m, groups * padded), np.uint8)
        b = a.view(np.int8) if vnni else np.zeros((m, groups * padded), dtype=np.int8)
        scale = np.empty(m, dtype=np.float32)
        amax = abs_max_rows(x)
        if parallel:
            for i in prange(m):
                _quantize_row(x, i, amax, a, b, scale, group_size, padded, vnni)
        else:
            for i in range(m):
                _quantize_row(x, i, amax, a, b, scale, group_size, padded, vnni)
        return a, b, scale

    @njit(cache=True, boundscheck=False, nogil=True)
    def _emit(f, rows, r, c0, width, x_scale, bias, relu, out):
        for i in range(rows):
            for c in range(width):
                y = f[i, c] * x_scale[r + i]
                if bias.shape[0] > 0:
                    y += bias[c0 + c]
                if relu and y < 0:
                    y = np.float32(0.0)
                out[r + i, c0 + c] = y

    @njit(cache=True, boundscheck=False, nogil=True)
    def _block_avx2(a, b, x_scale, w, w_scale, n_out, groups, padded, r0, r1, t0, t1, bias, relu, out):
        """Output rows ``r0:r1`` x weight column tiles ``t0:t1`` (3 outputs each), ``vpmaddubsw`` variant."""
        width = groups * padded
        qa = a.reshape(-1).view(np.int8)
        qs = b.reshape(-1)
        wf = w.reshape(-1)
        f = np.empty((4, 3), dtype=np.float32)
        acc = np.empty(12, dtype=np.int64)
        for t in range(t0, t1):
            j = t * 3
            w0, w1, w2 = j * width, (j + 1) * width, (j + 2) * width
            r = r0
            while r < r1:
                rows = min(4, r1 - r)
                f[:] = 0.0
                for g in range(groups):
                    k0 = g * padded
                    if rows == 4:
                        a00 = zero_i32x8(); a01 = zero_i32x8(); a02 = zero_i32x8()  # noqa: E702
                        a10 = zero_i32x8(); a11 = zero_i32x8(); a12 = zero_i32x8()  # noqa: E702
                        a20 = zero_i32x8(); a21 = zero_i32x8(); a22 = zero_i32x8()  # noqa: E702
                        a30 = zero_i32x8(); a31 = zero_i32x8(); a32 = zero_i32x8()  # noqa: E702
                        x0, x1, x2, x3 = r * width, (r + 1) * width, (r + 2) * width, (r + 3) * width
                        for k in range(k0, k0 + padded, LANES):
                            b0, b1, b2 = load_i8x32(wf, w0 + k), load_i8x32(wf, w1 + k), load_i8x32(wf, w2 + k)
                            u, s = load_i8x32(qa, x0 + k), load_i8x32(qs, x0 + k)
                            a00 = dot_i8(a00, u, s, b0); a01 = dot_i8(a01, u, s, b1); a02 = dot_i8(a02, u, s, b2)  # noqa: E702
                            u, s = load_i8x32(qa, x1 + k), load_i8x32(qs, x1 + k)
                            a10 = dot_i8(a10, u, s, b0); a11 = dot_i8(a11, u, s, b1); a12 = dot_i8(a12, u, s, b2)  # noqa: E702
                            u, s = load_i8x32(qa, x2 + k), load_i8x32(qs, x2 + k)
                            a20 = dot_i8(a20, u, s, b0); a21 = dot_i8(a21, u, s, b1); a22 = dot_i8(a22, u, s, b2)  # noqa: E702
                            u, s = load_i8x32(qa, x3 + k), load_i8x32(qs, x3 + k)
                            a30 = dot_i8(a30, u, s, b0); a31 = dot_i8(a31, u, s, b1); a32 = dot_i8(a32, u, s, b2)  # noqa: E702
                        acc[0], acc[1], acc[2] = hsum_i32x8(a00), hsum_i32x8(a01), hsum_i32x8(a02)
                        acc[3], acc[4], acc[5] = hsum_i32x8(a10), hsum_i32x8(a11), hsum_i32x8(a12)
                        acc[6], acc[7], acc[8] = hsum_i32x8(a20), hsum_i32x8(a21), hsum_i32x8(a22)
                        acc[9], acc[10], acc[11] = hsum_i32x8(a30), hsum_i32x8(a31), hsum_i32x8(a32)
                    else:
                        for i in range(rows):
                            c0 = zero_i32x8(); c1 = zero_i32x8(); c2 = zero_i32x8()  # noqa: E702
                            x0 = (r + i) * width
                            for k in range(k0, k0 + padded, LANES):
                                u, s = load_i8x32(qa, x0 + k), load_i8x32(qs, x0 + k)
                                c0 = dot_i8(c0, u, s, load_i8x32(wf, w0 + k))
                                c1 = dot_i8(c1, u, s, load_i8x32(wf, w1 + k))
                                c2 = dot_i8(c2, u, s, load_i8x32(wf, w2 + k))
                            acc[i * 3], acc[i * 3 + 1], acc[i * 3 + 2] = hsum_i32x8(c0), hsum_i32x8(c1), hsum_i32x8(c2)
                    for i in range(rows):
                        for c in range(3):
                            if j + c < n_out:
                                f[i, c] += np.float32(acc[i * 3 + c]) * w_scale[j + c, g]
                _emit(f, rows, r, j, min(3, n_out - j), x_scale, bias, relu, out)
                r += rows

    @njit(cache=True, boundscheck=False, nogil=True)
    def _block_512(a, x_scale, w, w_scale, offset, n_out, groups, padded, r0, r1, t0, t1, bias, relu, out):
        """Output rows ``r0:r1`` x column tiles ``t0:t1`` (64 outputs each), 512-bit ``vpdpbusd`` variant."""
        width = groups * padded
        qa = a.reshape(-1)
        acc = np.empty((4, TILE_512), dtype=np.int32)
        flat = acc.reshape(-1)
        f = np.empty((4, TILE_512), dtype=np.float32)
        for t in range(t0, t1):
            wf = w[t]
            c0 = t * TILE_512
            for r in range(r0, r1, 4):
                rows = min(4, r1 - r)
                f[:] = 0.0
                for g in range(groups):
                    wg, xg = g * padded * TILE_512, g * padded
                    if rows == 4:
                        a00 = zero_i32x16(); a01 = zero_i32x16(); a02 = zero_i32x16(); a03 = zero_i32x16()  # noqa: E702
                        a10 = zero_i32x16(); a11 = zero_i32x16(); a12 = zero_i32x16(); a13 = zero_i32x16()  # noqa: E702
                        a20 = zero_i32x16(); a21 = zero_i32x16(); a22 = zero_i32x16(); a23 = zero_i32x16()  # noqa: E702
                        a30 = zero_i32x16(); a31 = zero_i32x16(); a32 = zero_i32x16(); a33 = zero_i32x16()  # noqa: E702
                        x0 = r * width + xg
                        x1, x2, x3 = x0 + width, x0 + 2 * width, x0 + 3 * width
                        for k in range(0, padded, 4):
                            wk = wg + k * TILE_512
                            b0, b1 = load_i32x16(wf, wk), load_i32x16(wf, wk + 64)
                            b2, b3 = load_i32x16(wf, wk + 128), load_i32x16(wf, wk + 192)
                            u = bcast_u8x4(qa, x0 + k)
                            a00 = dpbusd(a00, u, b0); a01 = dpbusd(a01, u, b1); a02 = dpbusd(a02, u, b2); a03 = dpbusd(a03, u, b3)  # noqa: E501, E702
                            u = bcast_u8x4(qa, x1 + k)
                            a10 = dpbusd(a10, u, b0); a11 = dpbusd(a11, u, b1); a12 = dpbusd(a12, u, b2); a13 = dpbusd(a13, u, b3)  # noqa: E501, E702
                            u = bcast_u8x4(qa, x2 + k)
                            a20 = dpbusd(a20, u, b0); a21 = dpbusd(a21, u, b1); a22 = dpbusd(a22, u, b2); a23 = dpbusd(a23, u, b3)  # noqa: E501, E702
                            u = bcast_u8x4(qa, x3 + k)
                            a30 = dpbusd(a30, u, b0); a31 = dpbusd(a31, u, b1); a32 = dpbusd(a32, u, b2); a33 = dpbusd(a33, u, b3)  # noqa: E501, E702
                        store_i32x16(flat, 0, a00); store_i32x16(flat, 16, a01); store_i32x16(flat, 32, a02); store_i32x16(flat, 48, a03)  # noqa: E501, E702
                        store_i32x16(flat, 64, a10); store_i32x16(flat, 80, a11); store_i32x16(flat, 96, a12); store_i32x16(flat, 112, a13)  # noqa: E501, E702
                        store_i32x16(flat, 128, a20); store_i32x16(flat, 144, a21); store_i32x16(flat, 160, a22); store_i32x16(flat, 176, a23)  # noqa: E501, E702
                        store_i32x16(flat, 192, a30); store_i32x16(flat, 208, a31); store_i32x16(flat, 224, a32); store_i32x16(flat, 240, a33)  # noqa: E501, E702
                    else:
                        for i in range(rows):
                            c_0 = zero_i32x16(); c_1 = zero_i32x16(); c_2 = zero_i32x16(); c_3 = zero_i32x16()  # noqa: E702
                            x0 = (r + i) * width + xg
                            for k in range(0, padded, 4):
                                wk = wg + k * TILE_512
                                u = bcast_u8x4(qa, x0 + k)
                                c_0 = dpbusd(c_0, u, load_i32x16(wf, wk))
                                c_1 = dpbusd(c_1, u, load_i32x16(wf, wk + 64))
                                c_2 = dpbusd(c_2, u, load_i32x16(wf, wk + 128))
                                c_3 = dpbusd(c_3, u, load_i32x16(wf, wk + 192))
                            o = i * TILE_512
                            store_i32x16(flat, o, c_0); store_i32x16(flat, o + 16, c_1)  # noqa: E702
                            store_i32x16(flat, o + 32, c_2); store_i32x16(flat, o + 48, c_3)  # noqa: E702
                    off, sc = offset[g, c0 : c0 + TILE_512], w_scale[g, c0 : c0 + TILE_512]
                    for i in range(rows):
                        for c in range(TILE_512):
                            f[i, c] += np.float32(acc[i, c] - off[c]) * sc[c]
                _emit(f, rows, r, c0, min(TILE_512, n_out - c0), x_scale, bias, relu, out)

    @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
    def gemm_avx2(a, b, x_scale, w, w_scale, n_out, groups, padded, bias, relu, out, parallel):
        """All outputs (avx2 layout); with ``parallel``, row chunk x column block items over the numba threads."""
        m = a.shape[0]
        n_tiles = (n_out + 2) // 3
        if not parallel:
            _block_avx2(a, b, x_scale, w, w_scale, n_out, groups, padded, 0, m, 0, n_tiles, bias, relu, out)
            return
        tiles_per_block = COL_BLOCK // COL_TILE
        n_blocks = (n_tiles + tiles_per_block - 1) // tiles_per_block
        chunk = ROW_CHUNK if m > 2 * ROW_CHUNK else m
        n_chunks = (m + chunk - 1) // chunk
        for item in prange(n_chunks * n_blocks):
            r0 = (item // n_blocks) * chunk
            t0 = (item % n_blocks) * tiles_per_block
            _block_avx2(a, b, x_scale, w, w_scale, n_out, groups, padded, r0, min(m, r0 + chunk), t0,
                        min(n_tiles, t0 + tiles_per_block), bias, relu, out)

    @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
    def gemm_512(a, x_scale, w, w_scale, offset, n_out, groups, padded, bias, relu, out, parallel):
        """All outputs (avx512vnni layout); with ``parallel``, row chunk x column tile items over the threads."""
        m, n_tiles = a.shape[0], w.shape[0]
        if not parallel:
            _block_512(a, x_scale, w, w_scale, offset, n_out, groups, padded, 0, m, 0, n_tiles, bias, relu, out)
            return
        chunk = ROW_CHUNK if m > 2 * ROW_CHUNK else m
        n_chunks = (m + chunk - 1) // chunk
        for item in prange(n_chunks * n_tiles):
            r0, t = (item // n_tiles) * chunk, item % n_tiles
            _block_512(a, x_scale, w, w_scale, offset, n_out, groups, padded, r0, min(m, r0 + chunk), t, t + 1,
                       bias, relu, out)

    def linear_np(weights: Int8Weights, x: np.ndarray, bias: np.ndarray, relu: bool) -> np.ndarray:
        """``relu?(int8 recipe(x) + bias)`` on float32 rows ``x [batch, in]`` (``bias`` may be empty)."""
        m = x.shape[0]
        groups = weights.scale.shape[0 if weights.isa == "avx512vnni" else 1]
        out = np.empty((m, weights.out_features), dtype=np.float32)
        parallel = m * weights.out_features * weights.in_features >= PARALLEL_MACS
        vnni = weights.isa == "avx512vnni"
        a, b, x_scale = quantize_rows(x, weights.group_size, groups, weights.padded_group, vnni, parallel)
        if vnni:
            gemm_512(a, x_scale, weights.codes, weights.scale, weights.offset, weights.out_features, groups,
                     weights.padded_group, bias, relu, out, parallel)
        else:
            gemm_avx2(a, b, x_scale, weights.codes, weights.scale, weights.out_features, groups,
                      weights.padded_group, bias, relu, out, parallel)
        return out

    _NO_BIAS = np.empty(0, dtype=np.float32)

    def _prepare(fmt, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> Int8Weights:
        return prepare_codes(packed["codes"], packed["scale"], shape, fmt.group_size, ISA)

    def _run(weights: Int8Weights, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(linear_np(weights, x.detach().contiguous().numpy(), _NO_BIAS, False))

    KERNEL = register_kernel(
        Kernel(
            name=f"int8-numba-{ISA}",
            formats=("int8",),
            device="cpu",
            prepare=_prepare,
            run=_run,
            cached_bytes=lambda weights: weights.cached_bytes,
            run_np=linear_np,
        )
    )
