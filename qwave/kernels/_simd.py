"""A few AVX2 vector operations for numba kernels, written as LLVM intrinsics.

Numba widens small integer arithmetic to int64 and so never emits ``vpmaddubsw`` / ``vpmaddwd`` from plain
loops; these intrinsics give kernels 256-bit vector values (``I8x32``, ``I32x8``) they can keep in registers.
Only import this module after checking ``HAS_AVX2`` (the instructions fault on older CPUs).
"""

from __future__ import annotations

from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

_FEATURES = set(llvm.get_host_cpu_features().flatten().split(","))
HAS_AVX2 = "+avx2" in _FEATURES
# vpdpbusd on 256-bit registers: AVX-VNNI (VEX) or AVX512-VNNI with AVX512VL (EVEX) both provide it.
HAS_VNNI = HAS_AVX2 and ("+avxvnni" in _FEATURES or {"+avx512vnni", "+avx512vl"} <= _FEATURES)


class Vec(types.Type):
    """A 256-bit integer vector of ``count`` lanes of ``bits`` bits."""

    def __init__(self, bits: int, count: int) -> None:
        self.bits, self.count = bits, count
        super().__init__(name=f"i{bits}x{count}")


I8x32, I16x16, I32x8 = Vec(8, 32), Vec(16, 16), Vec(32, 8)


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
def dot_u8s8(typingctx, acc, a_u, a, b):
    """``acc + sum of 4 neighbouring products a_u*b`` per int32 lane (``vpdpbusd``: unsigned ``a_u`` times
    signed ``b``, exact, no intermediate saturation); ``a`` is ignored (same signature as ``dot_i8``).

    Callers store activations offset by 128 (``a_u = q + 128``) and subtract ``128 * sum(b)`` afterwards.
    """

    def codegen(context, builder, sig, args):
        acc_v, u_v, _, b_v = args
        i32x8 = _ll(I32x8)
        fnty = ir.FunctionType(i32x8, [i32x8, i32x8, i32x8])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx512.vpdpbusd.256")
        return builder.call(fn, [acc_v, builder.bitcast(u_v, i32x8), builder.bitcast(b_v, i32x8)])

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
def popcount64(typingctx, v):
    """Number of set bits of a 64-bit integer (``llvm.ctpop``: one POPCNT instruction)."""

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64]), "llvm.ctpop.i64")
        return builder.call(fn, [args[0]])

    return types.int64(v), codegen
