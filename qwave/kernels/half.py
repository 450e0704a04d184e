"""fp16 / bf16 linear layers: the 16-bit weights are converted to float32 inside the kernel, never cached as float32.

The layer holds only its 16-bit weights, transposed per tile of output columns (``[tile, in, columns]``, a
permutation of the stored bytes). A batch of 6 rows or more is cut into work items of ROW_CHUNK rows x one column
tile; an item converts K_BLOCK inputs of its tile at a time into a float32 scratch panel (``vcvtph2ps`` for fp16;
bf16 is the high half of a float32, a 16-bit shift) and runs an FP32 register-tiled microkernel over it for all
its rows: 6 rows x 16 columns (``avx2``, 12 ``vfmadd231ps`` accumulators) or 6 rows x 32 columns (``avx512``), the
sums kept in a scratch block between K blocks. A batch under 6 rows uses each weight at most 5 times, so it
converts the weights in registers, four column tiles at a time (eight accumulators), and writes no panel.
Every ``y[i, j] = sum_k x[i, k] * w[j, k]`` is accumulated in input order with fused multiply-adds on every path
(float32 rounding differs from PyTorch's GEMM in the last bits, but a row gets the same bits in any batch), then
the bias and the activation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from qwave.kernels import FAST_KERNELS, NO_ACTIVATION, Kernel, register_kernel
from qwave.kernels.cache import variant

TILES = {"avx2": 16, "avx512": 32}
ROWS = 6  # rows per register tile
# Blocking, sized for an AVX2 CPU with a 512 KB L2 and a 32 KB L1 (Zen 3): a work item is ROW_CHUNK rows x one
# column tile. Its inputs are taken K_BLOCK at a time: that block of the tile's weights is converted once into a
# float32 panel (256 x 16 x 4 = 16 KB for avx2, 128 x 32 x 4 = 16 KB for avx512: it stays in L1) and then every
# row of the chunk passes over it, so a conversion serves ROW_CHUNK rows. The chunk's rows (66 x 1536 x 4 = 405 KB
# for the reference MLP's first layer) stay in L2 while the column tiles pass over them.
ROW_CHUNK = 66  # a multiple of ROWS
K_BLOCK = {"avx2": 256, "avx512": 128}
FEW_TILES = 4  # column tiles per work item when the batch has fewer than ROWS rows (no panel: see ``_few_avx2``)
PARALLEL_MACS = 1 << 21  # below this many multiply-adds a call stays on the calling thread (``qwave.kernels.work``)


@dataclass
class HalfWeights:
    """16-bit weights in the kernel layout (the stored bits, transposed per column tile)."""

    isa: str  # "avx2" or "avx512"
    bf16: bool
    codes: np.ndarray  # uint16 [tiles, in, tile]
    out_features: int
    in_features: int

    @property
    def cached_bytes(self) -> int:
        return int(self.codes.nbytes)


def prepare_weight(weight: torch.Tensor, isa: str) -> HalfWeights:
    """Kernel state from a stored float16 / bfloat16 weight ``[out, in]``."""
    out, n = weight.shape
    tile = TILES[isa]
    tiles = math.ceil(out / tile)
    bits = np.zeros((tiles * tile, n), np.uint16)
    bits[:out] = weight.detach().cpu().contiguous().view(torch.int16).numpy().view(np.uint16)
    codes = np.ascontiguousarray(bits.reshape(tiles, tile, n).transpose(0, 2, 1))
    return HalfWeights(isa, weight.dtype == torch.bfloat16, codes, int(out), int(n))


def unprepare_weight(weights: HalfWeights) -> dict[str, torch.Tensor]:
    """The stored 16-bit weight, bit for bit, from the kernel state (the inverse of ``prepare_weight``)."""
    tiles, n, tile = weights.codes.shape
    bits = weights.codes.transpose(0, 2, 1).reshape(tiles * tile, n)[: weights.out_features]
    weight = torch.from_numpy(np.ascontiguousarray(bits).view(np.int16))
    return {"weight": weight.view(torch.bfloat16 if weights.bf16 else torch.float16)}


if FAST_KERNELS:
    from numba import njit, prange

    from qwave.kernels._simd import (
        HAS_AVX512,
        activate,
        load1_f32x8,
        load1_f32x16,
        load_bf16x8,
        load_bf16x16,
        load_f16x8,
        load_f16x16,
        load_f32x8,
        load_f32x16,
        store,
        vadd,
        vfma,
        zero_f32x8,
        zero_f32x16,
    )
    from qwave.kernels.table import chained, meta, view1, view3
    from qwave.kernels.work import MAX_THREADS, new_counter, take

    ISA = "avx512" if HAS_AVX512 else "avx2"

    KC_AVX2, KC_512 = K_BLOCK["avx2"], K_BLOCK["avx512"]

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _tile6x16(xf, o, panel, kn, acc, a):
        """``acc[a : a + 96]`` (6 rows x 16 columns) += rows at offsets ``o`` of ``xf`` x the panel's ``kn`` inputs,
        one fused multiply-add per input in input order (twelve float32x8 accumulators)."""
        o0, o1, o2, o3, o4, o5 = o
        a00, a01, a10, a11 = (load_f32x8(acc, a), load_f32x8(acc, a + 8), load_f32x8(acc, a + 16),
                              load_f32x8(acc, a + 24))
        a20, a21, a30, a31 = (load_f32x8(acc, a + 32), load_f32x8(acc, a + 40), load_f32x8(acc, a + 48),
                              load_f32x8(acc, a + 56))
        a40, a41, a50, a51 = (load_f32x8(acc, a + 64), load_f32x8(acc, a + 72), load_f32x8(acc, a + 80),
                              load_f32x8(acc, a + 88))
        for k in range(kn):
            b0, b1 = load_f32x8(panel, 16 * k), load_f32x8(panel, 16 * k + 8)
            v = load1_f32x8(xf, o0 + k)
            a00 = vfma(a00, v, b0); a01 = vfma(a01, v, b1)  # noqa: E702
            v = load1_f32x8(xf, o1 + k)
            a10 = vfma(a10, v, b0); a11 = vfma(a11, v, b1)  # noqa: E702
            v = load1_f32x8(xf, o2 + k)
            a20 = vfma(a20, v, b0); a21 = vfma(a21, v, b1)  # noqa: E702
            v = load1_f32x8(xf, o3 + k)
            a30 = vfma(a30, v, b0); a31 = vfma(a31, v, b1)  # noqa: E702
            v = load1_f32x8(xf, o4 + k)
            a40 = vfma(a40, v, b0); a41 = vfma(a41, v, b1)  # noqa: E702
            v = load1_f32x8(xf, o5 + k)
            a50 = vfma(a50, v, b0); a51 = vfma(a51, v, b1)  # noqa: E702
        store(acc, a, a00); store(acc, a + 8, a01); store(acc, a + 16, a10); store(acc, a + 24, a11)  # noqa: E702
        store(acc, a + 32, a20); store(acc, a + 40, a21); store(acc, a + 48, a30); store(acc, a + 56, a31)  # noqa: E702
        store(acc, a + 64, a40); store(acc, a + 72, a41); store(acc, a + 80, a50); store(acc, a + 88, a51)  # noqa: E702

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _tile6x32(xf, o, panel, kn, acc, a):
        """``acc[a : a + 192]`` (6 rows x 32 columns) += rows at offsets ``o`` x the panel, 512-bit."""
        o0, o1, o2, o3, o4, o5 = o
        a00, a01, a10, a11 = (load_f32x16(acc, a), load_f32x16(acc, a + 16), load_f32x16(acc, a + 32),
                              load_f32x16(acc, a + 48))
        a20, a21, a30, a31 = (load_f32x16(acc, a + 64), load_f32x16(acc, a + 80), load_f32x16(acc, a + 96),
                              load_f32x16(acc, a + 112))
        a40, a41, a50, a51 = (load_f32x16(acc, a + 128), load_f32x16(acc, a + 144), load_f32x16(acc, a + 160),
                              load_f32x16(acc, a + 176))
        for k in range(kn):
            b0, b1 = load_f32x16(panel, 32 * k), load_f32x16(panel, 32 * k + 16)
            v = load1_f32x16(xf, o0 + k)
            a00 = vfma(a00, v, b0); a01 = vfma(a01, v, b1)  # noqa: E702
            v = load1_f32x16(xf, o1 + k)
            a10 = vfma(a10, v, b0); a11 = vfma(a11, v, b1)  # noqa: E702
            v = load1_f32x16(xf, o2 + k)
            a20 = vfma(a20, v, b0); a21 = vfma(a21, v, b1)  # noqa: E702
            v = load1_f32x16(xf, o3 + k)
            a30 = vfma(a30, v, b0); a31 = vfma(a31, v, b1)  # noqa: E702
            v = load1_f32x16(xf, o4 + k)
            a40 = vfma(a40, v, b0); a41 = vfma(a41, v, b1)  # noqa: E702
            v = load1_f32x16(xf, o5 + k)
            a50 = vfma(a50, v, b0); a51 = vfma(a51, v, b1)  # noqa: E702
        store(acc, a, a00); store(acc, a + 16, a01); store(acc, a + 32, a10); store(acc, a + 48, a11)  # noqa: E702
        store(acc, a + 64, a20); store(acc, a + 80, a21); store(acc, a + 96, a30); store(acc, a + 112, a31)  # noqa: E702
        store(acc, a + 128, a40); store(acc, a + 144, a41); store(acc, a + 160, a50)  # noqa: E702
        store(acc, a + 176, a51)

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _offsets(r, r1, n, k0):
        """Offsets of rows ``r .. r + 5`` at input ``k0``; rows past ``r1`` repeat the last one (their sums land in
        unused accumulator rows), so a short tile runs the same 6-row microkernel."""
        last = r1 - 1
        return (r * n + k0, min(r + 1, last) * n + k0, min(r + 2, last) * n + k0, min(r + 3, last) * n + k0,
                min(r + 4, last) * n + k0, min(r + 5, last) * n + k0)

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _emit16(acc, a, r, c0, n_out, bias, act, outf):
        """``out[r, c0 : c0 + 16] = act(acc[a : a + 16] + bias)``, clipped at ``n_out`` (``outf``: out, flat)."""
        o, width = r * n_out + c0, min(16, n_out - c0)
        if width == 16:
            lo, hi = load_f32x8(acc, a), load_f32x8(acc, a + 8)
            if bias.shape[0] > 0:
                lo, hi = vadd(lo, load_f32x8(bias, c0)), vadd(hi, load_f32x8(bias, c0 + 8))
            store(outf, o, activate(lo, act)); store(outf, o + 8, activate(hi, act))  # noqa: E702
        else:
            for c in range(width):
                y = acc[a + c]
                if bias.shape[0] > 0:
                    y += bias[c0 + c]
                outf[o + c] = activate(y, act)

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _emit32(acc, a, r, c0, n_out, bias, act, outf):
        """``out[r, c0 : c0 + 32] = act(acc[a : a + 32] + bias)``, clipped at ``n_out``, 512-bit."""
        o, width = r * n_out + c0, min(32, n_out - c0)
        if width == 32:
            lo, hi = load_f32x16(acc, a), load_f32x16(acc, a + 16)
            if bias.shape[0] > 0:
                lo, hi = vadd(lo, load_f32x16(bias, c0)), vadd(hi, load_f32x16(bias, c0 + 16))
            store(outf, o, activate(lo, act)); store(outf, o + 16, activate(hi, act))  # noqa: E702
        else:
            for c in range(width):
                y = acc[a + c]
                if bias.shape[0] > 0:
                    y += bias[c0 + c]
                outf[o + c] = activate(y, act)

    @njit(cache=True, boundscheck=False, nogil=True)
    def _few_avx2(x, w, bf16, t0, t1, n_out, bias, act, out, acc):
        """Every row of a batch under ROWS x column tiles ``t0:t1``, four tiles at a time (eight float32x8 sums in
        input order, as the panel path): each weight serves at most 5 rows here, so it is converted in registers
        and no panel is written."""
        m, n = x.shape
        xf, outf = x.reshape(-1), out.reshape(-1)
        for r in range(m):
            x0 = r * n
            for t in range(t0, t1, 4):  # past t1, the last tile again (its sums are not emitted)
                w0, w1 = w[t].reshape(-1), w[min(t + 1, t1 - 1)].reshape(-1)
                w2, w3 = w[min(t + 2, t1 - 1)].reshape(-1), w[min(t + 3, t1 - 1)].reshape(-1)
                a0 = zero_f32x8(); a1 = zero_f32x8(); a2 = zero_f32x8(); a3 = zero_f32x8()  # noqa: E702
                a4 = zero_f32x8(); a5 = zero_f32x8(); a6 = zero_f32x8(); a7 = zero_f32x8()  # noqa: E702
                for k in range(n):
                    v, o = load1_f32x8(xf, x0 + k), 16 * k
                    if bf16:
                        a0, a1 = vfma(a0, v, load_bf16x8(w0, o)), vfma(a1, v, load_bf16x8(w0, o + 8))
                        a2, a3 = vfma(a2, v, load_bf16x8(w1, o)), vfma(a3, v, load_bf16x8(w1, o + 8))
                        a4, a5 = vfma(a4, v, load_bf16x8(w2, o)), vfma(a5, v, load_bf16x8(w2, o + 8))
                        a6, a7 = vfma(a6, v, load_bf16x8(w3, o)), vfma(a7, v, load_bf16x8(w3, o + 8))
                    else:
                        a0, a1 = vfma(a0, v, load_f16x8(w0, o)), vfma(a1, v, load_f16x8(w0, o + 8))
                        a2, a3 = vfma(a2, v, load_f16x8(w1, o)), vfma(a3, v, load_f16x8(w1, o + 8))
                        a4, a5 = vfma(a4, v, load_f16x8(w2, o)), vfma(a5, v, load_f16x8(w2, o + 8))
                        a6, a7 = vfma(a6, v, load_f16x8(w3, o)), vfma(a7, v, load_f16x8(w3, o + 8))
                store(acc, 0, a0); store(acc, 8, a1); store(acc, 16, a2); store(acc, 24, a3)  # noqa: E702
                store(acc, 32, a4); store(acc, 40, a5); store(acc, 48, a6); store(acc, 56, a7)  # noqa: E702
                for j in range(min(4, t1 - t)):
                    _emit16(acc, 16 * j, r, 16 * (t + j), n_out, bias, act, outf)

    @njit(cache=True, boundscheck=False, nogil=True)
    def _few_512(x, w, bf16, t0, t1, n_out, bias, act, out, acc):
        """Every row of a batch under ROWS x column tiles ``t0:t1``, four 32-column tiles at a time, 512-bit."""
        m, n = x.shape
        xf, outf = x.reshape(-1), out.reshape(-1)
        for r in range(m):
            x0 = r * n
            for t in range(t0, t1, 4):  # past t1, the last tile again (its sums are not emitted)
                w0, w1 = w[t].reshape(-1), w[min(t + 1, t1 - 1)].reshape(-1)
                w2, w3 = w[min(t + 2, t1 - 1)].reshape(-1), w[min(t + 3, t1 - 1)].reshape(-1)
                a0 = zero_f32x16(); a1 = zero_f32x16(); a2 = zero_f32x16(); a3 = zero_f32x16()  # noqa: E702
                a4 = zero_f32x16(); a5 = zero_f32x16(); a6 = zero_f32x16(); a7 = zero_f32x16()  # noqa: E702
                for k in range(n):
                    v, o = load1_f32x16(xf, x0 + k), 32 * k
                    if bf16:
                        a0, a1 = vfma(a0, v, load_bf16x16(w0, o)), vfma(a1, v, load_bf16x16(w0, o + 16))
                        a2, a3 = vfma(a2, v, load_bf16x16(w1, o)), vfma(a3, v, load_bf16x16(w1, o + 16))
                        a4, a5 = vfma(a4, v, load_bf16x16(w2, o)), vfma(a5, v, load_bf16x16(w2, o + 16))
                        a6, a7 = vfma(a6, v, load_bf16x16(w3, o)), vfma(a7, v, load_bf16x16(w3, o + 16))
                    else:
                        a0, a1 = vfma(a0, v, load_f16x16(w0, o)), vfma(a1, v, load_f16x16(w0, o + 16))
                        a2, a3 = vfma(a2, v, load_f16x16(w1, o)), vfma(a3, v, load_f16x16(w1, o + 16))
                        a4, a5 = vfma(a4, v, load_f16x16(w2, o)), vfma(a5, v, load_f16x16(w2, o + 16))
                        a6, a7 = vfma(a6, v, load_f16x16(w3, o)), vfma(a7, v, load_f16x16(w3, o + 16))
                store(acc, 0, a0); store(acc, 16, a1); store(acc, 32, a2); store(acc, 48, a3)  # noqa: E702
                store(acc, 64, a4); store(acc, 80, a5); store(acc, 96, a6); store(acc, 112, a7)  # noqa: E702
                for j in range(min(4, t1 - t)):
                    _emit32(acc, 32 * j, r, 32 * (t + j), n_out, bias, act, outf)

    @njit(cache=True, boundscheck=False, nogil=True)
    def _item_avx2(x, w, bf16, r0, r1, t, n_out, bias, act, out, panel, acc):
        """Rows ``r0:r1`` (at most ROW_CHUNK) x column tile ``t`` (16 outputs), with the scratch ``panel``
        (K_BLOCK x 16 float32) and ``acc`` (ROW_CHUNK x 16 float32)."""
        n = x.shape[1]
        xf, wt, outf = x.reshape(-1), w[t].reshape(-1), out.reshape(-1)
        acc[:] = 0
        for k0 in range(0, n, KC_AVX2):
            kn = min(KC_AVX2, n - k0)
            for k in range(0, 16 * kn, 8):  # this block of the tile's weights, converted once for all rows
                store(panel, k, load_bf16x8(wt, 16 * k0 + k) if bf16 else load_f16x8(wt, 16 * k0 + k))
            for r in range(r0, r1, ROWS):
                _tile6x16(xf, _offsets(r, r1, n, k0), panel, kn, acc, 16 * (r - r0))
        for i in range(r1 - r0):
            _emit16(acc, 16 * i, r0 + i, 16 * t, n_out, bias, act, outf)

    @njit(cache=True, boundscheck=False, nogil=True)
    def _item_512(x, w, bf16, r0, r1, t, n_out, bias, act, out, panel, acc):
        """Rows ``r0:r1`` x column tile ``t`` (32 outputs), 512-bit."""
        n = x.shape[1]
        xf, wt, outf = x.reshape(-1), w[t].reshape(-1), out.reshape(-1)
        acc[:] = 0
        for k0 in range(0, n, KC_512):
            kn = min(KC_512, n - k0)
            for k in range(0, 32 * kn, 16):
                store(panel, k, load_bf16x16(wt, 32 * k0 + k) if bf16 else load_f16x16(wt, 32 * k0 + k))
            for r in range(r0, r1, ROWS):
                _tile6x32(xf, _offsets(r, r1, n, k0), panel, kn, acc, 32 * (r - r0))
        for i in range(r1 - r0):
            _emit32(acc, 32 * i, r0 + i, 32 * t, n_out, bias, act, outf)

    @njit(cache=True, nogil=True, inline="always")
    def _count(m, n_tiles):
        """Work items of a call: (row chunk, column tile) pairs, or groups of FEW_TILES tiles under ROWS rows."""
        return (n_tiles + FEW_TILES - 1) // FEW_TILES if m < ROWS else ((m + ROW_CHUNK - 1) // ROW_CHUNK) * n_tiles

    def _driver(wide: bool):
        """A GEMM of one variant (``wide``: avx512), closing over that constant and never over the item function:
        numba prunes the other branch (a CPU compiles only the variant it runs) and the on-disk cache key, which
        hashes closure values, holds between processes. Work items are (row chunk, column tile), chunk by chunk;
        ``parallel`` hands them out one at a time (``qwave.kernels.work``)."""
        tile, kc = (32, KC_512) if wide else (16, KC_AVX2)

        @njit(cache=True, boundscheck=False, nogil=True)
        @variant("512" if wide else "avx2")
        def items(x, w, bf16, n_out, bias, act, out, counter):
            """Work items taken from ``counter`` until none is left, with this thread's scratch panel and sums."""
            m, n_tiles = x.shape[0], w.shape[0]
            panel, acc = np.empty(kc * tile, np.float32), np.empty(ROW_CHUNK * tile, np.float32)
            n_items = _count(m, n_tiles)
            item = take(counter)
            while item < n_items:
                r0, t = (item // n_tiles) * ROW_CHUNK, item % n_tiles
                if m < ROWS:  # items of FEW_TILES column tiles, all rows
                    t0 = item * FEW_TILES
                    if wide:
                        _few_512(x, w, bf16, t0, min(n_tiles, t0 + FEW_TILES), n_out, bias, act, out, acc)
                    else:
                        _few_avx2(x, w, bf16, t0, min(n_tiles, t0 + FEW_TILES), n_out, bias, act, out, acc)
                elif wide:
                    _item_512(x, w, bf16, r0, min(m, r0 + ROW_CHUNK), t, n_out, bias, act, out, panel, acc)
                else:
                    _item_avx2(x, w, bf16, r0, min(m, r0 + ROW_CHUNK), t, n_out, bias, act, out, panel, acc)
                item = take(counter)

        @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
        @variant("512" if wide else "avx2")
        def gemm(x, w, bf16, n_out, bias, act, out, parallel):
            counter = new_counter()
            if not parallel:
                items(x, w, bf16, n_out, bias, act, out, counter)
                return
            for _ in prange(min(_count(x.shape[0], w.shape[0]), MAX_THREADS)):
                items(x, w, bf16, n_out, bias, act, out, counter)

        return gemm

    GEMM_AVX2, GEMM_512 = _driver(False), _driver(True)
    GEMM = {"avx2": GEMM_AVX2, "avx512": GEMM_512}

    def linear_np(weights: HalfWeights, x: np.ndarray, bias: np.ndarray, act: int) -> np.ndarray:
        """``act(x @ W.T + bias)`` on float32 rows ``x [batch, in]`` (``bias`` may be empty)."""
        out = np.empty((x.shape[0], weights.out_features), dtype=np.float32)
        parallel = x.shape[0] * weights.out_features * weights.in_features >= PARALLEL_MACS
        GEMM[weights.isa](np.ascontiguousarray(x), weights.codes, weights.bf16, weights.out_features, bias, act, out,
                          parallel)
        return out

    def _chain(wide: bool):
        """Consecutive fp16 / bf16 layers in one compiled call: no Python, and so no wait for the GIL, between
        layers. ``table`` (``qwave.kernels.table``) has a row per layer: its codes and bias, then ``[bf16?, out,
        in, act]``; each layer is what ``linear_np`` computes. The drivers are globals, not closure values (see
        ``_driver``)."""

        @njit(cache=True, boundscheck=False, nogil=True)
        @variant("512" if wide else "avx2")
        def chain(x, table):
            h = x
            for i in range(table.shape[0]):
                w, bias = view3(table, i, 0, np.uint16), view1(table, i, 1, np.float32)
                bf16, n_out, n_in, act = meta(table, i, 2, 0) == 1, meta(table, i, 2, 1), meta(table, i, 2, 2), \
                    meta(table, i, 2, 3)
                out = np.empty((h.shape[0], n_out), dtype=np.float32)
                parallel = h.shape[0] * n_out * n_in >= PARALLEL_MACS
                if wide:
                    GEMM_512(h, w, bf16, n_out, bias, act, out, parallel)
                else:
                    GEMM_AVX2(h, w, bf16, n_out, bias, act, out, parallel)
                h = out
            return h

        return chain

    CHAIN = {"avx2": _chain(False), "avx512": _chain(True)}

    def chain_layers(layers: list[tuple[HalfWeights, np.ndarray, int]]):
        """A callable ``x float32 [batch, in] -> float32 [batch, out]`` running the ``(weights, bias, act)`` layers
        in one compiled call, bit for bit ``linear_np`` layer after layer; ``None`` for mixed variants."""
        return chained(CHAIN, layers, lambda w, bias: (w.codes, bias),
                       lambda w, act: (w.bf16, w.out_features, w.in_features, act))

    _NO_BIAS = np.empty(0, dtype=np.float32)

    KERNEL = register_kernel(
        Kernel(
            name=f"half-numba-{ISA}",
            formats=("fp16", "bf16"),
            device="cpu",
            prepare=lambda fmt, packed, shape: prepare_weight(packed["weight"], ISA),
            run=lambda w, x: torch.from_numpy(linear_np(w, x.detach().contiguous().numpy(), _NO_BIAS, NO_ACTIVATION)),
            cached_bytes=lambda w: w.cached_bytes,
            unprepare=lambda fmt, w: unprepare_weight(w),
            run_np=linear_np,
            chain=chain_layers,
        )
    )
