"""Low-bit weights x int8 activations (W4A8, W2A8, W1.58A8) with the weights unpacked in registers.

Recipe (``qwave.formats.base.int8_activation_matmul``): activations quantized per row as for int8 (``act8``), exact
integer dots of the activation codes with the weight codes per group, ``y = s_x * sum_g(float(dot_g) * s_w[:, g])``.
Bit for bit the format's reference.

Every weight code is an affine image of a small unsigned code ``u`` in ``[0, 2^bits)``: ``code = alpha * u - beta``
(int4: ``u = code + 8``; half-step int2: ``code = 2u - 3``; ternary: ``u = t + 1``), so

    dot_g = alpha * sum(u * q_x) - beta * sum(q_x),

and ``u`` is the *unsigned* operand of ``vpmaddubsw`` / ``vpdpbusd`` against the signed activation codes: no sign
trick, and the narrow ``u`` keeps products small enough to add several ``vpmaddubsw`` results in int16 before one
``vpmaddwd`` widens them. ``sum(q_x)`` per row and group comes with the activation codes.

Kernel layouts (prepare converts the stored packing; each is a permutation of the codes, so the stored tensors
can be re-derived bit for bit): per tile of output columns, per group, per step of 4 inputs, bytes holding
``8 / bits`` codes ``[columns, 4]`` in their bit fields:

* ``avx2``, 16 columns, 4 rows per register tile. 4-bit: 32 bytes per step, low nibbles columns 0-7, high nibbles
  8-15. 2-bit: 32 bytes per two steps, bit pairs 0/1/2/3 = (step 0, columns 0-7), (0, 8-15), (1, 0-7), (1, 8-15).
  int16 chains: ``|u q_x| <= 15 * 127`` (4-bit) so 8 steps (``8 * 2 * 1905 < 2^15``); ``<= 3 * 127`` (2-bit) so 40.
* ``avx512vnni``, 64 columns, 4 rows. 4-bit: 128 bytes per step (two vectors of low / high nibbles: columns 0-15 /
  16-31, 32-47 / 48-63). 2-bit: 64 bytes per step, bit pairs 0..3 = columns 0-15, 16-31, 32-47, 48-63.

Bound: int32 accumulators see at most ``BLOCK`` inputs (``65536 * 15 * 127 < 2^31``) before the int64 spill, so any
group length is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from qwave.kernels import FAST_KERNELS, Kernel, register_kernel
from qwave.kernels.int8 import BLOCK, COL_BLOCK, PARALLEL_MACS, ROW_CHUNK, TILES, tile_rows, tile_scales

CHAIN4, CHAIN2 = 8, 40  # avx2: steps of 4 inputs summed in int16 before widening (see the bound above)
FORMATS = ("int4", "int3", "int2", "ternary")  # unsigned codes of 2 bits (int2, ternary) or 4 bits (int3, int4)
STEP = {("avx2", 4): 4, ("avx2", 2): 8, ("avx512vnni", 4): 4, ("avx512vnni", 2): 4}  # group padding (inputs)


@dataclass
class LowBitWeights:
    """Unsigned weight codes in a variant's kernel layout plus the affine map back to the format's codes."""

    isa: str  # "avx2" or "avx512vnni"
    bits: int  # 2 or 4: width of the unsigned codes u
    codes: np.ndarray  # uint8 [tiles, bytes per tile]
    scale: np.ndarray  # float32 [groups, tiles * tile] (0 on padded columns)
    alpha: int  # code = alpha * u - beta
    beta: int
    out_features: int
    in_features: int
    group_size: int
    padded_group: int

    @property
    def cached_bytes(self) -> int:
        return int(self.codes.nbytes + self.scale.nbytes)


def pack_fields(u: np.ndarray, bits: int, isa: str) -> np.ndarray:
    """``[tiles, groups, steps, tile, 4]`` unsigned codes -> the variant's bytes (see the module docstring)."""
    tiles, groups, steps, tile, _ = u.shape
    u = u.astype(np.uint8)
    if isa == "avx2" and bits == 4:  # columns 8-15 into the high nibble
        halves = u.reshape(tiles, groups, steps, 2, 8, 4)
        return halves[:, :, :, 0] | (halves[:, :, :, 1] << 4)
    if isa == "avx2":  # two steps x two column halves into the four bit pairs
        quads = u.reshape(tiles, groups, steps // 2, 2, 2, 8, 4)
        return (quads[:, :, :, 0, 0] | (quads[:, :, :, 0, 1] << 2) | (quads[:, :, :, 1, 0] << 4)
                | (quads[:, :, :, 1, 1] << 6))
    if bits == 4:  # per step: [16 lo | 16 hi] twice
        parts = u.reshape(tiles, groups, steps, 2, 2, 16, 4)
        return parts[:, :, :, :, 0] | (parts[:, :, :, :, 1] << 4)
    parts = u.reshape(tiles, groups, steps, 4, 16, 4)
    return parts[:, :, :, 0] | (parts[:, :, :, 1] << 2) | (parts[:, :, :, 2] << 4) | (parts[:, :, :, 3] << 6)


def prepare_unsigned(
    u: np.ndarray, scale: torch.Tensor, shape: tuple[int, int], group_size: int | None, bits: int,
    alpha: int, beta: int, isa: str,
) -> LowBitWeights:
    """Kernel state from unsigned codes ``u [out, in]`` (``0 <= u < 2^bits``, ``code = alpha * u - beta``) and fp16
    scales ``[out, groups]``. Padding inputs get ``u = 0``: their activation codes are 0 too."""
    out_features, in_features = shape
    size = max(1, in_features if group_size is None else min(group_size, in_features))
    groups = math.ceil(in_features / size)
    padded = math.ceil(size / STEP[(isa, bits)]) * STEP[(isa, bits)]
    tiled = tile_rows(np.ascontiguousarray(u, dtype=np.uint8), groups, size, padded, TILES[isa])
    codes = pack_fields(tiled, bits, isa)
    return LowBitWeights(isa, bits, np.ascontiguousarray(codes.reshape(codes.shape[0], -1)),
                         tile_scales(scale, out_features, groups, TILES[isa]), int(alpha), int(beta),
                         out_features, in_features, size, padded)


if FAST_KERNELS:
    from numba import njit, prange

    from qwave.kernels._simd import (
        bcast4_i8x32,
        bcast4_i32x16,
        dpbusd,
        load_i8x32,
        load_i32x16,
        maddubs,
        shr_mask,
        store,
        vadd,
        widen_pairs,
        zero_i16x16,
        zero_i32x8,
        zero_i32x16,
    )
    from qwave.kernels.act8 import SIGNED, emit, quantize_rows
    from qwave.kernels.int8 import ISA

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _rows4(c, qs, x0, width, k, b0, b1):
        """Add one step (4 inputs) of 4 rows x 16 columns to the int16 chains ``c`` (8 vectors)."""
        a = bcast4_i8x32(qs, x0 + k)
        c0, c1 = vadd(c[0], maddubs(b0, a)), vadd(c[1], maddubs(b1, a))
        a = bcast4_i8x32(qs, x0 + width + k)
        c2, c3 = vadd(c[2], maddubs(b0, a)), vadd(c[3], maddubs(b1, a))
        a = bcast4_i8x32(qs, x0 + 2 * width + k)
        c4, c5 = vadd(c[4], maddubs(b0, a)), vadd(c[5], maddubs(b1, a))
        a = bcast4_i8x32(qs, x0 + 3 * width + k)
        c6, c7 = vadd(c[6], maddubs(b0, a)), vadd(c[7], maddubs(b1, a))
        return c0, c1, c2, c3, c4, c5, c6, c7

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _widen8(acc, c):
        return (vadd(acc[0], widen_pairs(c[0])), vadd(acc[1], widen_pairs(c[1])), vadd(acc[2], widen_pairs(c[2])),
                vadd(acc[3], widen_pairs(c[3])), vadd(acc[4], widen_pairs(c[4])), vadd(acc[5], widen_pairs(c[5])),
                vadd(acc[6], widen_pairs(c[6])), vadd(acc[7], widen_pairs(c[7])))

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _zeros8_16():
        z = zero_i16x16()
        return z, z, z, z, z, z, z, z

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _dot4x16(qs, wf, x0, width, w0, steps, bits):
        """Eight int32x8 sums ``u * q_x``: rows ``x0 + i * width`` (i < 4) x 16 columns over ``steps`` steps."""
        z = zero_i32x8()
        acc = (z, z, z, z, z, z, z, z)
        chain = CHAIN4 if bits == 4 else CHAIN2
        for s0 in range(0, steps, chain):
            c = _zeros8_16()
            if bits == 4:
                for s in range(s0, min(steps, s0 + chain)):
                    v = load_i8x32(wf, w0 + 32 * s)
                    c = _rows4(c, qs, x0, width, 4 * s, shr_mask(v, 0, 0x0F), shr_mask(v, 4, 0x0F))
            else:
                for s in range(s0, min(steps, s0 + chain), 2):
                    v = load_i8x32(wf, w0 + 16 * s)
                    c = _rows4(c, qs, x0, width, 4 * s, shr_mask(v, 0, 3), shr_mask(v, 2, 3))
                    c = _rows4(c, qs, x0, width, 4 * s + 4, shr_mask(v, 4, 3), shr_mask(v, 6, 3))
            acc = _widen8(acc, c)
        return acc

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _dot1x16(qs, wf, x0, w0, steps, bits):
        """Two int32x8 sums ``u * q_x``: one row x 16 columns."""
        lo, hi = zero_i32x8(), zero_i32x8()
        chain = CHAIN4 if bits == 4 else CHAIN2
        for s0 in range(0, steps, chain):
            c0, c1 = zero_i16x16(), zero_i16x16()
            if bits == 4:
                for s in range(s0, min(steps, s0 + chain)):
                    v, a = load_i8x32(wf, w0 + 32 * s), bcast4_i8x32(qs, x0 + 4 * s)
                    c0 = vadd(c0, maddubs(shr_mask(v, 0, 0x0F), a))
                    c1 = vadd(c1, maddubs(shr_mask(v, 4, 0x0F), a))
            else:
                for s in range(s0, min(steps, s0 + chain), 2):
                    v, a = load_i8x32(wf, w0 + 16 * s), bcast4_i8x32(qs, x0 + 4 * s)
                    b = bcast4_i8x32(qs, x0 + 4 * s + 4)
                    c0 = vadd(vadd(c0, maddubs(shr_mask(v, 0, 3), a)), maddubs(shr_mask(v, 4, 3), b))
                    c1 = vadd(vadd(c1, maddubs(shr_mask(v, 2, 3), a)), maddubs(shr_mask(v, 6, 3), b))
            lo, hi = vadd(lo, widen_pairs(c0)), vadd(hi, widen_pairs(c1))
        return lo, hi

    @njit(cache=True, boundscheck=False, nogil=True)
    def _block_avx2(qs, sums, x_scale, w, w_scale, bits, alpha, beta, n_out, groups, padded, r0, r1, t0, t1,
                    bias, relu, out):
        """Output rows ``r0:r1`` x column tiles ``t0:t1`` (16 outputs each)."""
        width, steps_g, block = groups * padded, padded // 4, BLOCK // 4
        step_bytes = 32 if bits == 4 else 16  # bytes of one 16-column tile per step of 4 inputs
        qs_f = qs.reshape(-1)
        acc = np.empty(64, dtype=np.int32)
        total = np.empty((4, 16), dtype=np.int64)
        f = np.empty((4, 16), dtype=np.float32)
        for t in range(t0, t1):
            wf, c0 = w[t], t * 16
            for r in range(r0, r1, 4):
                rows = min(4, r1 - r)
                f[:] = 0.0
                for g in range(groups):
                    total[:] = 0
                    for b in range(0, steps_g, block):
                        n = min(block, steps_g - b)
                        x0, w0 = r * width + g * padded + 4 * b, (g * steps_g + b) * step_bytes
                        if rows == 4:
                            v = _dot4x16(qs_f, wf, x0, width, w0, n, bits)
                            store(acc, 0, v[0]); store(acc, 8, v[1]); store(acc, 16, v[2]); store(acc, 24, v[3])  # noqa: E702
                            store(acc, 32, v[4]); store(acc, 40, v[5]); store(acc, 48, v[6]); store(acc, 56, v[7])  # noqa: E702
                        else:
                            for i in range(rows):
                                lo, hi = _dot1x16(qs_f, wf, x0 + i * width, w0, n, bits)
                                store(acc, 16 * i, lo); store(acc, 16 * i + 8, hi)  # noqa: E702
                        for i in range(rows):
                            for c in range(16):
                                total[i, c] += acc[16 * i + c]
                    sc = w_scale[g, c0 : c0 + 16]
                    for i in range(rows):
                        correction = beta * np.int64(sums[r + i, g])
                        for c in range(16):
                            f[i, c] += np.float32(alpha * total[i, c] - correction) * sc[c]
                emit(f, rows, r, c0, min(16, n_out - c0), x_scale, bias, relu, out)

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _nibbles4(wf, wk):
        """The four 16-column vectors of one 4-bit step of a 64-column tile."""
        v, u = load_i32x16(wf, wk), load_i32x16(wf, wk + 64)
        return shr_mask(v, 0, 0x0F), shr_mask(v, 4, 0x0F), shr_mask(u, 0, 0x0F), shr_mask(u, 4, 0x0F)

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _crumbs4(wf, wk):
        """The four 16-column vectors of one 2-bit step of a 64-column tile."""
        v = load_i32x16(wf, wk)
        return shr_mask(v, 0, 3), shr_mask(v, 2, 3), shr_mask(v, 4, 3), shr_mask(v, 6, 3)

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _dot4x64(qs, wf, x0, width, w0, steps, bits):
        """Sixteen int32x16 sums ``u * q_x``: rows ``x0 + i * width`` (i < 4) x 64 columns, ``vpdpbusd``."""
        a00 = zero_i32x16(); a01 = zero_i32x16(); a02 = zero_i32x16(); a03 = zero_i32x16()  # noqa: E702
        a10 = zero_i32x16(); a11 = zero_i32x16(); a12 = zero_i32x16(); a13 = zero_i32x16()  # noqa: E702
        a20 = zero_i32x16(); a21 = zero_i32x16(); a22 = zero_i32x16(); a23 = zero_i32x16()  # noqa: E702
        a30 = zero_i32x16(); a31 = zero_i32x16(); a32 = zero_i32x16(); a33 = zero_i32x16()  # noqa: E702
        x1, x2, x3 = x0 + width, x0 + 2 * width, x0 + 3 * width
        step_bytes = 128 if bits == 4 else 64
        for s in range(steps):
            k = 4 * s
            if bits == 4:
                b0, b1, b2, b3 = _nibbles4(wf, w0 + step_bytes * s)
            else:
                b0, b1, b2, b3 = _crumbs4(wf, w0 + step_bytes * s)
            a = bcast4_i32x16(qs, x0 + k)
            a00 = dpbusd(a00, b0, a); a01 = dpbusd(a01, b1, a); a02 = dpbusd(a02, b2, a); a03 = dpbusd(a03, b3, a)  # noqa: E501, E702
            a = bcast4_i32x16(qs, x1 + k)
            a10 = dpbusd(a10, b0, a); a11 = dpbusd(a11, b1, a); a12 = dpbusd(a12, b2, a); a13 = dpbusd(a13, b3, a)  # noqa: E501, E702
            a = bcast4_i32x16(qs, x2 + k)
            a20 = dpbusd(a20, b0, a); a21 = dpbusd(a21, b1, a); a22 = dpbusd(a22, b2, a); a23 = dpbusd(a23, b3, a)  # noqa: E501, E702
            a = bcast4_i32x16(qs, x3 + k)
            a30 = dpbusd(a30, b0, a); a31 = dpbusd(a31, b1, a); a32 = dpbusd(a32, b2, a); a33 = dpbusd(a33, b3, a)  # noqa: E501, E702
        return a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _dot1x64(qs, wf, x0, w0, steps, bits):
        """One row x 64 columns, ``vpdpbusd``."""
        c0 = zero_i32x16(); c1 = zero_i32x16(); c2 = zero_i32x16(); c3 = zero_i32x16()  # noqa: E702
        step_bytes = 128 if bits == 4 else 64
        for s in range(steps):
            if bits == 4:
                b0, b1, b2, b3 = _nibbles4(wf, w0 + step_bytes * s)
            else:
                b0, b1, b2, b3 = _crumbs4(wf, w0 + step_bytes * s)
            a = bcast4_i32x16(qs, x0 + 4 * s)
            c0 = dpbusd(c0, b0, a); c1 = dpbusd(c1, b1, a); c2 = dpbusd(c2, b2, a); c3 = dpbusd(c3, b3, a)  # noqa: E702
        return c0, c1, c2, c3

    @njit(cache=True, boundscheck=False, nogil=True)
    def _block_512(qs, sums, x_scale, w, w_scale, bits, alpha, beta, n_out, groups, padded, r0, r1, t0, t1,
                   bias, relu, out):
        """Output rows ``r0:r1`` x column tiles ``t0:t1`` (64 outputs each), 512-bit ``vpdpbusd``."""
        width, steps_g, block = groups * padded, padded // 4, BLOCK // 4
        step_bytes = 128 if bits == 4 else 64
        qs_f = qs.reshape(-1)
        acc = np.empty(256, dtype=np.int32)
        total = np.empty((4, 64), dtype=np.int64)
        f = np.empty((4, 64), dtype=np.float32)
        for t in range(t0, t1):
            wf, c0 = w[t], t * 64
            for r in range(r0, r1, 4):
                rows = min(4, r1 - r)
                f[:] = 0.0
                for g in range(groups):
                    total[:] = 0
                    for b in range(0, steps_g, block):
                        n = min(block, steps_g - b)
                        x0, w0 = r * width + g * padded + 4 * b, (g * steps_g + b) * step_bytes
                        if rows == 4:
                            v = _dot4x64(qs_f, wf, x0, width, w0, n, bits)
                            for j in range(16):
                                store(acc, 16 * j, v[j])
                        else:
                            for i in range(rows):
                                v1 = _dot1x64(qs_f, wf, x0 + i * width, w0, n, bits)
                                for j in range(4):
                                    store(acc, 64 * i + 16 * j, v1[j])
                        for i in range(rows):
                            for c in range(64):
                                total[i, c] += acc[64 * i + c]
                    sc = w_scale[g, c0 : c0 + 64]
                    for i in range(rows):
                        correction = beta * np.int64(sums[r + i, g])
                        for c in range(64):
                            f[i, c] += np.float32(alpha * total[i, c] - correction) * sc[c]
                emit(f, rows, r, c0, min(64, n_out - c0), x_scale, bias, relu, out)

    def _driver(block, tile: int):
        """A parallel GEMM over ``block`` (one per variant, so a CPU only compiles the variant it can run)."""

        @njit(parallel=True, cache=True, boundscheck=False, nogil=True)
        def gemm(qs, sums, x_scale, w, w_scale, bits, alpha, beta, n_out, groups, padded, bias, relu, out, parallel):
            m, n_tiles = qs.shape[0], w.shape[0]
            if not parallel:
                block(qs, sums, x_scale, w, w_scale, bits, alpha, beta, n_out, groups, padded, 0, m, 0, n_tiles, bias,
                      relu, out)
                return
            per_block = max(1, COL_BLOCK // tile)
            n_blocks = (n_tiles + per_block - 1) // per_block
            chunk = ROW_CHUNK if m > 2 * ROW_CHUNK else m
            n_chunks = (m + chunk - 1) // chunk
            for item in prange(n_chunks * n_blocks):
                r0, t0 = (item // n_blocks) * chunk, (item % n_blocks) * per_block
                block(qs, sums, x_scale, w, w_scale, bits, alpha, beta, n_out, groups, padded, r0, min(m, r0 + chunk),
                      t0, min(n_tiles, t0 + per_block), bias, relu, out)

        return gemm

    GEMM = {"avx2": _driver(_block_avx2, 16), "avx512vnni": _driver(_block_512, 64)}

    def linear_np(weights: LowBitWeights, x: np.ndarray, bias: np.ndarray, relu: bool) -> np.ndarray:
        """``relu?(W·A8 recipe(x) + bias)`` on float32 rows ``x [batch, in]`` (``bias`` may be empty)."""
        m, n_out = x.shape[0], weights.out_features
        groups, padded = weights.scale.shape[0], weights.padded_group
        parallel = m * n_out * weights.in_features >= PARALLEL_MACS
        _, qs, x_scale, sums, _ = quantize_rows(x, weights.group_size, groups, padded, SIGNED, parallel)
        out = np.empty((m, n_out), dtype=np.float32)
        GEMM[weights.isa](qs, sums, x_scale, weights.codes, weights.scale, weights.bits, weights.alpha, weights.beta,
                          n_out, groups, padded, bias, relu, out, parallel)
        return out

    _NO_BIAS = np.empty(0, dtype=np.float32)

    def prepare(fmt, packed: dict[str, torch.Tensor], shape: tuple[int, int], isa: str = ISA) -> LowBitWeights:
        """Kernel state of a format with ``unsigned_codes`` of at most 2 (int2, ternary) or 4 bits, variant ``isa``."""
        q = fmt.unpack(packed, shape)
        u, alpha, beta = fmt.unsigned_codes(q)
        bits = 2 if fmt.bits <= 2 else 4
        return prepare_unsigned(u.numpy(), q.scale, shape, getattr(fmt, "group_size", None), bits, alpha, beta, isa)

    def _run(weights: LowBitWeights, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(linear_np(weights, x.detach().contiguous().numpy(), _NO_BIAS, False))

    KERNEL = register_kernel(
        Kernel(
            name=f"lowbit-a8-numba-{ISA}",
            formats=FORMATS,
            device="cpu",
            prepare=prepare,
            run=_run,
            cached_bytes=lambda weights: weights.cached_bytes,
            supports=lambda fmt: fmt.activations == "int8",
            run_np=linear_np,
        )
    )
