"""AVX2 / AVX-512 vector operations for numba kernels, written as LLVM intrinsics.

Numba widens small integer arithmetic to int64 and so never emits ``vpmaddubsw`` / ``vpmaddwd`` / ``vpdpbusd``
from plain loops; these intrinsics give kernels vector values they keep in registers: 256-bit ``I8x32``,
``I16x16``, ``I32x8``, ``I64x4``, ``F32x8`` and 512-bit ``I32x16``, ``I64x8``, ``F32x16``. Only call the AVX2 ones
after checking ``HAS_AVX2``, the 512-bit ones after ``HAS_AVX512`` and ``dpbusd`` after ``HAS_AVX512_VNNI`` (the
instructions fault, or fail to compile, elsewhere). The features are numba's target features
(``NUMBA_CPU_FEATURES`` when set, else the host's), so this choice and numba's cache key agree;
``qwave.kernels.avx2_environment()`` forces an AVX2-only target on an AVX-512 machine (tests, benchmarks).

Loads and stores are unaligned and unchecked: callers pass indices inside the array.
"""

from __future__ import annotations

from llvmlite import binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
from numba.extending import intrinsic, models, register_model

from qwave.kernels import HARDTANH, RELU

_FEATURES = set((config.CPU_FEATURES or llvm.get_host_cpu_features().flatten()).split(","))
HAS_AVX2 = {"+avx2", "+fma", "+f16c"} <= _FEATURES
HAS_AVX512 = HAS_AVX2 and {"+avx512f", "+avx512bw", "+avx512vl"} <= _FEATURES
HAS_AVX512_VNNI = HAS_AVX2 and {"+avx512f", "+avx512bw", "+avx512vnni"} <= _FEATURES
HAS_VPOPCNTDQ = HAS_AVX2 and {"+avx512f", "+avx512vpopcntdq"} <= _FEATURES


class Vec(types.Type):
    """A 256- or 512-bit vector of ``count`` lanes of ``bits``-bit integers (or float32 when ``real``)."""

    def __init__(self, bits: int, count: int, real: bool = False) -> None:
        self.bits, self.count, self.real = bits, count, real
        super().__init__(name=f"{'f' if real else 'i'}{bits}x{count}")


I8x32, I16x16, I32x8, I64x4, F32x8 = Vec(8, 32), Vec(16, 16), Vec(32, 8), Vec(64, 4), Vec(32, 8, True)
I32x16, I64x8, F32x16 = Vec(32, 16), Vec(64, 8), Vec(32, 16, True)
I32 = ir.IntType(32)


def _ll(vt: Vec) -> ir.VectorType:
    return ir.VectorType(ir.FloatType() if vt.real else ir.IntType(vt.bits), vt.count)


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _ll(fe_type))


def _call(builder, name: str, ret: ir.Type, *args):
    fnty = ir.FunctionType(ret, [a.type for a in args])
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), list(args))


def _ptr(context, builder, arr_type, arr, index, vt: ir.Type):
    data = context.make_array(arr_type)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [index]), vt.as_pointer())


def _splat(vt: ir.VectorType, value) -> ir.Constant:
    return ir.Constant(vt, [value] * vt.count)


def _literal(value) -> int | None:
    return value.literal_value if isinstance(value, types.IntegerLiteral) else None


# ---- loads, stores, broadcasts, constants ---------------------------------------------------------------------


def _loader(vt: Vec, doc: str):
    @intrinsic
    def load(typingctx, arr, start):
        def codegen(context, builder, sig, args):
            return builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], _ll(vt)), align=1)

        return vt(arr, start), codegen

    load.__doc__ = doc
    return load


load_i8x32 = _loader(I8x32, "32 bytes of a contiguous 1-D array from element ``start``.")
load_i32x8 = _loader(I32x8, "8 int32 of a contiguous 1-D int32 array from element ``start``.")
load_i64x4 = _loader(I64x4, "4 words of a contiguous 1-D uint64/int64 array from element ``start``.")
load_f32x8 = _loader(F32x8, "8 float32 of a contiguous 1-D float32 array from element ``start``.")
load_i32x16 = _loader(I32x16, "64 bytes of a contiguous 1-D array from element ``start``, as 16 int32 lanes.")
load_i64x8 = _loader(I64x8, "8 words of a contiguous 1-D uint64/int64 array from element ``start``.")
load_f32x16 = _loader(F32x16, "16 float32 of a contiguous 1-D float32 array from element ``start``.")


@intrinsic
def store(typingctx, arr, start, v):
    """Store vector ``v`` into a contiguous 1-D array of its lane type from element ``start``."""
    if not isinstance(v, Vec):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _ptr(context, builder, sig.args[0], args[0], args[1], _ll(sig.args[2])), align=1)
        return context.get_dummy_value()

    return types.none(arr, start, v), codegen


def _bcast_word(vt: Vec, doc: str):
    @intrinsic
    def bcast(typingctx, arr, start):
        lanes = vt.bits * vt.count // 32

        def codegen(context, builder, sig, args):
            word = builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], I32), align=1)
            wide = ir.VectorType(I32, lanes)
            one = builder.insert_element(ir.Constant(wide, None), word, ir.Constant(I32, 0))
            spread = builder.shuffle_vector(one, ir.Constant(wide, None), ir.Constant(ir.VectorType(I32, lanes),
                                                                                       [0] * lanes))
            return builder.bitcast(spread, _ll(vt))

        return vt(arr, start), codegen

    bcast.__doc__ = doc
    return bcast


bcast4_i8x32 = _bcast_word(I8x32, "The 4 bytes at element ``start`` repeated 8 times (``vpbroadcastd``).")
bcast4_i32x16 = _bcast_word(I32x16, "The 4 bytes at element ``start`` repeated in all 16 int32 lanes.")


def _bcast_scalar(vt: Vec, doc: str):
    @intrinsic
    def bcast(typingctx, value):
        if not isinstance(value, (types.Float, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            v = context.cast(builder, args[0], sig.args[0], types.float32)
            one = builder.insert_element(ir.Constant(_ll(vt), None), v, ir.Constant(I32, 0))
            return builder.shuffle_vector(one, ir.Constant(_ll(vt), None),
                                          ir.Constant(ir.VectorType(I32, vt.count), [0] * vt.count))

        return vt(value), codegen

    bcast.__doc__ = doc
    return bcast


splat_f32x8 = _bcast_scalar(F32x8, "A number, as float32, in all 8 lanes.")


@intrinsic
def splat_i32x8(typingctx, value):
    """An integer, truncated to int32 (callers pass values inside its range), in all 8 lanes."""
    if not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.int32)
        one = builder.insert_element(ir.Constant(_ll(I32x8), None), v, ir.Constant(I32, 0))
        return builder.shuffle_vector(one, ir.Constant(_ll(I32x8), None), ir.Constant(ir.VectorType(I32, 8), [0] * 8))

    return I32x8(value), codegen
splat_f32x16 = _bcast_scalar(F32x16, "A number, as float32, in all 16 lanes.")


def _bcast_element(vt: Vec, doc: str):
    @intrinsic
    def bcast(typingctx, arr, index):
        def codegen(context, builder, sig, args):
            value = builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], _ll(vt).element))
            one = builder.insert_element(ir.Constant(_ll(vt), None), value, ir.Constant(I32, 0))
            return builder.shuffle_vector(one, ir.Constant(_ll(vt), None),
                                          ir.Constant(ir.VectorType(I32, vt.count), [0] * vt.count))

        return vt(arr, index), codegen

    bcast.__doc__ = doc
    return bcast


load1_f32x8 = _bcast_element(F32x8, "Element ``index`` of a contiguous 1-D float32 array in all 8 lanes.")
load1_i64x4 = _bcast_element(I64x4, "Element ``index`` of a contiguous 1-D uint64/int64 array in all 4 lanes.")
load1_i64x8 = _bcast_element(I64x8, "Element ``index`` of a contiguous 1-D uint64/int64 array in all 8 lanes.")
load1_f32x16 = _bcast_element(F32x16, "Element ``index`` of a contiguous 1-D float32 array in all 16 lanes.")


def _zero(vt: Vec):
    @intrinsic
    def zero(typingctx):
        def codegen(context, builder, sig, args):
            return ir.Constant(_ll(vt), None)

        return vt(), codegen

    zero.__doc__ = f"All-zero {vt.name} vector."
    return zero


zero_i16x16, zero_i32x8, zero_i64x4, zero_f32x8 = _zero(I16x16), _zero(I32x8), _zero(I64x4), _zero(F32x8)
zero_i32x16, zero_i64x8, zero_f32x16 = _zero(I32x16), _zero(I64x8), _zero(F32x16)


# ---- lane-wise arithmetic -------------------------------------------------------------------------------------


def _lanewise(int_op: str, float_op: str | None, doc: str):
    @intrinsic
    def op(typingctx, a, b):
        if not (isinstance(a, Vec) and a == b) or (a.real and float_op is None):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, float_op if sig.args[0].real else int_op)(args[0], args[1])

        return a(a, b), codegen

    op.__doc__ = doc
    return op


vadd = _lanewise("add", "fadd", "Lane-wise ``a + b`` (integer lanes wrap).")
vmul = _lanewise("mul", "fmul", "Lane-wise ``a * b`` (float32: one rounding, as scalar code).")
vdiv = _lanewise("sdiv", "fdiv", "Lane-wise ``a / b`` (float32: one rounding, as scalar code).")
vsub = _lanewise("sub", "fsub", "Lane-wise ``a - b`` (integer lanes wrap).")
vand = _lanewise("and_", None, "Bitwise ``a & b``.")
vxor = _lanewise("xor", None, "Bitwise ``a ^ b``.")


def _float32(v) -> bool:
    return (isinstance(v, Vec) and v.real) or v == types.float32


@intrinsic
def relu(typingctx, v):
    """``0 where v < 0 else v`` per float32 lane or for one float32 (NaN and -0.0 pass, as ``if y < 0: y = 0``
    does)."""
    if not _float32(v):
        return None

    def codegen(context, builder, sig, args):
        zero = ir.Constant(args[0].type, None)
        return builder.select(builder.fcmp_ordered("<", args[0], zero), zero, args[0])

    return v(v), codegen


@intrinsic
def hardtanh(typingctx, v):
    """``clamp(v, -1, 1)`` per float32 lane or for one float32 (NaN and -0.0 pass, as ``torch.clamp`` does)."""
    if not _float32(v):
        return None

    def codegen(context, builder, sig, args):
        x = args[0]
        lanes = x.type.count if isinstance(x.type, ir.VectorType) else None
        one, minus = (ir.Constant(x.type, value if lanes is None else [value] * lanes) for value in (1.0, -1.0))
        low = builder.select(builder.fcmp_ordered("<", x, minus), minus, x)
        return builder.select(builder.fcmp_ordered(">", low, one), one, low)

    return v(v), codegen


@njit(cache=True, boundscheck=False, nogil=True, inline="always")
def activate(v, act):
    """The hidden activation of a kernel epilogue (``qwave.kernels`` codes): ``RELU``, ``HARDTANH`` or none."""
    if act == RELU:
        return relu(v)
    if act == HARDTANH:
        return hardtanh(v)
    return v


def _compare_bits(ordered: bool, pred: str, doc: str):
    """A lane-wise float32 compare turned into an int bitmask, lane ``i`` -> bit ``i`` (``vmovmskps``)."""
    @intrinsic
    def compare(typingctx, a, b):
        if not (isinstance(a, Vec) and a.real and a == b):
            return None

        def codegen(context, builder, sig, args):
            cmp = builder.fcmp_ordered if ordered else builder.fcmp_unordered
            lanes = builder.bitcast(cmp(pred, args[0], args[1]), ir.IntType(sig.args[0].count))
            return builder.zext(lanes, ir.IntType(64))

        return types.uint64(a, b), codegen

    compare.__doc__ = doc
    return compare


lt_bits = _compare_bits(True, "<", "Bit ``i`` set where lane ``i`` of ``a`` < ``b`` (float32, false for NaN).")
not_le_bits = _compare_bits(False, ">", "Bit ``i`` set where lane ``i`` of ``a`` is not <= ``b`` (float32: > or NaN).")


@intrinsic
def to_f32(typingctx, v):
    """Signed int32 lanes to float32 (``vcvtdq2ps``, round to nearest even, as ``np.float32(int)``)."""
    if v not in (I32x8, I32x16):
        return None
    out = F32x8 if v == I32x8 else F32x16

    def codegen(context, builder, sig, args):
        return builder.sitofp(args[0], _ll(out))

    return out(v), codegen


@intrinsic
def narrow_f32(typingctx, a, b):
    """Two int64 vectors (``a`` then ``b``, lanes inside int32's range) as one float32 vector of twice the lanes."""
    if not (a == b and a in (I64x4, I64x8)):
        return None
    out = F32x8 if a == I64x4 else F32x16

    def codegen(context, builder, sig, args):
        n = a.count
        both = builder.shuffle_vector(args[0], args[1], ir.Constant(ir.VectorType(I32, 2 * n), list(range(2 * n))))
        return builder.sitofp(builder.trunc(both, ir.VectorType(I32, 2 * n)), _ll(out))

    return out(a, b), codegen


@intrinsic
def vfma(typingctx, acc, a, b):
    """``acc + a * b`` per float32 lane, fused (one rounding: ``vfmadd231ps``)."""
    if not (isinstance(acc, Vec) and acc.real and acc == a == b):
        return None

    def codegen(context, builder, sig, args):
        vt = args[0].type
        return _call(builder, f"llvm.fma.v{vt.count}f32", vt, args[1], args[2], args[0])

    return acc(acc, a, b), codegen


@intrinsic(prefer_literal=True)
def shr_mask(typingctx, v, shift, mask):
    """``(v >> shift) & mask`` per byte, ``shift`` and ``mask`` literal integers (``vpsrlw`` + ``vpand``): the
    shift crosses byte boundaries inside 16-bit lanes, and the mask drops the bits that came from the next byte."""
    s, m = _literal(shift), _literal(mask)
    if not isinstance(v, Vec) or v.real or s is None or m is None or not 0 <= s < 8:
        return None

    def codegen(context, builder, sig, args):
        width = v.bits * v.count
        x = args[0]
        if s:
            words = ir.VectorType(ir.IntType(16), width // 16)
            x = builder.bitcast(builder.lshr(builder.bitcast(x, words), _splat(words, s)), _ll(v))
        as_bytes = ir.VectorType(ir.IntType(8), width // 8)
        return builder.bitcast(builder.and_(builder.bitcast(x, as_bytes), _splat(as_bytes, m & 0xFF)), _ll(v))

    return v(v, shift, mask), codegen


@intrinsic
def vadd_i8(typingctx, a, b):
    """``a + b`` per byte (wrapping mod 256) on vectors of any lane type."""
    if not (isinstance(a, Vec) and a == b) or a.real:
        return None

    def codegen(context, builder, sig, args):
        as_bytes = ir.VectorType(ir.IntType(8), a.bits * a.count // 8)
        total = builder.add(builder.bitcast(args[0], as_bytes), builder.bitcast(args[1], as_bytes))
        return builder.bitcast(total, _ll(a))

    return a(a, b), codegen


# ---- integer dot products -------------------------------------------------------------------------------------


@intrinsic
def maddubs(typingctx, u, s):
    """``vpmaddubsw``: int16 lane ``j`` = ``u[2j] s[2j] + u[2j+1] s[2j+1]``, ``u`` unsigned and ``s`` signed bytes.
    It saturates at +-32767: callers keep ``|u|`` and ``|s|`` small enough that a pair never reaches it."""
    if u != I8x32 or s != I8x32:
        return None

    def codegen(context, builder, sig, args):
        return _call(builder, "llvm.x86.avx2.pmadd.ub.sw", _ll(I16x16), *args)

    return I16x16(I8x32, I8x32), codegen


@intrinsic
def widen_pairs(typingctx, v):
    """``vpmaddwd`` with ones: int32 lane ``j`` = ``v[2j] + v[2j+1]`` (exact)."""
    if v != I16x16:
        return None

    def codegen(context, builder, sig, args):
        return _call(builder, "llvm.x86.avx2.pmadd.wd", _ll(I32x8), args[0], _splat(_ll(I16x16), 1))

    return I32x8(I16x16), codegen


@intrinsic
def dpbusd(typingctx, acc, u, b):
    """``vpdpbusd`` on 512 bits: ``acc + sum of 4 neighbouring products u*b`` per int32 lane, ``u`` unsigned
    bytes, ``b`` signed bytes, exact (no intermediate saturation; the int32 sum wraps)."""
    if acc != I32x16 or u != I32x16 or b != I32x16:
        return None

    def codegen(context, builder, sig, args):
        return _call(builder, "llvm.x86.avx512.vpdpbusd.512", _ll(I32x16), *args)

    return I32x16(I32x16, I32x16, I32x16), codegen


# ---- popcount -------------------------------------------------------------------------------------------------


@intrinsic
def popcount_bytes(typingctx, v):
    """Set bits of each byte (0..8) of a 256-bit vector, by two 16-entry ``vpshufb`` lookups of its nibbles."""
    if v != I64x4:
        return None

    def codegen(context, builder, sig, args):
        b32 = _ll(I8x32)
        table = ir.Constant(b32, [bin(i % 16).count("1") for i in range(32)])
        x = builder.bitcast(args[0], b32)
        low = builder.and_(x, _splat(b32, 0x0F))
        words = ir.VectorType(ir.IntType(16), 16)
        high = builder.and_(builder.bitcast(builder.lshr(builder.bitcast(x, words), _splat(words, 4)), b32),
                            _splat(b32, 0x0F))
        counts = builder.add(_call(builder, "llvm.x86.avx2.pshuf.b", b32, table, low),
                             _call(builder, "llvm.x86.avx2.pshuf.b", b32, table, high))
        return builder.bitcast(counts, _ll(I64x4))

    return I64x4(I64x4), codegen


@intrinsic
def sum_bytes(typingctx, v):
    """``vpsadbw`` against zero: each 64-bit lane becomes the sum of its 8 unsigned bytes."""
    if v != I64x4:
        return None

    def codegen(context, builder, sig, args):
        b32 = _ll(I8x32)
        return _call(builder, "llvm.x86.avx2.psad.bw", _ll(I64x4), builder.bitcast(args[0], b32),
                     ir.Constant(b32, None))

    return I64x4(I64x4), codegen


@intrinsic
def popcount_i64(typingctx, v):
    """Set bits of each 64-bit lane (``llvm.ctpop``: ``vpopcntq`` with AVX512-VPOPCNTDQ)."""
    if v not in (I64x4, I64x8):
        return None

    def codegen(context, builder, sig, args):
        vt = args[0].type
        return _call(builder, f"llvm.ctpop.v{vt.count}i64", vt, args[0])

    return v(v), codegen


# ---- 16-bit floats --------------------------------------------------------------------------------------------


def _half_loader(vt: Vec, bf16: bool):
    @intrinsic
    def load(typingctx, arr, start):
        def codegen(context, builder, sig, args):
            n = vt.count
            if bf16:
                raw = builder.load(_ptr(context, builder, sig.args[0], args[0], args[1],
                                        ir.VectorType(ir.IntType(16), n)), align=1)
                wide = builder.shl(builder.zext(raw, ir.VectorType(I32, n)), _splat(ir.VectorType(I32, n), 16))
                return builder.bitcast(wide, _ll(vt))
            raw = builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], ir.VectorType(ir.HalfType(), n)),
                               align=1)
            return builder.fpext(raw, _ll(vt))

        return vt(arr, start), codegen

    kind = "bfloat16 (the high half of a float32: a 16-bit shift)" if bf16 else "float16 (``vcvtph2ps``)"
    load.__doc__ = f"{vt.count} {kind} values of a contiguous 1-D uint16 array from ``start``, as float32."
    return load


load_f16x8, load_bf16x8 = _half_loader(F32x8, False), _half_loader(F32x8, True)
load_f16x16, load_bf16x16 = _half_loader(F32x16, False), _half_loader(F32x16, True)
