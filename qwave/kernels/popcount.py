"""Bitwise linear layers: ``binary`` (XNOR-popcount) and ``qesc`` (AND-popcount over ternary bit-planes).

Both sides live in 64-bit words (bit ``j`` of word ``i`` is element ``64*i + j``).

* binary: activations become sign bits (``x >= 0``) with scale ``mean|x_row|``;
  ``dot = n - 2 * popcount(x XOR w)`` and ``y = float(dot) * s_x * s_w``.
* qesc: activations become trits ``clamp(rint(x / s_x), -1, 1)`` with ``s_x = mean|x_row|``. Both sides are held
  as a *nonzero* plane and a *negative* plane (the weights' ``plus`` / ``minus`` planes converted in ``prepare``:
  ``nonzero = plus | minus``, ``negative = minus``): a product is nonzero where both are, and negative where the
  signs differ, so ``dot = pop(nz) - 2 * pop(nz & (neg_x ^ neg_w))`` with ``nz = nz_x & nz_w``: three logic ops
  and two popcounts per word pair instead of six and two.

The integer dot products are exact. The activation scale ``mean|x|`` is summed in float64 here, so it may differ
from the reference's float32 mean in the last bit (and a qesc trit exactly at a rounding boundary may flip):
tests compare the integer dots exactly and the float outputs to float32 rounding.

The weight planes are stored transposed (``[words, outputs padded to 16]``), so one vector load serves several
outputs and each activation word is broadcast; register tiles keep their accumulators for the whole reduction.
Variants (``ISA``, from numba's target features):

* ``avx512`` (AVX512-VPOPCNTDQ): 4 rows x 16 outputs of ``vpopcntq`` on 8-word vectors.
* ``avx2``: no vector popcount instruction, so each byte's bits are counted with two 16-entry ``vpshufb`` lookups
  of its nibbles; the byte counts of up to ``BYTE_WORDS`` words are added in bytes (at most 8 per word, so
  ``31 * 8 < 256``) before one ``vpsadbw`` widens them to 64-bit lanes. Tiles: binary 4 rows x 8 outputs,
  qesc 2 rows x 8 outputs (two byte counters each).

Small batches stay on one thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qwave.errors import FormatError
from qwave.kernels import FAST_KERNELS, NO_ACTIVATION, Kernel, register_kernel
from qwave.kernels.cache import variant

PARALLEL_WORDS = 1 << 15  # below this many (row, output, word) triples a call stays on one thread
ROW_CHUNK, COL_BLOCK = 64, 64
PAD = 16  # outputs are padded to a multiple of 16 in the transposed planes
BYTE_WORDS = 31  # avx2: words whose byte counts are summed in bytes before widening (31 * 8 = 248 < 256)


@dataclass
class BitWeights:
    """Transposed uint64 copies of the weight bit-planes and float32 scales."""

    isa: str  # "avx512" or "avx2"
    planes: tuple[np.ndarray, ...]  # uint64 [words, out padded to 16]: binary (signs,), qesc (nonzero, negative)
    scale: np.ndarray  # float32 [out]
    out_features: int
    in_features: int

    @property
    def cached_bytes(self) -> int:
        return int(sum(p.nbytes for p in self.planes) + self.scale.nbytes)


def _words(words: np.ndarray) -> np.ndarray:
    """uint64 ``[out, words]`` -> ``[words, out padded to PAD]``."""
    out = np.zeros((words.shape[1], -(-words.shape[0] // PAD) * PAD), dtype=np.uint64)
    out[:, : words.shape[0]] = words.T
    return out


def prepare_bits(planes: tuple[torch.Tensor, ...], scale: torch.Tensor, shape: tuple[int, int], isa: str,
                 trits: bool = False) -> BitWeights:
    """Kernel state from packed int64 word planes ``[out, words]`` (binary: ``bits``; qesc: ``plus``, ``minus``,
    turned into nonzero / negative planes) and fp16 scales ``[out, 1]``."""
    if shape[1] >= 1 << 24:  # the epilogue converts dots to float32 exactly only below 2^24
        raise FormatError(f"popcount kernels take at most {(1 << 24) - 1} inputs per row; got {shape[1]}")
    words = [p.detach().cpu().numpy().view(np.uint64) for p in planes]
    if trits:
        words = [words[0] | words[1], words[1]]
    return BitWeights(isa, tuple(_words(w) for w in words),
                      np.ascontiguousarray(scale.detach().cpu().float().numpy().reshape(-1)), int(shape[0]),
                      int(shape[1]))


def unprepare_bits(weights: BitWeights, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The stored tensors, bit for bit, from the kernel state (the inverse of ``prepare_bits``): the planes
    transposed back (qesc: ``plus = nonzero & ~negative``, ``minus = negative``) and the fp16 scales."""
    planes = [np.ascontiguousarray(p[:, : weights.out_features].T) for p in weights.planes]
    if len(planes) == 2:
        planes = [planes[0] & ~planes[1], planes[1]]
    packed = {name: torch.from_numpy(p.view(np.int64)) for name, p in zip(names, planes, strict=True)}
    packed["scale"] = torch.from_numpy(weights.scale.reshape(-1, 1).copy()).half()
    return packed


if FAST_KERNELS:
    from numba import njit, prange

    from qwave.kernels._simd import (
        HAS_VPOPCNTDQ,
        activate,
        load1_f32x8,
        load1_f32x16,
        load1_i64x4,
        load1_i64x8,
        load_f32x8,
        load_f32x16,
        load_i64x4,
        load_i64x8,
        lt_bits,
        narrow_f32,
        not_le_bits,
        popcount_bytes,
        popcount_i64,
        splat_f32x8,
        splat_f32x16,
        store,
        sum_bytes,
        vadd,
        vadd_i8,
        vand,
        vdiv,
        vmul,
        vsub,
        vxor,
        zero_i64x4,
        zero_i64x8,
    )
    from qwave.kernels.table import chained, meta, view1, view2
    from qwave.kernels.work import MAX_THREADS, new_counter, take

    ISA = "avx512" if HAS_VPOPCNTDQ else "avx2"

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

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _trit_bits(v):
        """The trit ``clamp(rint(v), -1, 1)`` of a float32 quotient as (nonzero, negative) bits: ``rint`` rounds
        half to even, so it is nonzero exactly where ``|v| > 0.5`` (and for NaN) and negative where ``v < -0.5``."""
        return np.uint64(not abs(v) <= 0.5), np.uint64(v < -0.5)

    @njit(cache=True, boundscheck=False, nogil=True)
    def _trit_row(row, s, nonzero, negative):
        """The row's trits ``clamp(rint(row / s), -1, 1)`` as nonzero / negative bit-planes: 8 quotients at a time
        (the same float32 division), their compares turned into bits (``vmovmskps``); the tail one by one."""
        n = row.shape[0]
        if s == 0:
            nonzero[:] = 0
            negative[:] = 0
            return
        full = n // 64
        sv, half, minus = splat_f32x8(s), splat_f32x8(0.5), splat_f32x8(-0.5)
        for w in range(full):
            nz, neg = np.uint64(0), np.uint64(0)
            for q in range(8):
                v = vdiv(load_f32x8(row, 64 * w + 8 * q), sv)
                low = lt_bits(v, minus)
                nz |= (not_le_bits(v, half) | low) << np.uint64(8 * q)
                neg |= low << np.uint64(8 * q)
            nonzero[w], negative[w] = nz, neg
        if full < nonzero.shape[0]:
            nz, neg = np.uint64(0), np.uint64(0)
            for j in range(n - 64 * full):
                a, b = _trit_bits(row[64 * full + j] / s)
                nz |= a << np.uint64(j)
                neg |= b << np.uint64(j)
            nonzero[full], negative[full] = nz, neg

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
        """``nonzero`` / ``negative`` planes ``[m, ceil(n/64)]`` (uint64) of the trits of float32 rows ``x``, and
        their ``mean|x|`` scales."""
        m, n = x.shape
        nonzero = np.empty((m, (n + 63) // 64), dtype=np.uint64)
        negative = np.empty((m, (n + 63) // 64), dtype=np.uint64)
        scale = np.empty(m, dtype=np.float32)
        if parallel:
            for i in prange(m):
                scale[i] = _abs_mean(x[i])
                _trit_row(x[i], scale[i], nonzero[i], negative[i])
        else:
            for i in range(m):
                scale[i] = _abs_mean(x[i])
                _trit_row(x[i], scale[i], nonzero[i], negative[i])
        return nonzero, negative, scale

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _emit(acc, accf, outf, rows, r0, c0, width, x_scale, w_scale, bias, act, out, n):
        """``out = act(float32(dot) * s_x * s_w + bias)`` for a register tile's outputs, one vector per row when
        the tile is full (``dot = n - 2 acc`` for binary, ``n = 0``: ``dot = acc``; both exact in float32 because
        ``|dot| <= in_features < 2^24``, checked in ``prepare_bits``)."""
        tile, stride = acc.shape[1], out.shape[1]
        for r in range(rows):
            if width == 8 and tile == 8:
                d = narrow_f32(load_i64x4(accf, 8 * r), load_i64x4(accf, 8 * r + 4))
                if n > 0:
                    d = vsub(splat_f32x8(n), vadd(d, d))
                y = vmul(vmul(d, load1_f32x8(x_scale, r0 + r)), load_f32x8(w_scale, c0))
                if bias.shape[0] > 0:
                    y = vadd(y, load_f32x8(bias, c0))
                store(outf, (r0 + r) * stride + c0, activate(y, act))
            elif width == 16 and tile == 16:
                d16 = narrow_f32(load_i64x8(accf, 16 * r), load_i64x8(accf, 16 * r + 8))
                if n > 0:
                    d16 = vsub(splat_f32x16(n), vadd(d16, d16))
                y16 = vmul(vmul(d16, load1_f32x16(x_scale, r0 + r)), load_f32x16(w_scale, c0))
                if bias.shape[0] > 0:
                    y16 = vadd(y16, load_f32x16(bias, c0))
                store(outf, (r0 + r) * stride + c0, activate(y16, act))
            else:
                for c in range(width):
                    dot = n - 2 * acc[r, c] if n > 0 else acc[r, c]
                    v = np.float32(dot) * x_scale[r0 + r] * w_scale[c0 + c]
                    if bias.shape[0] > 0:
                        v += bias[c0 + c]
                    out[r0 + r, c0 + c] = activate(v, act)

    # ---- avx512: vpopcntq ---------------------------------------------------------------------------------------

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _xor_pop(acc, x, w):
        return vadd(acc, popcount_i64(vxor(x, w)))

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _trit_pop(acc, xn, xs, wn, ws):
        """``acc + pop(nz) - 2 pop(nz & (xs ^ ws))``, ``nz = xn & wn``."""
        nz = vand(xn, wn)
        ng = popcount_i64(vand(nz, vxor(xs, ws)))
        return vsub(vsub(vadd(acc, popcount_i64(nz)), ng), ng)

    @njit(cache=True, boundscheck=False, nogil=True)
    def _binary_512(xb, x_scale, wt, w_scale, n, r0, r1, c0, c1, bias, act, out):
        """Rows ``r0:r1`` x outputs ``c0:c1``: register tiles of 4 rows x 16 outputs (two 8-word vectors)."""
        stride, words = wt.shape[1], xb.shape[1]
        wf, xf = wt.reshape(-1), xb.reshape(-1)
        acc = np.empty((4, 16), dtype=np.int64)
        flat, outf = acc.reshape(-1), out.reshape(-1)
        for c in range(c0, c1, 16):
            width = min(16, c1 - c)
            for r in range(r0, r1, 4):
                rows = min(4, r1 - r)
                if rows == 4:
                    a00 = zero_i64x8(); a01 = zero_i64x8(); a10 = zero_i64x8(); a11 = zero_i64x8()  # noqa: E702
                    a20 = zero_i64x8(); a21 = zero_i64x8(); a30 = zero_i64x8(); a31 = zero_i64x8()  # noqa: E702
                    x0 = r * words
                    for k in range(words):
                        w0, w1 = load_i64x8(wf, k * stride + c), load_i64x8(wf, k * stride + c + 8)
                        x = load1_i64x8(xf, x0 + k)
                        a00 = _xor_pop(a00, x, w0); a01 = _xor_pop(a01, x, w1)  # noqa: E702
                        x = load1_i64x8(xf, x0 + words + k)
                        a10 = _xor_pop(a10, x, w0); a11 = _xor_pop(a11, x, w1)  # noqa: E702
                        x = load1_i64x8(xf, x0 + 2 * words + k)
                        a20 = _xor_pop(a20, x, w0); a21 = _xor_pop(a21, x, w1)  # noqa: E702
                        x = load1_i64x8(xf, x0 + 3 * words + k)
                        a30 = _xor_pop(a30, x, w0); a31 = _xor_pop(a31, x, w1)  # noqa: E702
                    store(flat, 0, a00); store(flat, 8, a01); store(flat, 16, a10); store(flat, 24, a11)  # noqa: E702
                    store(flat, 32, a20); store(flat, 40, a21); store(flat, 48, a30); store(flat, 56, a31)  # noqa: E702
                else:
                    for i in range(rows):
                        a00 = zero_i64x8(); a01 = zero_i64x8()  # noqa: E702
                        for k in range(words):
                            x = load1_i64x8(xf, (r + i) * words + k)
                            a00 = _xor_pop(a00, x, load_i64x8(wf, k * stride + c))
                            a01 = _xor_pop(a01, x, load_i64x8(wf, k * stride + c + 8))
                        store(flat, 16 * i, a00); store(flat, 16 * i + 8, a01)  # noqa: E702
                _emit(acc, flat, outf, rows, r, c, width, x_scale, w_scale, bias, act, out, n)

    @njit(cache=True, boundscheck=False, nogil=True)
    def _qesc_512(xn, xs, x_scale, wn, ws, w_scale, r0, r1, c0, c1, bias, act, out):
        """Rows ``r0:r1`` x outputs ``c0:c1``: register tiles of 4 rows x 16 outputs over both trit planes."""
        stride, words = wn.shape[1], xn.shape[1]
        wnf, wsf, xnf, xsf = wn.reshape(-1), ws.reshape(-1), xn.reshape(-1), xs.reshape(-1)
        acc = np.empty((4, 16), dtype=np.int64)
        flat, outf = acc.reshape(-1), out.reshape(-1)
        for c in range(c0, c1, 16):
            width = min(16, c1 - c)
            for r in range(r0, r1, 4):
                rows = min(4, r1 - r)
                if rows == 4:
                    a00 = zero_i64x8(); a01 = zero_i64x8(); a10 = zero_i64x8(); a11 = zero_i64x8()  # noqa: E702
                    a20 = zero_i64x8(); a21 = zero_i64x8(); a30 = zero_i64x8(); a31 = zero_i64x8()  # noqa: E702
                    x0 = r * words
                    for k in range(words):
                        o = k * stride + c
                        n0, n1 = load_i64x8(wnf, o), load_i64x8(wnf, o + 8)
                        s0, s1 = load_i64x8(wsf, o), load_i64x8(wsf, o + 8)
                        a, b = load1_i64x8(xnf, x0 + k), load1_i64x8(xsf, x0 + k)
                        a00 = _trit_pop(a00, a, b, n0, s0); a01 = _trit_pop(a01, a, b, n1, s1)  # noqa: E702
                        a, b = load1_i64x8(xnf, x0 + words + k), load1_i64x8(xsf, x0 + words + k)
                        a10 = _trit_pop(a10, a, b, n0, s0); a11 = _trit_pop(a11, a, b, n1, s1)  # noqa: E702
                        a, b = load1_i64x8(xnf, x0 + 2 * words + k), load1_i64x8(xsf, x0 + 2 * words + k)
                        a20 = _trit_pop(a20, a, b, n0, s0); a21 = _trit_pop(a21, a, b, n1, s1)  # noqa: E702
                        a, b = load1_i64x8(xnf, x0 + 3 * words + k), load1_i64x8(xsf, x0 + 3 * words + k)
                        a30 = _trit_pop(a30, a, b, n0, s0); a31 = _trit_pop(a31, a, b, n1, s1)  # noqa: E702
                    store(flat, 0, a00); store(flat, 8, a01); store(flat, 16, a10); store(flat, 24, a11)  # noqa: E702
                    store(flat, 32, a20); store(flat, 40, a21); store(flat, 48, a30); store(flat, 56, a31)  # noqa: E702
                else:
                    for i in range(rows):
                        a00 = zero_i64x8(); a01 = zero_i64x8()  # noqa: E702
                        for k in range(words):
                            o, xo = k * stride + c, (r + i) * words + k
                            a, b = load1_i64x8(xnf, xo), load1_i64x8(xsf, xo)
                            a00 = _trit_pop(a00, a, b, load_i64x8(wnf, o), load_i64x8(wsf, o))
                            a01 = _trit_pop(a01, a, b, load_i64x8(wnf, o + 8), load_i64x8(wsf, o + 8))
                        store(flat, 16 * i, a00); store(flat, 16 * i + 8, a01)  # noqa: E702
                _emit(acc, flat, outf, rows, r, c, width, x_scale, w_scale, bias, act, out, 0)

    # ---- avx2: nibble-lookup popcounts accumulated in bytes -------------------------------------------------------

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _xor_bytes(b, x, w):
        return vadd_i8(b, popcount_bytes(vxor(x, w)))

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _binary4x8(xf, wf, x0, words, stride, c):
        """Eight 4-lane ``popcount(x ^ w)`` sums: rows ``x0 + i * words`` (i < 4) x outputs ``c:c+8``."""
        t00 = zero_i64x4(); t01 = zero_i64x4(); t10 = zero_i64x4(); t11 = zero_i64x4()  # noqa: E702
        t20 = zero_i64x4(); t21 = zero_i64x4(); t30 = zero_i64x4(); t31 = zero_i64x4()  # noqa: E702
        for k0 in range(0, words, BYTE_WORDS):
            b00 = zero_i64x4(); b01 = zero_i64x4(); b10 = zero_i64x4(); b11 = zero_i64x4()  # noqa: E702
            b20 = zero_i64x4(); b21 = zero_i64x4(); b30 = zero_i64x4(); b31 = zero_i64x4()  # noqa: E702
            for k in range(k0, min(words, k0 + BYTE_WORDS)):
                w0, w1 = load_i64x4(wf, k * stride + c), load_i64x4(wf, k * stride + c + 4)
                x = load1_i64x4(xf, x0 + k)
                b00 = _xor_bytes(b00, x, w0); b01 = _xor_bytes(b01, x, w1)  # noqa: E702
                x = load1_i64x4(xf, x0 + words + k)
                b10 = _xor_bytes(b10, x, w0); b11 = _xor_bytes(b11, x, w1)  # noqa: E702
                x = load1_i64x4(xf, x0 + 2 * words + k)
                b20 = _xor_bytes(b20, x, w0); b21 = _xor_bytes(b21, x, w1)  # noqa: E702
                x = load1_i64x4(xf, x0 + 3 * words + k)
                b30 = _xor_bytes(b30, x, w0); b31 = _xor_bytes(b31, x, w1)  # noqa: E702
            t00 = vadd(t00, sum_bytes(b00)); t01 = vadd(t01, sum_bytes(b01))  # noqa: E702
            t10 = vadd(t10, sum_bytes(b10)); t11 = vadd(t11, sum_bytes(b11))  # noqa: E702
            t20 = vadd(t20, sum_bytes(b20)); t21 = vadd(t21, sum_bytes(b21))  # noqa: E702
            t30 = vadd(t30, sum_bytes(b30)); t31 = vadd(t31, sum_bytes(b31))  # noqa: E702
        return t00, t01, t10, t11, t20, t21, t30, t31

    @njit(cache=True, boundscheck=False, nogil=True)
    def _binary_avx2(xb, x_scale, wt, w_scale, n, r0, r1, c0, c1, bias, act, out):
        """Rows ``r0:r1`` x outputs ``c0:c1``: register tiles of 4 rows x 8 outputs (two 4-word vectors)."""
        stride, words = wt.shape[1], xb.shape[1]
        wf, xf = wt.reshape(-1), xb.reshape(-1)
        acc = np.empty((4, 8), dtype=np.int64)
        flat, outf = acc.reshape(-1), out.reshape(-1)
        for c in range(c0, c1, 8):
            width = min(8, c1 - c)
            for r in range(r0, r1, 4):
                rows = min(4, r1 - r)
                if rows == 4:
                    v = _binary4x8(xf, wf, r * words, words, stride, c)
                    for j in range(8):
                        store(flat, 4 * j, v[j])
                else:
                    for i in range(rows):
                        t0 = zero_i64x4(); t1 = zero_i64x4()  # noqa: E702
                        for k0 in range(0, words, BYTE_WORDS):
                            b0 = zero_i64x4(); b1 = zero_i64x4()  # noqa: E702
                            for k in range(k0, min(words, k0 + BYTE_WORDS)):
                                x = load1_i64x4(xf, (r + i) * words + k)
                                b0 = _xor_bytes(b0, x, load_i64x4(wf, k * stride + c))
                                b1 = _xor_bytes(b1, x, load_i64x4(wf, k * stride + c + 4))
                            t0 = vadd(t0, sum_bytes(b0)); t1 = vadd(t1, sum_bytes(b1))  # noqa: E702
                        store(flat, 8 * i, t0); store(flat, 8 * i + 4, t1)  # noqa: E702
                _emit(acc, flat, outf, rows, r, c, width, x_scale, w_scale, bias, act, out, n)

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _trit_bytes(p, q, xn, xs, wn, ws):
        """Byte counts ``p += pop(nz)``, ``q += pop(nz & (xs ^ ws))`` with ``nz = xn & wn``."""
        nz = vand(xn, wn)
        return vadd_i8(p, popcount_bytes(nz)), vadd_i8(q, popcount_bytes(vand(nz, vxor(xs, ws))))

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _qesc2x8(xnf, xsf, wnf, wsf, x0, x1, words, stride, c):
        """Four 4-lane ternary dot sums: rows at ``x0`` and ``x1`` x outputs ``c:c+8``."""
        t00 = zero_i64x4(); t01 = zero_i64x4(); t10 = zero_i64x4(); t11 = zero_i64x4()  # noqa: E702
        for k0 in range(0, words, BYTE_WORDS):
            p00 = zero_i64x4(); p01 = zero_i64x4(); p10 = zero_i64x4(); p11 = zero_i64x4()  # noqa: E702
            q00 = zero_i64x4(); q01 = zero_i64x4(); q10 = zero_i64x4(); q11 = zero_i64x4()  # noqa: E702
            for k in range(k0, min(words, k0 + BYTE_WORDS)):
                o = k * stride + c
                n0, n1 = load_i64x4(wnf, o), load_i64x4(wnf, o + 4)
                s0, s1 = load_i64x4(wsf, o), load_i64x4(wsf, o + 4)
                a, b = load1_i64x4(xnf, x0 + k), load1_i64x4(xsf, x0 + k)
                p00, q00 = _trit_bytes(p00, q00, a, b, n0, s0)
                p01, q01 = _trit_bytes(p01, q01, a, b, n1, s1)
                a, b = load1_i64x4(xnf, x1 + k), load1_i64x4(xsf, x1 + k)
                p10, q10 = _trit_bytes(p10, q10, a, b, n0, s0)
                p11, q11 = _trit_bytes(p11, q11, a, b, n1, s1)
            t00 = vsub(vsub(vadd(t00, sum_bytes(p00)), sum_bytes(q00)), sum_bytes(q00))
            t01 = vsub(vsub(vadd(t01, sum_bytes(p01)), sum_bytes(q01)), sum_bytes(q01))
            t10 = vsub(vsub(vadd(t10, sum_bytes(p10)), sum_bytes(q10)), sum_bytes(q10))
            t11 = vsub(vsub(vadd(t11, sum_bytes(p11)), sum_bytes(q11)), sum_bytes(q11))
        return t00, t01, t10, t11

    @njit(cache=True, boundscheck=False, nogil=True)
    def _qesc_avx2(xn, xs, x_scale, wn, ws, w_scale, r0, r1, c0, c1, bias, act, out):
        """Rows ``r0:r1`` x outputs ``c0:c1``: register tiles of 2 rows x 8 outputs, two byte counters each."""
        stride, words = wn.shape[1], xn.shape[1]
        wnf, wsf, xnf, xsf = wn.reshape(-1), ws.reshape(-1), xn.reshape(-1), xs.reshape(-1)
        acc = np.empty((2, 8), dtype=np.int64)
        flat, outf = acc.reshape(-1), out.reshape(-1)
        for c in range(c0, c1, 8):
            width = min(8, c1 - c)
            for r in range(r0, r1, 2):
                rows = min(2, r1 - r)
                # one row left: the second row of the tile repeats it and is not emitted
                v = _qesc2x8(xnf, xsf, wnf, wsf, r * words, (r + rows - 1) * words, words, stride, c)
                for j in range(4):
                    store(flat, 4 * j, v[j])
                _emit(acc, flat, outf, rows, r, c, width, x_scale, w_scale, bias, act, out, 0)

    # ---- drivers ----------------------------------------------------------------------------------------------

    # The drivers close over a constant (``wide``: the avx512 variant), never over a block function: numba prunes
    # the other variant's branch, so a CPU compiles only the block it runs, and the on-disk cache key (which hashes
    # closure values; a dispatcher's differs in every process) stays the same between runs.

    def _binary_driver(wide: bool):
        @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
        @variant("512" if wide else "avx2")
        def gemm(xb, x_scale, wt, w_scale, n, bias, act, out, parallel):
            """``out[i, j] = act((n - 2 popcount(xb[i] ^ w[j])) * s_x[i] * s_w[j] + bias[j])``, ``wt = w.T``."""
            m, n_out, zero = xb.shape[0], w_scale.shape[0], np.int64(0)  # int64, not Literal[0]: one compiled block
            if not parallel:
                if wide:
                    _binary_512(xb, x_scale, wt, w_scale, n, zero, m, zero, n_out, bias, act, out)
                else:
                    _binary_avx2(xb, x_scale, wt, w_scale, n, zero, m, zero, n_out, bias, act, out)
                return
            chunk = ROW_CHUNK if m > 2 * ROW_CHUNK else m
            n_chunks, n_blocks = (m + chunk - 1) // chunk, (n_out + COL_BLOCK - 1) // COL_BLOCK
            n_items, counter = n_chunks * n_blocks, new_counter()
            for _ in prange(min(n_items, MAX_THREADS)):  # items handed out one at a time (``qwave.kernels.work``)
                item = take(counter)
                while item < n_items:
                    r0, c0 = (item // n_blocks) * chunk, (item % n_blocks) * COL_BLOCK
                    r1, c1 = min(m, r0 + chunk), min(n_out, c0 + COL_BLOCK)
                    if wide:
                        _binary_512(xb, x_scale, wt, w_scale, n, r0, r1, c0, c1, bias, act, out)
                    else:
                        _binary_avx2(xb, x_scale, wt, w_scale, n, r0, r1, c0, c1, bias, act, out)
                    item = take(counter)

        return gemm

    def _qesc_driver(wide: bool):
        @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
        @variant("512" if wide else "avx2")
        def gemm(xn, xs, x_scale, wn, ws, w_scale, bias, act, out, parallel):
            """``out[i, j] = act(ternary dot(x[i], w[j]) * s_x[i] * s_w[j] + bias[j])`` from transposed planes."""
            m, n_out, zero = xn.shape[0], w_scale.shape[0], np.int64(0)  # int64, not Literal[0]: one compiled block
            if not parallel:
                if wide:
                    _qesc_512(xn, xs, x_scale, wn, ws, w_scale, zero, m, zero, n_out, bias, act, out)
                else:
                    _qesc_avx2(xn, xs, x_scale, wn, ws, w_scale, zero, m, zero, n_out, bias, act, out)
                return
            chunk = ROW_CHUNK if m > 2 * ROW_CHUNK else m
            n_chunks, n_blocks = (m + chunk - 1) // chunk, (n_out + COL_BLOCK - 1) // COL_BLOCK
            n_items, counter = n_chunks * n_blocks, new_counter()
            for _ in prange(min(n_items, MAX_THREADS)):  # items handed out one at a time (``qwave.kernels.work``)
                item = take(counter)
                while item < n_items:
                    r0, c0 = (item // n_blocks) * chunk, (item % n_blocks) * COL_BLOCK
                    r1, c1 = min(m, r0 + chunk), min(n_out, c0 + COL_BLOCK)
                    if wide:
                        _qesc_512(xn, xs, x_scale, wn, ws, w_scale, r0, r1, c0, c1, bias, act, out)
                    else:
                        _qesc_avx2(xn, xs, x_scale, wn, ws, w_scale, r0, r1, c0, c1, bias, act, out)
                    item = take(counter)

        return gemm

    BINARY_AVX2, BINARY_512, QESC_AVX2, QESC_512 = (_binary_driver(False), _binary_driver(True), _qesc_driver(False),
                                                    _qesc_driver(True))
    BINARY_GEMM = {"avx2": BINARY_AVX2, "avx512": BINARY_512}
    QESC_GEMM = {"avx2": QESC_AVX2, "avx512": QESC_512}

    def _chain(wide: bool):
        """Consecutive binary / qesc layers in one compiled call (no Python between layers). ``table``
        (``qwave.kernels.table``) has a row per layer: plane 0, plane 1, scale, bias, then ``[qesc?, in, out, act]``;
        binary: plane 0 = signs, plane 1 empty; qesc: nonzero, negative. Each layer is what ``binary_np`` /
        ``qesc_np`` compute."""

        @njit(cache=True, boundscheck=False, nogil=True)
        @variant("512" if wide else "avx2")
        def chain(x, table):
            h = x
            for i in range(table.shape[0]):
                p0, p1 = view2(table, i, 0, np.uint64), view2(table, i, 1, np.uint64)
                scale, bias = view1(table, i, 2, np.float32), view1(table, i, 3, np.float32)
                trits, n_in = meta(table, i, 4, 0) == 1, meta(table, i, 4, 1)
                n_out, act = meta(table, i, 4, 2), meta(table, i, 4, 3)
                m = h.shape[0]
                parallel = m * n_out * p0.shape[0] >= PARALLEL_WORDS
                out = np.empty((m, n_out), dtype=np.float32)
                if trits:
                    nonzero, negative, x_scale = pack_trits(h, parallel)
                    if wide:
                        QESC_512(nonzero, negative, x_scale, p0, p1, scale, bias, act, out, parallel)
                    else:
                        QESC_AVX2(nonzero, negative, x_scale, p0, p1, scale, bias, act, out, parallel)
                else:
                    bits, x_scale = pack_signs(h, parallel)
                    if wide:
                        BINARY_512(bits, x_scale, p0, scale, n_in, bias, act, out, parallel)
                    else:
                        BINARY_AVX2(bits, x_scale, p0, scale, n_in, bias, act, out, parallel)
                h = out
            return h

        return chain

    CHAIN = {"avx2": _chain(False), "avx512": _chain(True)}
    _EMPTY_PLANE = np.empty((0, 0), np.uint64)

    def chain_layers(layers: list[tuple[BitWeights, np.ndarray, int]]):
        """A callable ``x float32 [batch, in] -> float32 [batch, out]`` running the ``(weights, bias, act)`` binary /
        qesc layers in one compiled call, bit for bit ``binary_np`` / ``qesc_np`` layer after layer; ``None`` for
        mixed variants."""
        return chained(CHAIN, layers, lambda w, bias: (w.planes[0], w.planes[1] if len(w.planes) > 1 else _EMPTY_PLANE,
                                                       w.scale, bias),
                       lambda w, act: (len(w.planes) > 1, w.in_features, w.out_features, act))

    def _parallel(weights: BitWeights, m: int) -> bool:
        return m * weights.out_features * weights.planes[0].shape[0] >= PARALLEL_WORDS

    def binary_np(weights: BitWeights, x: np.ndarray, bias: np.ndarray, act: int) -> np.ndarray:
        """``act(binary recipe(x) + bias)`` on float32 rows ``x [batch, in]`` (``bias`` may be empty)."""
        parallel = _parallel(weights, x.shape[0])
        bits, x_scale = pack_signs(x, parallel)
        out = np.empty((x.shape[0], weights.out_features), dtype=np.float32)
        BINARY_GEMM[weights.isa](bits, x_scale, weights.planes[0], weights.scale, weights.in_features, bias, act,
                                 out, parallel)
        return out

    def qesc_np(weights: BitWeights, x: np.ndarray, bias: np.ndarray, act: int) -> np.ndarray:
        """``act(qesc recipe(x) + bias)`` on float32 rows ``x [batch, in]`` (``bias`` may be empty)."""
        parallel = _parallel(weights, x.shape[0])
        nonzero, negative, x_scale = pack_trits(x, parallel)
        out = np.empty((x.shape[0], weights.out_features), dtype=np.float32)
        QESC_GEMM[weights.isa](nonzero, negative, x_scale, *weights.planes, weights.scale, bias, act, out, parallel)
        return out

    _NO_BIAS = np.empty(0, dtype=np.float32)

    def prepare_binary(fmt, packed: dict[str, torch.Tensor], shape: tuple[int, int], isa: str = ISA) -> BitWeights:
        return prepare_bits((packed["bits"],), packed["scale"], shape, isa)

    def prepare_qesc(fmt, packed: dict[str, torch.Tensor], shape: tuple[int, int], isa: str = ISA) -> BitWeights:
        return prepare_bits((packed["plus"], packed["minus"]), packed["scale"], shape, isa, trits=True)

    BINARY = register_kernel(
        Kernel(
            name=f"binary-popcount-numba-{ISA}",
            formats=("binary",),
            device="cpu",
            prepare=prepare_binary,
            run=lambda w, x: torch.from_numpy(binary_np(w, x.detach().contiguous().numpy(), _NO_BIAS, NO_ACTIVATION)),
            cached_bytes=lambda w: w.cached_bytes,
            unprepare=lambda fmt, w: unprepare_bits(w, ("bits",)),
            run_np=binary_np,
            chain=chain_layers,
        )
    )
    QESC = register_kernel(
        Kernel(
            name=f"qesc-popcount-numba-{ISA}",
            formats=("qesc",),
            device="cpu",
            prepare=prepare_qesc,
            run=lambda w, x: torch.from_numpy(qesc_np(w, x.detach().contiguous().numpy(), _NO_BIAS, NO_ACTIVATION)),
            cached_bytes=lambda w: w.cached_bytes,
            unprepare=lambda fmt, w: unprepare_bits(w, ("plus", "minus")),
            run_np=qesc_np,
            chain=chain_layers,
        )
    )
