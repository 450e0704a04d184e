"""Bitwise linear layers: ``binary`` (XNOR-popcount) and ``qesc`` (AND-popcount over ternary bit-planes).

Both sides live in 64-bit words (the formats' packed layout, bit ``j`` of word ``i`` is element ``64*i + j``).

* binary: activations become sign bits (``x >= 0``) with scale ``mean|x_row|``;
  ``dot = n - 2 * popcount(x XOR w)`` and ``y = float(dot) * s_x * s_w``.
* qesc: activations become trits ``clamp(rint(x / s_x), -1, 1)`` with ``s_x = mean|x_row|``, stored as ``plus``
  and ``minus`` planes. A trit is never +1 and -1 at once, so the four AND-popcounts of the reference fold into
  two: ``dot = pop((x+ & w+) | (x- & w-)) - pop((x+ & w-) | (x- & w+))``.

The integer dot products are exact. The activation scale ``mean|x|`` is summed in float64 here, so it may differ
from the reference's float32 mean in the last bit (and a qesc trit exactly at a rounding boundary may flip):
tests compare the integer dots exactly and the float outputs to float32 rounding.

The weight planes are stored transposed (``[words, outputs]``), so one 8-word vector load serves 8 outputs and
each activation word is broadcast: a register tile of 4 rows x 16 outputs keeps its 8 accumulators in registers
over the whole reduction (``vpopcntq`` with AVX512-VPOPCNTDQ, LLVM's nibble lookup on plain AVX2). Small batches
stay on one thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qwave.kernels import FAST_KERNELS, Kernel, register_kernel

PARALLEL_WORDS = 1 << 15  # below this many (row, output, word) triples a call stays on one thread
ROW_CHUNK, COL_BLOCK = 64, 64
VEC_TILE = 16  # outputs per register tile: two vectors of 8 words


@dataclass
class BitWeights:
    """Transposed uint64 copies of the weight bit-planes (binary: one; qesc: ``plus``, ``minus``), float32 scales."""

    planes: tuple[np.ndarray, ...]  # uint64 [words, out padded to 16]: transposed, so one load feeds 8 outputs
    scale: np.ndarray  # float32 [out]
    out_features: int
    in_features: int

    @property
    def cached_bytes(self) -> int:
        return int(sum(p.nbytes for p in self.planes) + self.scale.nbytes)


def _words(t: torch.Tensor) -> np.ndarray:
    words = t.detach().cpu().numpy().view(np.uint64).T
    out = np.zeros((words.shape[0], -(-words.shape[1] // VEC_TILE) * VEC_TILE), dtype=np.uint64)
    out[:, : words.shape[1]] = words
    return out


def prepare_bits(planes: tuple[torch.Tensor, ...], scale: torch.Tensor, shape: tuple[int, int]) -> BitWeights:
    """Kernel state from packed int64 word planes ``[out, words]`` and fp16 scales ``[out, 1]``."""
    return BitWeights(
        planes=tuple(_words(p) for p in planes),
        scale=np.ascontiguousarray(scale.detach().cpu().float().numpy().reshape(-1)),
        out_features=int(shape[0]),
        in_features=int(shape[1]),
    )


if FAST_KERNELS:
    from numba import njit, prange

    from qwave.kernels._simd import (
        bcast_i64x8,
        load_i64x8,
        popcount_i64,
        store,
        vadd,
        vand,
        vor,
        vsub,
        vxor,
        zero_i64x8,
    )

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def xor_popcount_add(acc, x, w):
        return vadd(acc, popcount_i64(vxor(x, w)))

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def trit_popcount_add(acc, p, m, wp, wm):
        same = vor(vand(p, wp), vand(m, wm))
        diff = vor(vand(p, wm), vand(m, wp))
        return vsub(vadd(acc, popcount_i64(same)), popcount_i64(diff))

    @njit(cache=True, boundscheck=False, nogil=True, fastmath={"reassoc", "nsz", "contract"})
    def _abs_mean(row):
        total = 0.0
        for k in range(row.shape[0]):
            total += abs(np.float64(row[k]))
        return np.float32(total / row.shape[0])

    @njit(cache=True, boundscheck=False, nogil=True)
    def _sign_row(row, out):
        n = row.shape[0]
        full = n // 64
        for w in range(full):
            word = np.uint64(0)
            for j in range(64):  # a fixed trip count lets LLVM vectorize the compare-shift-or
                word |= np.uint64(row[64 * w + j] >= 0) << np.uint64(j)
            out[w] = word
        if full < out.shape[0]:
            word = np.uint64(0)
            for j in range(n - 64 * full):
                word |= np.uint64(row[64 * full + j] >= 0) << np.uint64(j)
            out[full] = word

    @njit(cache=True, boundscheck=False, nogil=True)
    def _trit_word(chunk, s):
        p, q = np.uint64(0), np.uint64(0)
        for j in range(chunk.shape[0]):
            v = np.rint(chunk[j] / s)
            p |= np.uint64(v > 0) << np.uint64(j)
            q |= np.uint64(v < 0) << np.uint64(j)
        return p, q

    @njit(cache=True, boundscheck=False, nogil=True)
    def _trit_row(row, s, plus, minus):
        n = row.shape[0]
        if s == 0:
            plus[:] = 0
            minus[:] = 0
            return
        for w in range(plus.shape[0]):
            plus[w], minus[w] = _trit_word(row[64 * w : min(n, 64 * w + 64)], s)

    @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
    def pack_signs(x, parallel):
        """Sign bits ``[m, ceil(n/64)]`` (uint64) and ``mean|x|`` scales of float32 rows ``x``."""
        m, n = x.shape
        bits = np.empty((m, (n + 63) // 64), dtype=np.uint64)
        scale = np.empty(m, dtype=np.float32)
        if parallel:
            for i in prange(m):
                scale[i] = _abs_mean(x[i])
                _sign_row(x[i], bits[i])
        else:
            for i in range(m):
                scale[i] = _abs_mean(x[i])
                _sign_row(x[i], bits[i])
        return bits, scale

    @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
    def pack_trits(x, parallel):
        """``plus`` / ``minus`` planes ``[m, ceil(n/64)]`` (uint64) and ``mean|x|`` scales of float32 rows ``x``."""
        m, n = x.shape
        plus = np.empty((m, (n + 63) // 64), dtype=np.uint64)
        minus = np.empty((m, (n + 63) // 64), dtype=np.uint64)
        scale = np.empty(m, dtype=np.float32)
        if parallel:
            for i in prange(m):
                scale[i] = _abs_mean(x[i])
                _trit_row(x[i], scale[i], plus[i], minus[i])
        else:
            for i in range(m):
                scale[i] = _abs_mean(x[i])
                _trit_row(x[i], scale[i], plus[i], minus[i])
        return plus, minus, scale

    @njit(cache=True, boundscheck=False, nogil=True)
    def _emit(acc, rows, r0, c0, width, x_scale, w_scale, bias, relu, out):
        for r in range(rows):
            for c in range(width):
                y = np.float32(acc[r, c]) * x_scale[r0 + r] * w_scale[c0 + c]
                if bias.shape[0] > 0:
                    y += bias[c0 + c]
                if relu and y < 0:
                    y = np.float32(0.0)
                out[r0 + r, c0 + c] = y

    @njit(cache=True, boundscheck=False, nogil=True)
    def _binary_block(xb, x_scale, wt, w_scale, n, r0, r1, c0, c1, bias, relu, out):
        """Rows ``r0:r1`` x outputs ``c0:c1``: register tiles of 4 rows x 16 outputs (two 8-word vectors)."""
        stride = wt.shape[1]
        wf = wt.reshape(-1)
        acc = np.empty((4, VEC_TILE), dtype=np.int64)
        flat = acc.reshape(-1)
        for c in range(c0, c1, VEC_TILE):
            width = min(VEC_TILE, c1 - c)
            for r in range(r0, r1, 4):
                rows = min(4, r1 - r)
                if rows == 4:
                    a00 = zero_i64x8(); a01 = zero_i64x8(); a10 = zero_i64x8(); a11 = zero_i64x8()  # noqa: E702
                    a20 = zero_i64x8(); a21 = zero_i64x8(); a30 = zero_i64x8(); a31 = zero_i64x8()  # noqa: E702
                    for k in range(xb.shape[1]):
                        w0, w1 = load_i64x8(wf, k * stride + c), load_i64x8(wf, k * stride + c + 8)
                        x = bcast_i64x8(xb[r, k])
                        a00 = xor_popcount_add(a00, x, w0); a01 = xor_popcount_add(a01, x, w1)  # noqa: E702
                        x = bcast_i64x8(xb[r + 1, k])
                        a10 = xor_popcount_add(a10, x, w0); a11 = xor_popcount_add(a11, x, w1)  # noqa: E702
                        x = bcast_i64x8(xb[r + 2, k])
                        a20 = xor_popcount_add(a20, x, w0); a21 = xor_popcount_add(a21, x, w1)  # noqa: E702
                        x = bcast_i64x8(xb[r + 3, k])
                        a30 = xor_popcount_add(a30, x, w0); a31 = xor_popcount_add(a31, x, w1)  # noqa: E702
                    store(flat, 0, a00); store(flat, 8, a01); store(flat, 16, a10)  # noqa: E702
                    store(flat, 24, a11); store(flat, 32, a20); store(flat, 40, a21)  # noqa: E702
                    store(flat, 48, a30); store(flat, 56, a31)  # noqa: E702
                else:
                    for i in range(rows):
                        a00 = zero_i64x8(); a01 = zero_i64x8()  # noqa: E702
                        for k in range(xb.shape[1]):
                            x = bcast_i64x8(xb[r + i, k])
                            a00 = xor_popcount_add(a00, x, load_i64x8(wf, k * stride + c))
                            a01 = xor_popcount_add(a01, x, load_i64x8(wf, k * stride + c + 8))
                        store(flat, i * VEC_TILE, a00); store(flat, i * VEC_TILE + 8, a01)  # noqa: E702
                for i in range(rows):
                    for j in range(width):
                        acc[i, j] = n - 2 * acc[i, j]
                _emit(acc, rows, r, c, width, x_scale, w_scale, bias, relu, out)

    @njit(cache=True, boundscheck=False, nogil=True)
    def _qesc_block(xp, xm, x_scale, wpt, wmt, w_scale, r0, r1, c0, c1, bias, relu, out):
        """Rows ``r0:r1`` x outputs ``c0:c1``: register tiles of 4 rows x 16 outputs over both trit planes."""
        stride = wpt.shape[1]
        wpf, wmf = wpt.reshape(-1), wmt.reshape(-1)
        acc = np.empty((4, VEC_TILE), dtype=np.int64)
        flat = acc.reshape(-1)
        for c in range(c0, c1, VEC_TILE):
            width = min(VEC_TILE, c1 - c)
            for r in range(r0, r1, 4):
                rows = min(4, r1 - r)
                if rows == 4:
                    a00 = zero_i64x8(); a01 = zero_i64x8(); a10 = zero_i64x8(); a11 = zero_i64x8()  # noqa: E702
                    a20 = zero_i64x8(); a21 = zero_i64x8(); a30 = zero_i64x8(); a31 = zero_i64x8()  # noqa: E702
                    for k in range(xp.shape[1]):
                        o = k * stride + c
                        p0, p1 = load_i64x8(wpf, o), load_i64x8(wpf, o + 8)
                        q0, q1 = load_i64x8(wmf, o), load_i64x8(wmf, o + 8)
                        xa, xb_ = bcast_i64x8(xp[r, k]), bcast_i64x8(xm[r, k])
                        a00 = trit_popcount_add(a00, xa, xb_, p0, q0); a01 = trit_popcount_add(a01, xa, xb_, p1, q1)  # noqa: E702
                        xa, xb_ = bcast_i64x8(xp[r + 1, k]), bcast_i64x8(xm[r + 1, k])
                        a10 = trit_popcount_add(a10, xa, xb_, p0, q0); a11 = trit_popcount_add(a11, xa, xb_, p1, q1)  # noqa: E702
                        xa, xb_ = bcast_i64x8(xp[r + 2, k]), bcast_i64x8(xm[r + 2, k])
                        a20 = trit_popcount_add(a20, xa, xb_, p0, q0); a21 = trit_popcount_add(a21, xa, xb_, p1, q1)  # noqa: E702
                        xa, xb_ = bcast_i64x8(xp[r + 3, k]), bcast_i64x8(xm[r + 3, k])
                        a30 = trit_popcount_add(a30, xa, xb_, p0, q0); a31 = trit_popcount_add(a31, xa, xb_, p1, q1)  # noqa: E702
                    store(flat, 0, a00); store(flat, 8, a01); store(flat, 16, a10)  # noqa: E702
                    store(flat, 24, a11); store(flat, 32, a20); store(flat, 40, a21)  # noqa: E702
                    store(flat, 48, a30); store(flat, 56, a31)  # noqa: E702
                else:
                    for i in range(rows):
                        a00 = zero_i64x8(); a01 = zero_i64x8()  # noqa: E702
                        for k in range(xp.shape[1]):
                            o = k * stride + c
                            xa, xb_ = bcast_i64x8(xp[r + i, k]), bcast_i64x8(xm[r + i, k])
                            a00 = trit_popcount_add(a00, xa, xb_, load_i64x8(wpf, o), load_i64x8(wmf, o))
                            a01 = trit_popcount_add(a01, xa, xb_, load_i64x8(wpf, o + 8), load_i64x8(wmf, o + 8))
                        store(flat, i * VEC_TILE, a00); store(flat, i * VEC_TILE + 8, a01)  # noqa: E702
                _emit(acc, rows, r, c, width, x_scale, w_scale, bias, relu, out)

    @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
    def binary_gemm(xb, x_scale, wt, w_scale, n, bias, relu, out, parallel):
        """``out[i, j] = relu?((n - 2 popcount(xb[i] ^ w[j])) * s_x[i] * s_w[j] + bias[j])``, ``wt = w.T``."""
        m, n_out = xb.shape[0], w_scale.shape[0]
        if not parallel:
            for c0 in range(0, n_out, COL_BLOCK):
                _binary_block(xb, x_scale, wt, w_scale, n, 0, m, c0, min(n_out, c0 + COL_BLOCK), bias, relu, out)
            return
        n_blocks = (n_out + COL_BLOCK - 1) // COL_BLOCK
        chunk = ROW_CHUNK if m > 2 * ROW_CHUNK else m
        n_chunks = (m + chunk - 1) // chunk
        for item in prange(n_chunks * n_blocks):
            r0, c0 = (item // n_blocks) * chunk, (item % n_blocks) * COL_BLOCK
            _binary_block(xb, x_scale, wt, w_scale, n, r0, min(m, r0 + chunk), c0, min(n_out, c0 + COL_BLOCK),
                          bias, relu, out)

    @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
    def qesc_gemm(xp, xm, x_scale, wpt, wmt, w_scale, bias, relu, out, parallel):
        """``out[i, j] = relu?(ternary dot(x[i], w[j]) * s_x[i] * s_w[j] + bias[j])`` from transposed planes."""
        m, n_out = xp.shape[0], w_scale.shape[0]
        if not parallel:
            for c0 in range(0, n_out, COL_BLOCK):
                _qesc_block(xp, xm, x_scale, wpt, wmt, w_scale, 0, m, c0, min(n_out, c0 + COL_BLOCK), bias, relu, out)
            return
        n_blocks = (n_out + COL_BLOCK - 1) // COL_BLOCK
        chunk = ROW_CHUNK if m > 2 * ROW_CHUNK else m
        n_chunks = (m + chunk - 1) // chunk
        for item in prange(n_chunks * n_blocks):
            r0, c0 = (item // n_blocks) * chunk, (item % n_blocks) * COL_BLOCK
            _qesc_block(xp, xm, x_scale, wpt, wmt, w_scale, r0, min(m, r0 + chunk), c0, min(n_out, c0 + COL_BLOCK),
                        bias, relu, out)

    def _parallel(weights: BitWeights, m: int) -> bool:
        return m * weights.out_features * weights.planes[0].shape[1] >= PARALLEL_WORDS

    def binary_np(weights: BitWeights, x: np.ndarray, bias: np.ndarray, relu: bool) -> np.ndarray:
        """``relu?(binary recipe(x) + bias)`` on float32 rows ``x [batch, in]`` (``bias`` may be empty)."""
        parallel = _parallel(weights, x.shape[0])
        bits, x_scale = pack_signs(x, parallel)
        out = np.empty((x.shape[0], weights.out_features), dtype=np.float32)
        binary_gemm(bits, x_scale, weights.planes[0], weights.scale, weights.in_features, bias, relu, out, parallel)
        return out

    def qesc_np(weights: BitWeights, x: np.ndarray, bias: np.ndarray, relu: bool) -> np.ndarray:
        """``relu?(qesc recipe(x) + bias)`` on float32 rows ``x [batch, in]`` (``bias`` may be empty)."""
        parallel = _parallel(weights, x.shape[0])
        plus, minus, x_scale = pack_trits(x, parallel)
        out = np.empty((x.shape[0], weights.out_features), dtype=np.float32)
        qesc_gemm(plus, minus, x_scale, *weights.planes, weights.scale, bias, relu, out, parallel)
        return out

    _NO_BIAS = np.empty(0, dtype=np.float32)

    BINARY = register_kernel(
        Kernel(
            name="binary-popcount-numba",
            formats=("binary",),
            device="cpu",
            prepare=lambda fmt, packed, shape: prepare_bits((packed["bits"],), packed["scale"], shape),
            run=lambda w, x: torch.from_numpy(binary_np(w, x.detach().contiguous().numpy(), _NO_BIAS, False)),
            cached_bytes=lambda w: w.cached_bytes,
            run_np=binary_np,
        )
    )
    QESC = register_kernel(
        Kernel(
            name="qesc-popcount-numba",
            formats=("qesc",),
            device="cpu",
            prepare=lambda fmt, packed, shape: prepare_bits((packed["plus"], packed["minus"]), packed["scale"], shape),
            run=lambda w, x: torch.from_numpy(qesc_np(w, x.detach().contiguous().numpy(), _NO_BIAS, False)),
            cached_bytes=lambda w: w.cached_bytes,
            run_np=qesc_np,
        )
    )
