"""Dynamic per-row int8 activations: the input side of every W·A8 kernel (int8, W4A8, W2A8, W1.58A8).

Recipe (``qwave.formats.base.int8_rows``): ``s_x = max|x_row| / 127`` in float32, ``q = clamp(rint(x / s_x), -127,
127)`` (round half to even), all codes 0 where ``s_x == 0``. ``quantize_rows`` writes the codes in the layout a
kernel reads, each weight group's codes zero-padded to ``padded`` bytes:

* ``SIGNED``: ``q`` as int8 (the signed operand of ``vpmaddubsw`` / ``vpdpbusd`` against unsigned weight codes),
  with ``sum(q)`` per row and group (int32: ``|sum| <= 127 * group size``), which the W·A8 kernels subtract.
  A flag per row tells whether any code is negative (the AVX2 int8 kernel skips its sign step on rows without).
* ``OFFSET``: ``q + 128`` as uint8 (padding 128) for the AVX-512 VNNI int8 kernel.
"""

from __future__ import annotations

import numpy as np

from qwave.kernels import FAST_KERNELS

SIGNED, OFFSET = 0, 1

if FAST_KERNELS:
    from numba import njit, prange

    from qwave.kernels._simd import activate

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
    def _quantize_row(x, i, amax, a, scale, sums, neg, group_size, padded, layout):
        n = x.shape[1]
        row, arow = x[i], a[i]
        s = np.float32(amax[i] / np.float32(127.0))
        scale[i] = s
        arow[:] = np.uint8(128) if layout == OFFSET else np.uint8(0)
        sums[i, :] = 0
        neg[i] = False
        if s == 0:
            return
        lo, hi = np.float32(-127.0), np.float32(127.0)
        any_negative = False
        for g in range((n + group_size - 1) // group_size):
            src = row[g * group_size : min(n, (g + 1) * group_size)]
            dst = arow[g * padded : (g + 1) * padded]
            offset = 128 if layout == OFFSET else 256  # codes as unsigned bytes: q + 128, or q mod 256
            total = np.int32(0)
            for k in range(src.shape[0]):
                c = np.int32(_round(min(max(src[k] / s, lo), hi)))
                total += c
                any_negative |= c < 0
                dst[k] = np.uint8((c + offset) & 0xFF)
            sums[i, g] = total
        neg[i] = any_negative

    @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
    def quantize_rows(x, group_size, groups, padded, layout, parallel):
        """``(a, q, scale, sums, neg)`` for float32 rows ``x [m, n]``: ``a`` uint8 ``[m, groups * padded]`` (the
        layout's bytes) and ``q`` its int8 view, ``scale`` float32 ``[m]``, ``sums`` int32 ``[m, groups]``, ``neg``
        bool ``[m]``."""
        m = x.shape[0]
        a = np.empty((m, groups * padded), dtype=np.uint8)
        scale = np.empty(m, dtype=np.float32)
        sums = np.empty((m, groups), dtype=np.int32)
        neg = np.empty(m, dtype=np.bool_)
        amax = abs_max_rows(x)
        if parallel:
            for i in prange(m):
                _quantize_row(x, i, amax, a, scale, sums, neg, group_size, padded, layout)
        else:
            for i in range(m):
                _quantize_row(x, i, amax, a, scale, sums, neg, group_size, padded, layout)
        return a, a.view(np.int8), scale, sums, neg

    @njit(cache=True, boundscheck=False, nogil=True)
    def emit(f, rows, r, c0, width, x_scale, bias, act, out):
        """``out[r + i, c0 + c] = act(f[i, c] * s_x[r + i] + bias[c0 + c])`` for the tile's valid outputs."""
        for i in range(rows):
            for c in range(width):
                y = f[i, c] * x_scale[r + i]
                if bias.shape[0] > 0:
                    y += bias[c0 + c]
                out[r + i, c0 + c] = activate(y, act)
