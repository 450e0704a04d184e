"""fp16 / bf16 linear layers: the 16-bit weights are converted to float32 inside the kernel, never cached as float32.

The layer holds only its 16-bit weights, transposed per tile of output columns (``[tile, in, columns]``, a
permutation of the stored bytes). Each work item converts one tile's columns for all inputs into a float32 scratch
panel (``vcvtph2ps`` for fp16; bf16 is the high half of a float32, a 16-bit shift), once per row chunk, then runs
an FP32 register-tiled microkernel over it: 6 rows x 16 columns (``avx2``, 12 ``vfmadd231ps`` accumulators) or
6 rows x 32 columns (``avx512``). ``y[i, j] = sum_k x[i, k] * w[j, k]`` is accumulated in input order with fused
multiply-adds (float32 rounding differs from PyTorch's GEMM in the last bits), then the bias and the activation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from qwave.kernels import FAST_KERNELS, NO_ACTIVATION, Kernel, register_kernel

TILES = {"avx2": 16, "avx512": 32}
ROWS = 6  # rows per register tile
# Blocking, sized for an AVX2 CPU with a 512 KB L2 and a 32 KB L1 (Zen 3): a work item is ROW_CHUNK rows x one
# column tile. Its inputs are taken K_BLOCK at a time: that block of the tile's weights is converted once into a
# float32 panel (256 x 16 x 4 = 16 KB for avx2, 128 x 32 x 4 = 16 KB for avx512: it stays in L1) and then every
# row of the chunk passes over it, so a conversion serves ROW_CHUNK rows. The chunk's rows (66 x 1536 x 4 = 405 KB
# for the reference MLP's first layer) stay in L2 while the column tiles pass over them.
ROW_CHUNK = 66  # a multiple of ROWS
K_BLOCK = {"avx2": 256, "avx512": 128}
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
    )
    from qwave.kernels.work import MAX_THREADS, take

    ISA = "avx512" if HAS_AVX512 else "avx2"

    KC_AVX2, KC_512 = K_BLOCK["avx2"], K_BLOCK["avx512"]

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _tile6x16(xf, o, panel, kn, acc, a):
        """``acc[a : a + 96]`` (6 rows x 16 columns) += rows at offsets ``o`` of ``xf`` x the panel's ``kn`` inputs,
        one fused multiply-add per input in input order (twelve float32x8 accumulators)."""
        o0, o1, o2, o3, o4, o5 = o
        a00, a01, a10, a11 = load_f32x8(acc, a), load_f32x8(acc, a + 8), load_f32x8(acc, a + 16), load_f32x8(acc, a + 24)
        a20, a21, a30, a31 = load_f32x8(acc, a + 32), load_f32x8(acc, a + 40), load_f32x8(acc, a + 48), load_f32x8(
            acc, a + 56)
        a40, a41, a50, a51 = load_f32x8(acc, a + 64), load_f32x8(acc, a + 72), load_f32x8(acc, a + 80), load_f32x8(
            acc, a + 88)
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
        unused accumulator rows), so a short tile of 2 to 5 rows runs the same 6-row microkernel."""
        last = r1 - 1
        return (r * n + k0, min(r + 1, last) * n + k0, min(r + 2, last) * n + k0, min(r + 3, last) * n + k0,
                min(r + 4, last) * n + k0, min(r + 5, last) * n + k0)

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
                if r1 - r > 1:
                    _tile6x16(xf, _offsets(r, r1, n, k0), panel, kn, acc, 16 * (r - r0))
                else:  # one row: two sums (the 6-row tile would cost 6 rows of multiply-adds for it)
                    a, x0 = 16 * (r - r0), r * n + k0
                    lo, hi = load_f32x8(acc, a), load_f32x8(acc, a + 8)
                    for k in range(kn):
                        v = load1_f32x8(xf, x0 + k)
                        lo, hi = vfma(lo, v, load_f32x8(panel, 16 * k)), vfma(hi, v, load_f32x8(panel, 16 * k + 8))
                    store(acc, a, lo); store(acc, a + 8, hi)  # noqa: E702
        c0 = 16 * t
        width = min(16, n_out - c0)
        for i in range(r1 - r0):
            o = (r0 + i) * n_out + c0
            if width == 16:
                lo, hi = load_f32x8(acc, 16 * i), load_f32x8(acc, 16 * i + 8)
                if bias.shape[0] > 0:
                    lo, hi = vadd(lo, load_f32x8(bias, c0)), vadd(hi, load_f32x8(bias, c0 + 8))
                store(outf, o, activate(lo, act)); store(outf, o + 8, activate(hi, act))  # noqa: E702
            else:
                for c in range(width):
                    y = acc[16 * i + c]
                    if bias.shape[0] > 0:
                        y += bias[c0 + c]
                    outf[o + c] = activate(y, act)

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
                if r1 - r > 1:
                    _tile6x32(xf, _offsets(r, r1, n, k0), panel, kn, acc, 32 * (r - r0))
                else:  # one row: two sums (the 6-row tile would cost 6 rows of multiply-adds for it)
                    a, x0 = 32 * (r - r0), r * n + k0
                    lo, hi = load_f32x16(acc, a), load_f32x16(acc, a + 16)
                    for k in range(kn):
                        v = load1_f32x16(xf, x0 + k)
                        lo, hi = vfma(lo, v, load_f32x16(panel, 32 * k)), vfma(hi, v, load_f32x16(panel, 32 * k + 16))
                    store(acc, a, lo); store(acc, a + 16, hi)  # noqa: E702
        c0 = 32 * t
        width = min(32, n_out - c0)
        for i in range(r1 - r0):
            o = (r0 + i) * n_out + c0
            if width == 32:
                lo, hi = load_f32x16(acc, 32 * i), load_f32x16(acc, 32 * i + 16)
                if bias.shape[0] > 0:
                    lo, hi = vadd(lo, load_f32x16(bias, c0)), vadd(hi, load_f32x16(bias, c0 + 16))
                store(outf, o, activate(lo, act)); store(outf, o + 16, activate(hi, act))  # noqa: E702
            else:
                for c in range(width):
                    y = acc[32 * i + c]
                    if bias.shape[0] > 0:
                        y += bias[c0 + c]
                    outf[o + c] = activate(y, act)

    def _driver(wide: bool):
        """A GEMM of one variant (``wide``: avx512), closing over that constant and never over the item function:
        numba prunes the other branch (a CPU compiles only the variant it runs) and the on-disk cache key, which
        hashes closure values, holds between processes. Work items are (row chunk, column tile), chunk by chunk;
        ``parallel`` hands them out one at a time (``qwave.kernels.work``)."""
        tile, kc = (32, KC_512) if wide else (16, KC_AVX2)

        @njit(cache=True, boundscheck=False, nogil=True)
        def items(x, w, bf16, n_out, bias, act, out, counter):
            """Work items taken from ``counter`` until none is left, with this thread's scratch panel and sums."""
            m, n_tiles = x.shape[0], w.shape[0]
            n_items = ((m + ROW_CHUNK - 1) // ROW_CHUNK) * n_tiles
            panel, acc = np.empty(kc * tile, np.float32), np.empty(ROW_CHUNK * tile, np.float32)
            item = take(counter)
            while item < n_items:
                r0, t = (item // n_tiles) * ROW_CHUNK, item % n_tiles
                if wide:
                    _item_512(x, w, bf16, r0, min(m, r0 + ROW_CHUNK), t, n_out, bias, act, out, panel, acc)
                else:
                    _item_avx2(x, w, bf16, r0, min(m, r0 + ROW_CHUNK), t, n_out, bias, act, out, panel, acc)
                item = take(counter)

        @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
        def gemm(x, w, bf16, n_out, bias, act, out, parallel):
            counter = np.zeros(1, np.int64)
            if not parallel:
                items(x, w, bf16, n_out, bias, act, out, counter)
                return
            n_items = ((x.shape[0] + ROW_CHUNK - 1) // ROW_CHUNK) * w.shape[0]
            for _ in prange(min(n_items, MAX_THREADS)):
                items(x, w, bf16, n_out, bias, act, out, counter)

        return gemm

    GEMM = {"avx2": _driver(False), "avx512": _driver(True)}

    def linear_np(weights: HalfWeights, x: np.ndarray, bias: np.ndarray, act: int) -> np.ndarray:
        """``act(x @ W.T + bias)`` on float32 rows ``x [batch, in]`` (``bias`` may be empty)."""
        out = np.empty((x.shape[0], weights.out_features), dtype=np.float32)
        parallel = x.shape[0] * weights.out_features * weights.in_features >= PARALLEL_MACS
        GEMM[weights.isa](np.ascontiguousarray(x), weights.codes, weights.bf16, weights.out_features, bias, act, out,
                          parallel)
        return out

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
        )
    )
