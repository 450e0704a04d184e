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

The inner loop runs over the words of one (activation row, weight row) pair for a 4 x 2 register tile; LLVM
vectorizes the popcounts (``vpopcntq`` with AVX512-VPOPCNTDQ, a nibble lookup with plain AVX2). Small batches
stay on one thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qwave.kernels import FAST_KERNELS, Kernel, register_kernel

PARALLEL_WORDS = 1 << 15  # below this many (row, output, word) triples a call stays on one thread
ROW_CHUNK, COL_BLOCK = 64, 64


@dataclass
class BitWeights:
    """Transposed uint64 copies of the weight bit-planes (binary: one; qesc: ``plus``, ``minus``), float32 scales."""

    planes: tuple[np.ndarray, ...]  # uint64 [words, out]: transposed, so the kernel vectorizes over outputs
    scale: np.ndarray  # float32 [out]
    out_features: int
    in_features: int

    @property
    def cached_bytes(self) -> int:
        return int(sum(p.nbytes for p in self.planes) + self.scale.nbytes)


def _words(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().view(np.uint64).T)


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

    from qwave.kernels._simd import popcount64

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
        """Rows ``r0:r1`` x outputs ``c0:c1``: 4 activation rows share each weight word, vectorized over outputs."""
        width = c1 - c0
        acc = np.empty((4, width), dtype=np.int64)
        for r in range(r0, r1, 4):
            rows = min(4, r1 - r)
            acc[:] = 0
            a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
            for k in range(xb.shape[1]):
                w = wt[k, c0:c1]
                if rows == 4:
                    x0, x1, x2, x3 = xb[r, k], xb[r + 1, k], xb[r + 2, k], xb[r + 3, k]
                    for c in range(width):
                        a0[c] += popcount64(np.int64(x0 ^ w[c]))
                        a1[c] += popcount64(np.int64(x1 ^ w[c]))
                        a2[c] += popcount64(np.int64(x2 ^ w[c]))
                        a3[c] += popcount64(np.int64(x3 ^ w[c]))
                else:
                    for i in range(rows):
                        xi, ai = xb[r + i, k], acc[i]
                        for c in range(width):
                            ai[c] += popcount64(np.int64(xi ^ w[c]))
            for i in range(rows):
                for c in range(width):
                    acc[i, c] = n - 2 * acc[i, c]
            _emit(acc, rows, r, c0, width, x_scale, w_scale, bias, relu, out)

    @njit(cache=True, boundscheck=False, nogil=True)
    def _qesc_block(xp, xm, x_scale, wpt, wmt, w_scale, r0, r1, c0, c1, bias, relu, out):
        """Rows ``r0:r1`` x outputs ``c0:c1``: 2 activation rows share each weight word pair."""
        width = c1 - c0
        acc = np.empty((2, width), dtype=np.int64)
        for r in range(r0, r1, 2):
            rows = min(2, r1 - r)
            acc[:] = 0
            a0, a1 = acc[0], acc[1]
            for k in range(xp.shape[1]):
                wp, wm = wpt[k, c0:c1], wmt[k, c0:c1]
                p0, m0 = xp[r, k], xm[r, k]
                if rows == 2:
                    p1, m1 = xp[r + 1, k], xm[r + 1, k]
                    for c in range(width):
                        a0[c] += popcount64(np.int64((p0 & wp[c]) | (m0 & wm[c]))) - popcount64(
                            np.int64((p0 & wm[c]) | (m0 & wp[c])))
                        a1[c] += popcount64(np.int64((p1 & wp[c]) | (m1 & wm[c]))) - popcount64(
                            np.int64((p1 & wm[c]) | (m1 & wp[c])))
                else:
                    for c in range(width):
                        a0[c] += popcount64(np.int64((p0 & wp[c]) | (m0 & wm[c]))) - popcount64(
                            np.int64((p0 & wm[c]) | (m0 & wp[c])))
            _emit(acc, rows, r, c0, width, x_scale, w_scale, bias, relu, out)

    @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
    def binary_gemm(xb, x_scale, wt, w_scale, n, bias, relu, out, parallel):
        """``out[i, j] = relu?((n - 2 popcount(xb[i] ^ w[j])) * s_x[i] * s_w[j] + bias[j])``, ``wt = w.T``."""
        m, n_out = xb.shape[0], wt.shape[1]
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
        m, n_out = xp.shape[0], wpt.shape[1]
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
