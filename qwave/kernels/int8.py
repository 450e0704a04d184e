"""int8 x int8 -> int32 linear layers: dynamic per-row int8 activations times packed int8 weights.

Recipe (the ``int8`` format's): ``s_x = max|x_row| / 127`` (float32), ``q_x = clamp(round(x / s_x), -127, 127)``
(round half to even, 0 where ``s_x == 0``), exact integer dot products per weight group, then
``y = s_x * sum_g(float(acc_g) * s_w[:, g])``. The kernel reproduces it bit for bit.

Fast path (numba): the weight codes are copied once into a kernel layout (rows padded to a multiple of three,
every group zero-padded to a multiple of 32 bytes; ``cached_bytes`` reports it). The inner loop works on a
4-row x 3-column register tile of 256-bit accumulators:

* with VNNI (``vpdpbusd``): activations are stored offset by 128 as unsigned bytes, so one instruction does 32
  exact multiply-adds; ``128 * sum(w)`` per row and group is subtracted afterwards;
* with plain AVX2: activations are stored as ``|q|`` and ``q``; ``vpsignb`` + ``vpmaddubsw`` + ``vpmaddwd``.

Small batches run on one core (no thread wake-up cost); larger ones split output blocks x row chunks over the
numba threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from qwave.kernels import FAST_KERNELS, Kernel, register_kernel

ROW_TILE, COL_TILE, LANES = 4, 3, 32
COL_BLOCK = 16 * COL_TILE  # output columns per work item: 48 rows of a 1536-wide int8 matrix = 72 KiB
ROW_CHUNK = 64  # batch rows per work item
PARALLEL_MACS = 1 << 21  # below this many multiply-adds a call stays on one thread


@dataclass
class Int8Weights:
    """Weight codes in the kernel layout, kept on the layer between calls."""

    codes: np.ndarray  # int8 [ceil(out/3)*3, groups * padded_group]
    scale: np.ndarray  # float32 [out, groups]
    offset: np.ndarray  # int32 [out, groups]: 128 * sum of the group's codes on the VNNI path, else 0
    out_features: int
    in_features: int
    group_size: int
    padded_group: int

    @property
    def cached_bytes(self) -> int:
        return int(self.codes.nbytes + self.scale.nbytes + self.offset.nbytes)


def group_layout(in_features: int, group_size: int | None) -> tuple[int, int, int]:
    """``(group width, number of groups, padded group width)`` as the int8 format defines the groups."""
    size = max(1, in_features if group_size is None else min(group_size, in_features))
    return size, math.ceil(in_features / size), math.ceil(size / LANES) * LANES


def prepare_codes(
    codes: torch.Tensor, scale: torch.Tensor, shape: tuple[int, int], group_size: int | None, vnni: bool
) -> Int8Weights:
    """Kernel layout from int8 codes ``[out, in]`` (or their uint8 view) and fp16 scales ``[out, groups]``."""
    out_features, in_features = shape
    size, groups, padded = group_layout(in_features, group_size)
    rows = math.ceil(out_features / COL_TILE) * COL_TILE
    w = codes.detach().cpu().contiguous().view(torch.int8).numpy()
    full = np.zeros((out_features, groups * size), dtype=np.int8)
    full[:, :in_features] = w
    grouped = full.reshape(out_features, groups, size)
    padded_w = np.zeros((rows, groups, padded), dtype=np.int8)
    padded_w[:out_features, :, :size] = grouped
    offset = 128 * grouped.astype(np.int32).sum(axis=2) if vnni else np.zeros((out_features, groups), np.int32)
    return Int8Weights(
        codes=padded_w.reshape(rows, groups * padded),
        scale=np.ascontiguousarray(scale.detach().cpu().float().numpy().reshape(out_features, groups)),
        offset=np.ascontiguousarray(offset.astype(np.int32)),
        out_features=out_features,
        in_features=in_features,
        group_size=size,
        padded_group=padded,
    )


if FAST_KERNELS:
    from numba import njit, prange

    from qwave.kernels._simd import HAS_VNNI, dot_i8, dot_u8s8, hsum_i32x8, load_i8x32, zero_i32x8

    # The host CPU's features are part of numba's cache key, so this choice never goes stale in the cache.
    _dot = dot_u8s8 if HAS_VNNI else dot_i8

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
                    dst_a[k] = np.uint8(np.int32(min(max(np.rint(src[k] / s), lo), hi)) + 128)
            else:
                for k in range(src.shape[0]):
                    c = np.int32(min(max(np.rint(src[k] / s), lo), hi))
                    dst_a[k] = np.uint8(abs(c))
                    dst_b[k] = np.int8(c)

    @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
    def quantize_rows(x, group_size, groups, padded, vnni):
        """Per-row int8 activations in the padded kernel layout: ``(a, b, scale)``; VNNI: ``a = q + 128`` and
        ``b`` is ``a`` itself, otherwise ``a = |q|``, ``b = q``."""
        m = x.shape[0]
        a = np.empty((m, groups * padded), dtype=np.uint8) if vnni else np.zeros((m, groups * padded), np.uint8)
        b = a.view(np.int8) if vnni else np.zeros((m, groups * padded), dtype=np.int8)
        scale = np.empty(m, dtype=np.float32)
        amax = abs_max_rows(x)
        for i in prange(m):
            _quantize_row(x, i, amax, a, b, scale, group_size, padded, vnni)
        return a, b, scale

    @njit(cache=True, boundscheck=False, nogil=True)
    def quantize_rows_serial(x, group_size, groups, padded, vnni):
        """``quantize_rows`` on the calling thread (small batches)."""
        m = x.shape[0]
        a = np.empty((m, groups * padded), dtype=np.uint8) if vnni else np.zeros((m, groups * padded), np.uint8)
        b = a.view(np.int8) if vnni else np.zeros((m, groups * padded), dtype=np.int8)
        scale = np.empty(m, dtype=np.float32)
        amax = abs_max_rows(x)
        for i in range(m):
            _quantize_row(x, i, amax, a, b, scale, group_size, padded, vnni)
        return a, b, scale

    @njit(cache=True, boundscheck=False, nogil=True)
    def _finish(f, acc, rows, j, g, n_out, w_scale, offset):
        for i in range(rows):
            for c in range(3):
                if j + c < n_out:
                    f[i, c] += np.float32(acc[i * 3 + c] - offset[j + c, g]) * w_scale[j + c, g]

    @njit(cache=True, boundscheck=False, nogil=True)
    def _block(a, b, x_scale, w, w_scale, offset, n_out, groups, padded, r0, r1, t0, t1, bias, relu, out):
        """Output rows ``r0:r1`` x weight column tiles ``t0:t1`` (3 outputs each) of the int8 recipe."""
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
                            a00 = _dot(a00, u, s, b0); a01 = _dot(a01, u, s, b1); a02 = _dot(a02, u, s, b2)  # noqa: E702
                            u, s = load_i8x32(qa, x1 + k), load_i8x32(qs, x1 + k)
                            a10 = _dot(a10, u, s, b0); a11 = _dot(a11, u, s, b1); a12 = _dot(a12, u, s, b2)  # noqa: E702
                            u, s = load_i8x32(qa, x2 + k), load_i8x32(qs, x2 + k)
                            a20 = _dot(a20, u, s, b0); a21 = _dot(a21, u, s, b1); a22 = _dot(a22, u, s, b2)  # noqa: E702
                            u, s = load_i8x32(qa, x3 + k), load_i8x32(qs, x3 + k)
                            a30 = _dot(a30, u, s, b0); a31 = _dot(a31, u, s, b1); a32 = _dot(a32, u, s, b2)  # noqa: E702
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
                                c0 = _dot(c0, u, s, load_i8x32(wf, w0 + k))
                                c1 = _dot(c1, u, s, load_i8x32(wf, w1 + k))
                                c2 = _dot(c2, u, s, load_i8x32(wf, w2 + k))
                            acc[i * 3], acc[i * 3 + 1], acc[i * 3 + 2] = hsum_i32x8(c0), hsum_i32x8(c1), hsum_i32x8(c2)
                    _finish(f, acc, rows, j, g, n_out, w_scale, offset)
                for i in range(rows):
                    for c in range(3):
                        if j + c < n_out:
                            y = f[i, c] * x_scale[r + i]
                            if bias.shape[0] > 0:
                                y += bias[j + c]
                            if relu and y < 0:
                                y = np.float32(0.0)
                            out[r + i, j + c] = y
                r += rows

    @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
    def gemm_parallel(a, b, x_scale, w, w_scale, offset, n_out, groups, padded, bias, relu, out):
        """All outputs, work items (row chunk x block of output columns) spread over the numba threads."""
        m = a.shape[0]
        n_tiles = (n_out + 2) // 3
        tiles_per_block = COL_BLOCK // COL_TILE
        n_blocks = (n_tiles + tiles_per_block - 1) // tiles_per_block
        chunk = ROW_CHUNK if m > 2 * ROW_CHUNK else m
        n_chunks = (m + chunk - 1) // chunk
        for item in prange(n_chunks * n_blocks):
            r0 = (item // n_blocks) * chunk
            t0 = (item % n_blocks) * tiles_per_block
            _block(a, b, x_scale, w, w_scale, offset, n_out, groups, padded, r0, min(m, r0 + chunk), t0,
                   min(n_tiles, t0 + tiles_per_block), bias, relu, out)

    @njit(cache=True, boundscheck=False, nogil=True)
    def gemm_serial(a, b, x_scale, w, w_scale, offset, n_out, groups, padded, bias, relu, out):
        """All outputs on the calling thread."""
        _block(a, b, x_scale, w, w_scale, offset, n_out, groups, padded, 0, a.shape[0], 0, (n_out + 2) // 3,
               bias, relu, out)

    @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
    def int_dot(a, b, w, offset, n_out, groups, padded):
        """Exact int32 accumulators ``[rows, out, groups]`` of the kernel's inner loop (for tests)."""
        m = a.shape[0]
        width = groups * padded
        qa = a.reshape(-1).view(np.int8)
        qs = b.reshape(-1)
        wf = w.reshape(-1)
        acc = np.empty((m, n_out, groups), dtype=np.int64)
        for i in prange(m):
            for j in range(n_out):
                for g in range(groups):
                    s = zero_i32x8()
                    for k in range(g * padded, (g + 1) * padded, LANES):
                        s = _dot(s, load_i8x32(qa, i * width + k), load_i8x32(qs, i * width + k),
                                 load_i8x32(wf, j * width + k))
                    acc[i, j, g] = hsum_i32x8(s) - offset[j, g]
        return acc

    def linear_np(weights: Int8Weights, x: np.ndarray, bias: np.ndarray, relu: bool) -> np.ndarray:
        """``relu?(int8 recipe(x) + bias)`` on float32 rows ``x [batch, in]`` (``bias`` may be empty)."""
        m = x.shape[0]
        groups = weights.scale.shape[1]
        out = np.empty((m, weights.out_features), dtype=np.float32)
        small = m * weights.out_features * weights.in_features < PARALLEL_MACS
        quantize = quantize_rows_serial if small else quantize_rows
        a, b, x_scale = quantize(x, weights.group_size, groups, weights.padded_group, HAS_VNNI)
        gemm = gemm_serial if small else gemm_parallel
        gemm(a, b, x_scale, weights.codes, weights.scale, weights.offset, weights.out_features, groups,
             weights.padded_group, bias, relu, out)
        return out

    _NO_BIAS = np.empty(0, dtype=np.float32)

    def _prepare(fmt, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> Int8Weights:
        return prepare_codes(packed["codes"], packed["scale"], shape, fmt.group_size, HAS_VNNI)

    def _run(weights: Int8Weights, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(linear_np(weights, x.detach().contiguous().numpy(), _NO_BIAS, False))

    KERNEL = register_kernel(
        Kernel(
            name="int8-numba-vnni" if HAS_VNNI else "int8-numba-avx2",
            formats=("int8",),
            device="cpu",
            prepare=_prepare,
            run=_run,
            cached_bytes=lambda weights: weights.cached_bytes,
            run_np=linear_np,
        )
    )
