"""A few AVX2 / AVX-512 vector operations for numba kernels, written as LLVM intrinsics.

Numba widens small integer arithmetic to int64 and so never emits ``vpmaddubsw`` / ``vpmaddwd`` / ``vpdpbusd``
from plain loops; these intrinsics give kernels vector values (``I8x32``, ``I32x8``, ``I32x16``) they can keep in
registers. Only call the AVX2 ones after checking ``HAS_AVX2`` and the 512-bit ones after ``HAS_AVX512_VNNI``
(the instructions fault, or fail to compile, elsewhere). The features are numba's target features
(``NUMBA_CPU_FEATURES`` when set, else the host's), so this choice and numba's cache key agree.
"""

from __future__ import annotations

from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic, models, register_model

_FEATURES = set((config.CPU_FEATURES or llvm.get_host_cpu_features().flatten()).split(","))
HAS_AVX2 = "+avx2" in _FEATURES
HAS_AVX512_VNNI = HAS_AVX2 and {"+avx512f", "+avx512bw", "+avx512vnni"} <= _FEATURES


class Vec(types.Type):
    """A 256- or 512-bit integer vector of ``count`` lanes of ``bits`` bits."""

    def __init__(self, bits: int, count: int) -> None:
        self.bits, self.count = bits, count
        super().__init__(name=f"i{bits}x{count}")


I8x32, I16x16, I32x8, I32x16, I64x8 = Vec(8, 32), Vec(16, 16), Vec(32, 8), Vec(32, 16), Vec(64, 8)


def _ll(vt: Vec) -> ir.VectorType:
    return ir.VectorType(ir.IntType(vt.bits), vt.count)


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _ll(fe_type))


def _x86(builder, name: str, ret: Vec, *args):
    fnty = ir.FunctionType(_ll(ret), [a.type for a in args])
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), list(args))


@intrinsic
def load_i8x32(typingctx, arr, start):
    """32 bytes of a contiguous 1-D int8/uint8 array from element ``start`` (unaligned, unchecked)."""

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]), _ll(I8x32).as_pointer())
        return builder.load(ptr, align=1)

    return I8x32(arr, start), codegen


@intrinsic
def zero_i32x8(typingctx):
    """All-zero int32 accumulator."""

    def codegen(context, builder, sig, args):
        return ir.Constant(_ll(I32x8), None)

    return I32x8(), codegen


@intrinsic
def dot_i8(typingctx, acc, a_abs, a, b):
    """``acc + sum of 4 neighbouring products a*b`` per int32 lane, exactly, for int8 ``a, b`` in [-127, 127].

    Sign trick: ``vpmaddubsw(|a|, sign(a)*b)`` multiplies an unsigned by a signed byte; pairs stay within
    2*127*127 < 2^15 so it never saturates; ``vpmaddwd`` with ones widens the pairs to int32.
    """

    def codegen(context, builder, sig, args):
        acc_v, abs_v, a_v, b_v = args
        signed_b = _x86(builder, "llvm.x86.avx2.psign.b", I8x32, b_v, a_v)
        pairs = _x86(builder, "llvm.x86.avx2.pmadd.ub.sw", I16x16, abs_v, signed_b)
        ones = ir.Constant(_ll(I16x16), [1] * 16)
        return builder.add(acc_v, _x86(builder, "llvm.x86.avx2.pmadd.wd", I32x8, pairs, ones))

    return I32x8(I32x8, I8x32, I8x32, I8x32), codegen


@intrinsic
def hsum_i32x8(typingctx, v):
    """Sum of the eight int32 lanes (wrapping like int32), as int64."""

    def codegen(context, builder, sig, args):
        total = ir.Constant(ir.IntType(32), 0)
        for i in range(8):
            total = builder.add(total, builder.extract_element(args[0], ir.Constant(ir.IntType(32), i)))
        return builder.sext(total, ir.IntType(64))

    return types.int64(I32x8), codegen


@intrinsic
def zero_i32x16(typingctx):
    """All-zero 512-bit int32 accumulator."""

    def codegen(context, builder, sig, args):
        return ir.Constant(_ll(I32x16), None)

    return I32x16(), codegen


@intrinsic
def load_i32x16(typingctx, arr, start):
    """64 bytes of a contiguous 1-D int8/uint8 array from element ``start`` (unaligned, unchecked)."""

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]), _ll(I32x16).as_pointer())
        return builder.load(ptr, align=1)

    return I32x16(arr, start), codegen


@intrinsic
def bcast_u8x4(typingctx, arr, start):
    """The 4 bytes of a contiguous 1-D int8/uint8 array at element ``start``, repeated in all 16 int32 lanes."""

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        i32 = ir.IntType(32)
        word = builder.load(builder.bitcast(builder.gep(data, [args[1]]), i32.as_pointer()), align=1)
        one = builder.insert_element(ir.Constant(_ll(I32x16), None), word, ir.Constant(i32, 0))
        return builder.shuffle_vector(one, ir.Constant(_ll(I32x16), None), ir.Constant(_ll(I32x16), [0] * 16))

    return I32x16(arr, start), codegen


@intrinsic
def dpbusd(typingctx, acc, u, b):
    """``vpdpbusd`` on 512 bits: ``acc + sum of 4 neighbouring products u*b`` per int32 lane, ``u`` unsigned
    bytes, ``b`` signed bytes, exact (no intermediate saturation)."""

    def codegen(context, builder, sig, args):
        vt = _ll(I32x16)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]),
                                            "llvm.x86.avx512.vpdpbusd.512")
        return builder.call(fn, list(args))

    return I32x16(I32x16, I32x16, I32x16), codegen


@intrinsic
def store_i32x16(typingctx, arr, start, v):
    """Store 16 int32 lanes into a contiguous 1-D int32 array from element ``start`` (unchecked)."""

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]), _ll(I32x16).as_pointer())
        builder.store(args[2], ptr, align=4)
        return context.get_dummy_value()

    return types.none(arr, start, v), codegen


# Generic <8 x i64> operations for the popcount kernels: LLVM lowers them to vpopcntq zmm with AVX512-VPOPCNTDQ
# and to two ymm halves with a nibble lookup on plain AVX2, so they are valid on every AVX2 CPU.


@intrinsic
def zero_i64x8(typingctx):
    """All-zero 8 x int64 accumulator."""

    def codegen(context, builder, sig, args):
        return ir.Constant(_ll(I64x8), None)

    return I64x8(), codegen


@intrinsic
def load_i64x8(typingctx, arr, start):
    """8 words of a contiguous 1-D uint64/int64 array from element ``start`` (unaligned, unchecked)."""

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]), _ll(I64x8).as_pointer())
        return builder.load(ptr, align=8)

    return I64x8(arr, start), codegen


@intrinsic
def bcast_i64x8(typingctx, word):
    """One 64-bit word repeated in all 8 lanes."""

    def codegen(context, builder, sig, args):
        vt = _ll(I64x8)
        one = builder.insert_element(ir.Constant(vt, None), args[0], ir.Constant(ir.IntType(32), 0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8)
        return builder.shuffle_vector(one, ir.Constant(vt, None), mask)

    return I64x8(word), codegen


def _ctpop(builder, v):
    vt = _ll(I64x8)
    return builder.call(cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt]), "llvm.ctpop.v8i64"),
                        [v])


@intrinsic
def xor_popcount_add(typingctx, acc, x, w):
    """``acc + popcount(x ^ w)`` per 64-bit lane."""

    def codegen(context, builder, sig, args):
        return builder.add(args[0], _ctpop(builder, builder.xor(args[1], args[2])))

    return I64x8(I64x8, I64x8, I64x8), codegen


@intrinsic
def trit_popcount_add(typingctx, acc, p, m, wp, wm):
    """``acc + popcount((p & wp) | (m & wm)) - popcount((p & wm) | (m & wp))`` per 64-bit lane."""

    def codegen(context, builder, sig, args):
        acc_v, p_v, m_v, wp_v, wm_v = args
        same = builder.or_(builder.and_(p_v, wp_v), builder.and_(m_v, wm_v))
        diff = builder.or_(builder.and_(p_v, wm_v), builder.and_(m_v, wp_v))
        return builder.sub(builder.add(acc_v, _ctpop(builder, same)), _ctpop(builder, diff))

    return I64x8(I64x8, I64x8, I64x8, I64x8, I64x8), codegen


@intrinsic
def store_i64x8(typingctx, arr, start, v):
    """Store 8 int64 lanes into a contiguous 1-D int64 array from element ``start`` (unchecked)."""

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        builder.store(args[2], builder.bitcast(builder.gep(data, [args[1]]), _ll(I64x8).as_pointer()), align=8)
        return context.get_dummy_value()

    return types.none(arr, start, v), codegen
