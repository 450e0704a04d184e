"""2-bit weights x int8 activations by table lookup (T-MAC style) for small batches on AVX2: W2A8 and W1.58A8
(int2 and ternary with one weight group per row), registered where the CPU lacks AVX-512 VNNI.

Recipe: the W·A8 one (``wa8``): unsigned weight codes ``u`` in 0..3 with ``code = alpha * u - beta`` (``lowbit``),
activation codes ``q`` in 0..127 with a zero point ``z`` (``act8``), ``dot = alpha * S - beta * sum(q) - z * colsum``
with ``S = sum(u * q)``, then ``wa8``'s float32 epilogue, bit for bit.

``S`` by lookups: each pair of inputs ``(2p, 2p+1)`` of a row gets a 16-entry table ``T_p[n] = (n & 3) q_2p + (n >>
2) q_2p+1`` (at most 762; one ``vpmaddubsw`` against the constant digits of ``n`` builds two pairs' tables), and each
output column stores the nibble ``n = u_2p + 4 u_2p+1``, so one ``vpshufb`` adds two inputs into 32 columns with no
unpacking of the codes and no broadcast of the activations. Exact in bytes: a table is split into ``lo = T & 63`` and
``hi = T >> 6`` (at most 11); the four ``lo`` lookups of a step (8 inputs) add to at most 252 in a byte, then widen
to int16 (``vpunpck*bw``); ``hi`` lookups add in bytes over ``HI_STEPS`` steps (at most ``4 * 11 * 5 = 220``);
``BLOCK_STEPS`` steps keep the int16 sums below 2^15 (``252 * 128``); ``S = lo + 64 hi`` in int64 per block.

Layout (``pack_nibbles``): per tile of 64 columns and step of 8 inputs, 128 bytes: two 32-column halves, each 32
bytes for pairs 0 and 1 (low / high nibble) then 32 for pairs 2 and 3; a tile's two halves share each table load.
Cache blocking (AVX2-only Zen 3: 32 KB L1D, 512 KB L2): a block of ``BLOCK_STEPS`` steps (1024 inputs) of a row's
tables is 16 KB (lo + hi), read from L1 by every tile; a tile's weights for a block are 16 KB, streamed once per row;
the reference MLP's 1536 x 640 layer is 245 KB of nibbles, so the ``LUT_ROWS`` rows re-read it from L2.

Regime: two exact lookups per pair and 32 columns make one ``vpshufb`` worth 32 products, what one ``vpmaddubsw``
gives; the tables win only where the register-unpacking kernel pays most for its shifts and activation broadcasts,
one or two rows (measured in docs/benchmarks.md). From ``LUT_ROWS + 1`` rows ``wa8``'s 4-row tiles share each
weight load between rows and win, so the state (``LutWeights``, a ``wa8.IntWeights`` of the ``lowbit`` avx2 layout
plus the nibbles) runs larger batches there; the kernel shares ``wa8.chain_layers``, which runs a chain of table
layers through ``_chain`` up to ``LUT_ROWS`` rows (``wa8.FEW_ROWS_CHAINS``) and a chain mixing them with other W·A8
layers through ``wa8`` (still one compiled call). On AVX-512 VNNI CPUs ``vpdpbusd`` (64 products per instruction)
wins at every batch and this kernel is not registered.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from qwave.kernels import FAST_KERNELS, NO_ACTIVATION, Kernel, register_kernel
from qwave.kernels.wa8 import IntWeights

FORMATS = ("int2", "ternary")
TILE = 64  # output columns per tile (two 256-bit vectors of nibbles)
STEP = 8  # inputs per step: 4 pairs
HI_STEPS = 5  # steps whose hi lookups add in bytes (4 * 11 * 5 = 220 < 256)
BLOCK_STEPS = 128  # steps per int16 block (lo: 252 * 128 < 2^15; hi: 44 * 128)
LUT_ROWS = 2  # batches up to this many rows run the tables, larger ones ``wa8`` (measured crossover: 2 to 4 rows)
CHAIN_DEPTH = 4  # most layers of a table chain: every call unboxes all its entries (~0.12 us an array, 5 an entry)


def pack_nibbles(u: np.ndarray) -> np.ndarray:
    """Unsigned codes ``u [out, in]`` (0..3) -> ``[tiles, steps * 128]`` bytes (zero padding; layout above)."""
    out, n = u.shape
    tiles, steps = -(-out // TILE), -(-n // STEP)
    full = np.zeros((tiles * TILE, steps * STEP), np.uint8)
    full[:out, :n] = u
    pairs = full[:, 0::2] | (full[:, 1::2] << 2)  # [cols, pairs]: one nibble per pair
    quads = pairs.reshape(tiles, 2, 32, steps, 2, 2)  # [tile, half, col, step, vector, nibble]
    packed = quads[..., 0] | (quads[..., 1] << 4)  # [tile, half, col, step, vector]
    return np.ascontiguousarray(packed.transpose(0, 3, 1, 4, 2).reshape(tiles, steps * 128))


@dataclass
class LutWeights(IntWeights):
    """The ``lowbit`` avx2 state (every ``wa8`` entry point runs it: larger batches, mixed chains, ``unprepare``) plus
    the nibble layout of the tables."""

    nibbles: np.ndarray  # uint8 [tiles, steps * 128]

    @property
    def cached_bytes(self) -> int:
        return int(self.nibbles.nbytes + super().cached_bytes)


def with_tables(wide: IntWeights, u: np.ndarray) -> LutWeights:
    """``wide`` (the ``lowbit`` avx2 state of unsigned codes ``u``) with the nibbles of ``u`` added."""
    return LutWeights(**{f.name: getattr(wide, f.name) for f in fields(IntWeights)}, nibbles=pack_nibbles(u))


if FAST_KERNELS:
    from llvmlite import ir
    from numba import njit
    from numba.extending import intrinsic

    from qwave.kernels._simd import (
        I8x32,
        I16x16,
        _call,
        _literal,
        _ll,
        _loader,
        _ptr,
        _splat,
        _zero,
        load_i8x32,
        shr_mask,
        store,
        vadd,
        vadd_i8,
        zero_i16x16,
    )
    from qwave.kernels.act8 import emit, quantize_rows
    from qwave.kernels.int8 import ISA
    from qwave.kernels.lowbit import prepare_unsigned
    from qwave.kernels.lowbit import unprepare as unprepare_wide
    from qwave.kernels.wa8 import FEW_ROWS_CHAINS, chain_layers
    from qwave.kernels.wa8 import linear_np as wide_linear

    load_i16x16 = _loader(I16x16, "16 int16 of a contiguous 1-D int16 array from element ``start``.")
    zero_i8x32 = _zero(I8x32)

    @intrinsic
    def table16(typingctx, arr, start):
        """The 16 bytes at element ``start`` in both 128-bit lanes (``vbroadcasti128``)."""

        def codegen(context, builder, sig, args):
            half = ir.VectorType(ir.IntType(8), 16)
            v = builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], half), align=1)
            return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), 32), list(range(16)) * 2))

        return I8x32(arr, start), codegen

    @intrinsic
    def lookup(typingctx, table, index):
        """``vpshufb``: byte ``j`` = byte ``index[j]`` (0..15) of ``table``'s 128-bit lane holding ``j``."""
        if table != I8x32 or index != I8x32:
            return None

        def codegen(context, builder, sig, args):
            return _call(builder, "llvm.x86.avx2.pshuf.b", _ll(I8x32), args[0], args[1])

        return I8x32(I8x32, I8x32), codegen

    def _widener(high: bool):
        first = 8 if high else 0
        mask = [i for lane in (0, 16) for j in range(8) for i in (lane + first + j, 32 + lane + first + j)]

        @intrinsic
        def widen(typingctx, v):
            if v != I8x32:
                return None

            def codegen(context, builder, sig, args):
                mixed = builder.shuffle_vector(args[0], ir.Constant(_ll(I8x32), None),
                                               ir.Constant(ir.VectorType(ir.IntType(32), 32), mask))
                return builder.bitcast(mixed, _ll(I16x16))

            widen.__doc__ = f"Bytes {first}-{first + 7} and {16 + first}-{23 + first} as uint16 (zero unpack)."
            return I16x16(I8x32), codegen

        return widen

    widen_lo, widen_hi = _widener(False), _widener(True)  # ``vpunpcklbw`` / ``vpunpckhbw`` with zero

    @intrinsic(prefer_literal=True)
    def pair_tables(typingctx, row, start, shift, mask):
        """The tables of pairs ``p`` and ``p + 1`` from the 4 activation codes at ``row[start]`` (``start = 2p``):
        byte ``16 j + n`` = ``(T_p+j[n] >> shift) & mask`` (``shift``, ``mask`` literal). Each 128-bit lane holds one
        pair's codes ``(q_2p, q_2p+1)`` 8 times; ``vpmaddubsw`` against the constant nibble digits ``(n & 3, n >> 2)``
        gives ``T[n]`` in int16 (entries 0-7, then 8-15), ``vpackuswb`` packs lane by lane: each lane one table."""
        s, m = _literal(shift), _literal(mask)
        if s is None or m is None:
            return None

        def codegen(context, builder, sig, args):
            i8, i32 = ir.IntType(8), ir.IntType(32)
            word = builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], ir.VectorType(i8, 4)), align=1)
            spread = builder.shuffle_vector(word, word, ir.Constant(ir.VectorType(i32, 32), [0, 1] * 8 + [2, 3] * 8))
            b32, w16 = _ll(I8x32), _ll(I16x16)
            digits = [[(n & 3, n >> 2) for n in range(half, half + 8)] * 2 for half in (0, 8)]
            first, second = (_call(builder, "llvm.x86.avx2.pmadd.ub.sw", w16, spread,
                                   ir.Constant(b32, [d for pair in half for d in pair])) for half in digits)
            parts = [builder.and_(builder.lshr(t, _splat(w16, s)), _splat(w16, m)) for t in (first, second)]
            return _call(builder, "llvm.x86.avx2.packuswb", b32, *parts)

        return I8x32(row, start, shift, mask), codegen

    @njit(cache=True, boundscheck=False, nogil=True)
    def _tables(row, pairs, lo, hi):
        """One row's tables (codes ``row``, an even number of ``pairs``): ``lo[16 p + n] = T_p[n] & 63``, ``hi[16 p
        + n] = T_p[n] >> 6``."""
        for p in range(0, pairs, 2):
            store(lo, 16 * p, pair_tables(row, 2 * p, 0, 63))
            store(hi, 16 * p, pair_tables(row, 2 * p, 6, 255))

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _quad(tab, p, i0, i1, i2, i3, j0, j1, j2, j3):
        """Byte sums of the four lookups of one step (pairs ``p .. p + 3``) for the two 32-column halves of a tile
        (indices ``i``, ``j``), each table loaded once for both."""
        t = table16(tab, 16 * p)
        a, b = lookup(t, i0), lookup(t, j0)
        t = table16(tab, 16 * p + 16)
        a, b = vadd_i8(a, lookup(t, i1)), vadd_i8(b, lookup(t, j1))
        t = table16(tab, 16 * p + 32)
        a, b = vadd_i8(a, lookup(t, i2)), vadd_i8(b, lookup(t, j2))
        t = table16(tab, 16 * p + 48)
        return vadd_i8(a, lookup(t, i3)), vadd_i8(b, lookup(t, j3))

    @njit(cache=True, boundscheck=False, nogil=True, inline="always")
    def _add_widened(buf, k, v):
        """``buf[k : k + 32] += v`` widened to int16 (``vpunpck*bw`` order)."""
        store(buf, k, vadd(load_i16x16(buf, k), widen_lo(v)))
        store(buf, k + 16, vadd(load_i16x16(buf, k + 16), widen_hi(v)))

    @njit(cache=True, boundscheck=False, nogil=True)
    def _tile_sums(wt, lo, hi, s0, s1, buf):
        """``buf`` (int16 [128]) = lo sums (``buf[0:64]``) and hi sums (``buf[64:128]``) of steps ``s0:s1`` (at most
        ``BLOCK_STEPS``) for one tile; each half's 32 entries in ``vpunpck*bw`` order: columns 0-7, 16-23, 8-15,
        24-31 of the half."""
        la, lb, ma, mb = zero_i16x16(), zero_i16x16(), zero_i16x16(), zero_i16x16()
        buf[64:] = 0
        for c0 in range(s0, s1, HI_STEPS):
            h, g = zero_i8x32(), zero_i8x32()
            for s in range(c0, min(s1, c0 + HI_STEPS)):
                v0, v1 = load_i8x32(wt, 128 * s), load_i8x32(wt, 128 * s + 32)
                v2, v3 = load_i8x32(wt, 128 * s + 64), load_i8x32(wt, 128 * s + 96)
                i0, i1, i2, i3 = shr_mask(v0, 0, 15), shr_mask(v0, 4, 15), shr_mask(v1, 0, 15), shr_mask(v1, 4, 15)
                j0, j1, j2, j3 = shr_mask(v2, 0, 15), shr_mask(v2, 4, 15), shr_mask(v3, 0, 15), shr_mask(v3, 4, 15)
                x, y = _quad(lo, 4 * s, i0, i1, i2, i3, j0, j1, j2, j3)
                la, lb = vadd(la, widen_lo(x)), vadd(lb, widen_hi(x))
                ma, mb = vadd(ma, widen_lo(y)), vadd(mb, widen_hi(y))
                x, y = _quad(hi, 4 * s, i0, i1, i2, i3, j0, j1, j2, j3)
                h, g = vadd_i8(h, x), vadd_i8(g, y)
            _add_widened(buf, 64, h)
            _add_widened(buf, 96, g)
        store(buf, 0, la); store(buf, 16, lb); store(buf, 32, ma); store(buf, 48, mb)  # noqa: E702

    @njit(cache=True, boundscheck=False, nogil=True)
    def gemm(a, sums, zero, x_scale, w, w_scale, colsum, alpha, beta, n_out, bias, act, out):
        """``out = act(recipe + bias)`` for activation codes ``a [m, steps * 8]`` (``quantize_rows``, one group) and
        nibbles ``w [tiles, steps * 128]``; ``w_scale`` / ``colsum`` ``[1, >= n_out]``."""
        m, tiles, steps = a.shape[0], w.shape[0], a.shape[1] // STEP
        lo, hi = np.empty(steps * 64, np.uint8), np.empty(steps * 64, np.uint8)
        buf = np.empty(128, np.int16)
        total = np.empty(tiles * TILE, np.int64)
        f = np.empty((1, TILE), np.float32)
        for r in range(m):
            _tables(a[r], steps * 4, lo, hi)
            total[:] = 0
            for b in range(0, steps, BLOCK_STEPS):
                for t in range(tiles):
                    _tile_sums(w[t], lo, hi, b, min(steps, b + BLOCK_STEPS), buf)
                    for j in range(64):  # unpack order -> column
                        col = t * TILE + 32 * (j >> 5) + (j & 7) + 16 * ((j >> 3) & 1) + 8 * ((j >> 4) & 1)
                        total[col] += np.int64(buf[j]) + 64 * np.int64(buf[64 + j])
            correction, z = beta * np.int64(sums[r, 0]), np.int64(zero[r])
            for t in range(tiles):
                c0 = t * TILE
                width = min(TILE, n_out - c0)
                for c in range(width):  # ``wa8._epilogue`` of one group, then ``emit``
                    dot = alpha * total[c0 + c] - correction - z * colsum[0, c0 + c]
                    f[0, c] = np.float32(0.0) + np.float32(dot) * w_scale[0, c0 + c]
                emit(f, 1, r, c0, width, x_scale, bias, act, out)

    def _padded(in_features: int) -> int:
        return -(-in_features // STEP) * STEP

    def linear_np(weights: LutWeights, x: np.ndarray, bias: np.ndarray, act: int) -> np.ndarray:
        """``act(W·A8 recipe(x) + bias)`` on float32 rows ``x [batch, in]``: the tables up to ``LUT_ROWS`` rows,
        ``wa8`` above."""
        if x.shape[0] > LUT_ROWS:
            return wide_linear(weights, x, bias, act)
        n_in, n_out = weights.in_features, weights.out_features
        a, x_scale, zero, sums = quantize_rows(x, n_in, 1, _padded(n_in), False)
        out = np.empty((x.shape[0], n_out), np.float32)
        gemm(a, sums, zero, x_scale, weights.nibbles, weights.scale, weights.column_sums, weights.alpha, weights.beta,
             n_out, bias, act, out)
        return out

    @njit(cache=True, boundscheck=False, nogil=True)
    def _chain(x, layers, count):
        """Consecutive layers in one compiled call: ``layers`` is ``CHAIN_DEPTH`` entries ``(nibbles, scale, column
        sums, bias, meta)``, the first ``count`` real, ``meta`` int64 ``[alpha, beta, out, in, padded in, act, 1, 0]``
        (the last two: one weight group, serial quantization; values, not constants, so ``quantize_rows`` is called
        with the types ``wa8`` compiles it for, one signature)."""
        h = x
        for i in range(count):
            nibbles, scale, colsum, bias, meta = layers[i]
            a, x_scale, zero, sums = quantize_rows(h, meta[3], meta[6], meta[4], meta[7] != 0)
            out = np.empty((h.shape[0], meta[2]), dtype=np.float32)
            gemm(a, sums, zero, x_scale, nibbles, scale, colsum, meta[0], meta[1], meta[2], bias, meta[5], out)
            h = out
        return h

    _EMPTY_LAYER = (np.empty((0, 0), np.uint8), np.empty((0, 0), np.float32), np.empty((0, 0), np.int32),
                    np.empty(0, np.float32), np.zeros(8, np.int64))

    def _few_rows_chain(layers: list[tuple[LutWeights, np.ndarray, int]]):
        """``f(x, entries, count)`` for ``wa8.chain_layers`` (``FEW_ROWS_CHAINS``): the layers through ``_chain``
        (``wa8``'s own entries unused), bit for bit ``linear_np`` layer after layer; ``None`` (``wa8`` runs them) for
        more than ``CHAIN_DEPTH`` layers."""
        if len(layers) > CHAIN_DEPTH:
            return None
        entries = tuple(
            (w.nibbles, w.scale, w.column_sums, np.ascontiguousarray(bias, np.float32),
             np.array([w.alpha, w.beta, w.out_features, w.in_features, _padded(w.in_features), act, 1, 0], np.int64))
            for w, bias, act in layers
        ) + (_EMPTY_LAYER,) * (CHAIN_DEPTH - len(layers))
        count = len(layers)
        return lambda x, _entries, _count: _chain(x, entries, count)

    def prepare(fmt, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> LutWeights:
        """Kernel state of int2 or ternary with one weight group per row: nibbles and the ``lowbit`` avx2 state."""
        q = fmt.unpack(packed, shape)
        u, alpha, beta = fmt.unsigned_codes(q)
        u = u.numpy()
        return with_tables(prepare_unsigned(u, q.scale, shape, None, 2, alpha, beta, "avx2"), u)

    def _supports(fmt) -> bool:
        return (fmt.activations == "int8" and fmt.act_recipe == "zero_point"
                and getattr(fmt, "group_size", None) is None)

    FEW_ROWS_CHAINS[LutWeights] = (LUT_ROWS, _few_rows_chain)

    if ISA == "avx2":  # with AVX-512 VNNI, ``vpdpbusd`` beats the tables at every batch (``lowbit`` serves)
        no_bias = np.empty(0, dtype=np.float32)
        KERNEL = register_kernel(
            Kernel(
                name="lut2-a8-numba-avx2",
                formats=FORMATS,
                device="cpu",
                prepare=prepare,
                run=lambda w, x: torch.from_numpy(linear_np(w, x.detach().contiguous().numpy(), no_bias,
                                                            NO_ACTIVATION)),
                cached_bytes=lambda weights: weights.cached_bytes,
                supports=_supports,
                unprepare=unprepare_wide,  # the lowbit layout is kept: its inverse
                run_np=linear_np,
                chain=chain_layers,  # ``wa8``'s: one compiled call with the other W·A8 layers
            )
        )
