"""Dynamic per-row activations on 128 levels with a zero point: the input side of every W·A8 kernel (int8, W4A8, W2A8,
W1.58A8).

Recipe (``qwave.formats.base.quantize_rows_int8``): ``lo = min(x_row, 0)``, ``hi = max(x_row, 0)``, float32 scale
``s = (hi - lo) / 127``, zero point ``z = clamp(rint(-lo / s), 0, 127)``, codes ``q = clamp(rint(x / s) + z, 0,
127)`` (round half to even), all 0 where ``s == 0``. ``quantize_rows`` writes the codes as bytes below 128, each
weight group's codes zero-padded to ``padded`` bytes: the unsigned operand of ``vpmaddubsw`` / ``vpdpbusd`` against
signed int8 weights (a pair ``2 * 127 * 128 < 2^15`` never saturates), and equally a non-negative signed operand
against unsigned low-bit weight codes. With them come ``sum(q)`` per row and group (int32), which the low-bit
kernels subtract ``beta`` times, and ``z`` per row, which every kernel subtracts times its weights' column sums.
"""

from __future__ import annotations

import numpy as np

from qwave.kernels import FAST_KERNELS

ROWS = 8  # rows per work item of a parallel quantization

if FAST_KERNELS:
    from numba import njit, prange

    from qwave.kernels._simd import activate
    from qwave.kernels.work import MAX_THREADS, new_counter, take

    @njit(cache=True, boundscheck=False, nogil=True)
    def _row_range(bits):
        """``(max(x_row, 0), -min(x_row, 0))`` exactly, from the float32 bit patterns as int32: non-negative floats
        order like their patterns, and flipping the sign bit maps ``-v`` to ``v``'s pattern; two integer maxima
        (which vectorize, unlike float ones)."""
        top, bottom = np.int32(0), np.int32(0)
        flip = np.int32(-0x80000000)
        for k in range(bits.shape[0]):
            b = bits[k]
            top = max(top, b)
            bottom = max(bottom, np.int32(b ^ flip))  # int32: numba widens ``^`` to int64 (no AVX2 int64 max)
        return top, bottom

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _round(v):
        """``rint(v)`` (half to even) for float32 ``|v| <= 255``: adding and removing 1.5 * 2^23 rounds to an
        integer in float32 arithmetic, and unlike ``rint`` it vectorizes. Clamping to integer bounds before rounding
        is the same as clamping after it."""
        magic = np.float32(12582912.0)
        return (v + magic) - magic

    @njit(cache=True, boundscheck=False, nogil=True)
    def _codes(src, dst, s, lo_b, hi_b, z):
        """``dst[k] = rint(clamp(src[k] / s, lo_b, hi_b)) + z``: a loop of its own, so that it vectorizes (inside
        ``_quantize_row`` with the code sum it did not; with ``_code_sum`` and the int32 row range, 256 x 1536 rows
        on AVX2 226 -> 118 us)."""
        for k in range(src.shape[0]):
            v = src[k] / s
            v = v if v > lo_b else lo_b
            v = v if v < hi_b else hi_b
            dst[k] = np.uint8(np.int32(_round(v)) + z)

    @njit(cache=True, boundscheck=False, nogil=True)
    def _code_sum(codes, n):
        """``sum(codes[:n])`` in wrapping int32 (exact: ``n * 127 < 2^31``; numba would widen ``+=`` to int64)."""
        total = np.int32(0)
        for k in range(n):
            total = np.int32(total + np.int32(codes[k]))
        return total

    @njit(cache=True, boundscheck=False, nogil=True)
    def _quantize_row(x, i, a, scale, zero, sums, group_size, padded, ranges):
        n = x.shape[1]
        row, arow = x[i], a[i]
        top, bottom = _row_range(row.view(np.int32))
        ranges[i, 0], ranges[i, 1] = top, bottom
        hi = ranges[i].view(np.float32)  # max(x_row, 0), -min(x_row, 0)
        s = np.float32(hi[0] + hi[1]) / np.float32(127.0)  # (hi - lo) / 127 with lo = -hi[1]
        scale[i] = s
        if s == 0:  # an all-zero row: every code, sum and the zero point 0
            arow[:] = np.uint8(0)
            sums[i, :] = 0
            zero[i] = 0
            return
        z = np.int32(min(_round(hi[1] / s), np.float32(127.0)))
        zero[i] = z
        lo_b, hi_b = np.float32(-z), np.float32(127 - z)
        for g in range((n + group_size - 1) // group_size):
            src = row[g * group_size : min(n, (g + 1) * group_size)]
            dst = arow[g * padded : (g + 1) * padded]
            dst[src.shape[0] :] = np.uint8(0)  # the group's padding
            _codes(src, dst, s, lo_b, hi_b, z)
            sums[i, g] = _code_sum(dst, src.shape[0])

    @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
    def quantize_rows(x, group_size, groups, padded, parallel):
        """``(a, scale, zero, sums)`` for float32 rows ``x [m, n]``: codes ``a`` uint8 ``[m, groups * padded]``,
        ``scale`` float32 ``[m]``, zero points ``zero`` int32 ``[m]``, ``sums`` int32 ``[m, groups]``."""
        m = x.shape[0]
        a = np.empty((m, groups * padded), dtype=np.uint8)
        scale = np.empty(m, dtype=np.float32)
        zero = np.empty(m, dtype=np.int32)
        sums = np.empty((m, groups), dtype=np.int32)
        ranges = np.empty((m, 2), dtype=np.int32)
        if parallel:  # chunks of ROWS rows handed out one at a time (``qwave.kernels.work``)
            n_items, counter = (m + ROWS - 1) // ROWS, new_counter()
            for _ in prange(min(n_items, MAX_THREADS)):
                item = take(counter)
                while item < n_items:
                    for i in range(item * ROWS, min(m, item * ROWS + ROWS)):
                        _quantize_row(x, i, a, scale, zero, sums, group_size, padded, ranges)
                    item = take(counter)
        else:
            for i in range(m):
                _quantize_row(x, i, a, scale, zero, sums, group_size, padded, ranges)
        return a, scale, zero, sums

    @njit(cache=True, boundscheck=False, nogil=True)
    def emit(f, rows, r, c0, width, x_scale, bias, act, out):
        """``out[r + i, c0 + c] = act(f[i, c] * s_x[r + i] + bias[c0 + c])`` for the tile's valid outputs."""
        for i in range(rows):
            for c in range(width):
                y = f[i, c] * x_scale[r + i]
                if bias.shape[0] > 0:
                    y += bias[c0 + c]
                out[r + i, c0 + c] = activate(y, act)
