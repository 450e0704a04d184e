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
ROW_CHUNK = 66  # rows per work item (a multiple of ROWS): the panel conversion is shared by them
PARALLEL_MACS = 1 << 18


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
        vfma,
        zero_f32x8,
        zero_f32x16,
    )
    from qwave.kernels.work import MAX_THREADS, take

    ISA = "avx512" if HAS_AVX512 else "avx2"

    @njit(cache=True, boundscheck=False, nogil=True)
    def _emit(f, rows, r, c0, width, bias, act, out):
        for i in range(rows):
            for c in range(width):
                y = f[i, c]
                if bias.shape[0] > 0:
                    y += bias[c0 + c]
                out[r + i, c0 + c] = activate(y, act)

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _dot6x16(xf, panel, x0, n):
        """Twelve float32x8 sums: rows ``x0 + i * n`` (i < 6) of ``xf`` x the panel's 16 columns, over ``n`` inputs."""
        a00 = zero_f32x8(); a01 = zero_f32x8(); a10 = zero_f32x8(); a11 = zero_f32x8()  # noqa: E702
        a20 = zero_f32x8(); a21 = zero_f32x8(); a30 = zero_f32x8(); a31 = zero_f32x8()  # noqa: E702
        a40 = zero_f32x8(); a41 = zero_f32x8(); a50 = zero_f32x8(); a51 = zero_f32x8()  # noqa: E702
        for k in range(n):
            b0, b1 = load_f32x8(panel, 16 * k), load_f32x8(panel, 16 * k + 8)
            a = load1_f32x8(xf, x0 + k)
            a00 = vfma(a00, a, b0); a01 = vfma(a01, a, b1)  # noqa: E702
            a = load1_f32x8(xf, x0 + n + k)
            a10 = vfma(a10, a, b0); a11 = vfma(a11, a, b1)  # noqa: E702
            a = load1_f32x8(xf, x0 + 2 * n + k)
            a20 = vfma(a20, a, b0); a21 = vfma(a21, a, b1)  # noqa: E702
            a = load1_f32x8(xf, x0 + 3 * n + k)
            a30 = vfma(a30, a, b0); a31 = vfma(a31, a, b1)  # noqa: E702
            a = load1_f32x8(xf, x0 + 4 * n + k)
            a40 = vfma(a40, a, b0); a41 = vfma(a41, a, b1)  # noqa: E702
            a = load1_f32x8(xf, x0 + 5 * n + k)
            a50 = vfma(a50, a, b0); a51 = vfma(a51, a, b1)  # noqa: E702
        return a00, a01, a10, a11, a20, a21, a30, a31, a40, a41, a50, a51

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _dot6x32(xf, panel, x0, n):
        """Twelve float32x16 sums: rows ``x0 + i * n`` (i < 6) x the panel's 32 columns, 512-bit."""
        a00 = zero_f32x16(); a01 = zero_f32x16(); a10 = zero_f32x16(); a11 = zero_f32x16()  # noqa: E702
        a20 = zero_f32x16(); a21 = zero_f32x16(); a30 = zero_f32x16(); a31 = zero_f32x16()  # noqa: E702
        a40 = zero_f32x16(); a41 = zero_f32x16(); a50 = zero_f32x16(); a51 = zero_f32x16()  # noqa: E702
        for k in range(n):
            b0, b1 = load_f32x16(panel, 32 * k), load_f32x16(panel, 32 * k + 16)
            a = load1_f32x16(xf, x0 + k)
            a00 = vfma(a00, a, b0); a01 = vfma(a01, a, b1)  # noqa: E702
            a = load1_f32x16(xf, x0 + n + k)
            a10 = vfma(a10, a, b0); a11 = vfma(a11, a, b1)  # noqa: E702
            a = load1_f32x16(xf, x0 + 2 * n + k)
            a20 = vfma(a20, a, b0); a21 = vfma(a21, a, b1)  # noqa: E702
            a = load1_f32x16(xf, x0 + 3 * n + k)
            a30 = vfma(a30, a, b0); a31 = vfma(a31, a, b1)  # noqa: E702
            a = load1_f32x16(xf, x0 + 4 * n + k)
            a40 = vfma(a40, a, b0); a41 = vfma(a41, a, b1)  # noqa: E702
            a = load1_f32x16(xf, x0 + 5 * n + k)
            a50 = vfma(a50, a, b0); a51 = vfma(a51, a, b1)  # noqa: E702
        return a00, a01, a10, a11, a20, a21, a30, a31, a40, a41, a50, a51

    @njit(cache=True, boundscheck=False, nogil=True)
    def _block_avx2(x, w, bf16, r0, r1, t0, t1, n_out, bias, act, out):
        """Rows ``r0:r1`` x column tiles ``t0:t1`` (16 outputs each)."""
        n = x.shape[1]
        xf = x.reshape(-1)
        panel = np.empty(n * 16, np.float32)
        f = np.empty((ROWS, 16), np.float32)
        flat = f.reshape(-1)
        for t in range(t0, t1):
            wt = w[t].reshape(-1)
            for k in range(0, 16 * n, 8):  # convert the tile's 16 columns for every input once
                store(panel, k, load_bf16x8(wt, k) if bf16 else load_f16x8(wt, k))
            c0 = 16 * t
            for r in range(r0, r1, ROWS):
                rows = min(ROWS, r1 - r)
                if rows == ROWS:
                    v = _dot6x16(xf, panel, r * n, n)
                    for j in range(12):
                        store(flat, 8 * j, v[j])
                else:
                    for i in range(rows):
                        lo, hi, x0 = zero_f32x8(), zero_f32x8(), (r + i) * n
                        for k in range(n):
                            a = load1_f32x8(xf, x0 + k)
                            lo = vfma(lo, a, load_f32x8(panel, 16 * k))
                            hi = vfma(hi, a, load_f32x8(panel, 16 * k + 8))
                        store(flat, 16 * i, lo); store(flat, 16 * i + 8, hi)  # noqa: E702
                _emit(f, rows, r, c0, min(16, n_out - c0), bias, act, out)

    @njit(cache=True, boundscheck=False, nogil=True)
    def _block_512(x, w, bf16, r0, r1, t0, t1, n_out, bias, act, out):
        """Rows ``r0:r1`` x column tiles ``t0:t1`` (32 outputs each), 512-bit."""
        n = x.shape[1]
        xf = x.reshape(-1)
        panel = np.empty(n * 32, np.float32)
        f = np.empty((ROWS, 32), np.float32)
        flat = f.reshape(-1)
        for t in range(t0, t1):
            wt = w[t].reshape(-1)
            for k in range(0, 32 * n, 16):
                store(panel, k, load_bf16x16(wt, k) if bf16 else load_f16x16(wt, k))
            c0 = 32 * t
            for r in range(r0, r1, ROWS):
                rows = min(ROWS, r1 - r)
                if rows == ROWS:
                    v = _dot6x32(xf, panel, r * n, n)
                    for j in range(12):
                        store(flat, 16 * j, v[j])
                else:
                    for i in range(rows):
                        lo, hi, x0 = zero_f32x16(), zero_f32x16(), (r + i) * n
                        for k in range(n):
                            a = load1_f32x16(xf, x0 + k)
                            lo = vfma(lo, a, load_f32x16(panel, 32 * k))
                            hi = vfma(hi, a, load_f32x16(panel, 32 * k + 16))
                        store(flat, 32 * i, lo); store(flat, 32 * i + 16, hi)  # noqa: E702
                _emit(f, rows, r, c0, min(32, n_out - c0), bias, act, out)

    def _driver(wide: bool):
        """A parallel GEMM of one variant (``wide``: avx512), closing over that constant and never over the block
        function: numba prunes the other branch (a CPU compiles only the variant it runs) and the on-disk cache key,
        which hashes closure values, holds between processes."""

        @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
        def gemm(x, w, bf16, n_out, bias, act, out, parallel):
            m, n_tiles, zero = x.shape[0], w.shape[0], np.int64(0)  # int64, not Literal[0]: one compiled block
            if not parallel:
                if wide:
                    _block_512(x, w, bf16, zero, m, zero, n_tiles, n_out, bias, act, out)
                else:
                    _block_avx2(x, w, bf16, zero, m, zero, n_tiles, n_out, bias, act, out)
                return
            n_items = ((m + ROW_CHUNK - 1) // ROW_CHUNK) * n_tiles
            counter = np.zeros(1, np.int64)
            for _ in prange(min(n_items, MAX_THREADS)):  # items handed out one at a time (``qwave.kernels.work``)
                item = take(counter)
                while item < n_items:
                    r0, t = (item // n_tiles) * ROW_CHUNK, item % n_tiles
                    if wide:
                        _block_512(x, w, bf16, r0, min(m, r0 + ROW_CHUNK), t, t + 1, n_out, bias, act, out)
                    else:
                        _block_avx2(x, w, bf16, r0, min(m, r0 + ROW_CHUNK), t, t + 1, n_out, bias, act, out)
                    item = take(counter)

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
