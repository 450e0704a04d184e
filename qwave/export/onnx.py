"""Export a packed qwave MLP to an ONNX file that stock ONNX Runtime runs, with standard operators only.

One float input ``x [batch, features]``, one output ``logits [batch, classes]``; the stored normaliser and the
hidden activations are in the graph; the class names are a JSON list under the metadata key ``classes``.

Weights are stored as qwave stores them, never widened on disk:

* ``fp32`` / ``fp16`` / ``bf16``: the weight in its own dtype (16-bit ones cast to float32 in the graph).
* ``int8``: the int8 codes; ``int4`` (symmetric grid): an ONNX ``INT4`` tensor holding qwave's own nibble bytes
  (both are low nibble first, two's complement), read by ``DequantizeLinear`` with scale 1 (opset 21).
* every other packed layout (int2, int3, int5..int7 bit streams, ternary's five trits per byte, binary's sign
  words, qesc's plus / minus planes): qwave's bytes themselves as a ``UINT8`` tensor, unpacked by a small graph of
  standard integer operators (``BitShift``, ``BitwiseAnd``, ``Div``, ``Mod``) whose inputs are all constants, so
  ONNX Runtime folds it once when it loads the model. ONNX has no 2-bit or base-3 type: the nearest opset type
  would be ``INT4`` (4 bits per weight), the packed bytes keep qwave's 1.6 / 1 / 2 / 3 bits.

Every integer format runs qwave's own recipe, with the integer products as ``MatMulInteger`` on the codes:

* W·A8 (int2..int8, ternary): per-row dynamic activations on 128 levels with a zero point
  (``qwave.formats.base.quantize_rows_int8``): ``s_x = (max(x_row, 0) - min(x_row, 0)) / 127`` in float32,
  ``z = clip(round_half_even(-min(x_row, 0) / s_x), 0, 127)``, codes ``q = clip(round_half_even(x / s_x) + z, 0,
  127)`` (all 0 where ``s_x = 0``). ``MatMulInteger`` multiplies the uint8 codes ``q`` by the int8 weight codes
  (ONNX Runtime takes only one zero point per tensor, not one per row), and ``z`` times the weights' column sums per
  group is subtracted in int32 (``_wa8_dot``): the exact dots of ``q - z``. Then ``y = s_x * sum_g(float(dot_g) *
  s_w[:, g]) + b`` in float32, in qwave's order.
* binary: signs ``x >= 0 -> +1`` times the weight signs (the dot product equals ``n - 2 popcount(x XOR w)``),
  ``y = float(dot) * s_x * s_w + b`` with ``s_x = mean|x_row|`` summed in float64 as qwave's kernel does.
* qesc: trits ``clip(round(x / s_x), -1, 1)`` (0 where ``s_x = 0``) times the weight trits.
* the weight-only option (``activations="float"``): the dequantized weight (codes x scales) times float inputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qwave.atomic import write_with
from qwave.errors import QwaveError
from qwave.export.model import Activation, ExportError, ExportModel, LayerNorm, Linear, read_model

OPSET = 21  # INT4 tensors and DequantizeLinear over them
ONNX_EXTRA = "the onnx extra (pip install 'qwave[onnx]')"


class MissingExtra(QwaveError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require_onnx():
    """The ``onnx`` module, or a one-line error naming the extra."""
    try:
        import onnx
    except ImportError:
        raise MissingExtra(f"ONNX export needs the onnx package: {ONNX_EXTRA}") from None
    return onnx


def require_onnxruntime():
    """The ``onnxruntime`` module, or a one-line error naming the extra."""
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtra(f"running an ONNX export needs onnxruntime: {ONNX_EXTRA}") from None
    return onnxruntime


def weight_storage(layer: Linear) -> str:
    """How a layer's weight is stored in the ONNX file (stated in the export report and the metadata)."""
    name = layer.fmt.name
    if name in ("fp32", "fp16", "bf16"):
        return {"fp32": "FLOAT", "fp16": "FLOAT16", "bf16": "BFLOAT16"}[name]
    if name == "int8":
        return "INT8 codes"
    if name == "int4" and layer.fmt.grid == "symmetric":
        return "INT4 codes (DequantizeLinear)"
    return "qwave's packed UINT8 bytes, unpacked by constant integer ops"


@dataclass
class Graph:
    """A growing ONNX graph: nodes, constant initializers, unique names."""

    onnx: object
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    count: int = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, value: np.ndarray, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    def raw(self, data: bytes, dtype: int, dims: list[int], hint: str) -> str:
        """An initializer from raw bytes of an ONNX type (INT4 and BFLOAT16 have no NumPy dtype)."""
        name = self.name(hint)
        self.inits.append(self.onnx.helper.make_tensor(name, dtype, dims, data, raw=True))
        return name

    def op(self, op_type: str, *inputs: str, hint: str | None = None, **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def f32(self, value) -> str:
        return self.const(np.asarray(value, np.float32))

    def i64(self, value) -> str:
        return self.const(np.asarray(value, np.int64))


# ---- weights: stored bytes -> float codes [out, in] (folded by the runtime) -----------------------------------------


def _bits(g: Graph, data: np.ndarray) -> str:
    """uint8 bytes ``[out, B]`` (a constant) -> their bits as uint8 ``[out, 8B]``, least significant first."""
    out, width = data.shape
    stored = g.const(np.ascontiguousarray(data, np.uint8), "packed")
    spread = g.op("Unsqueeze", stored, g.i64([2]))
    shifted = g.op("BitShift", spread, g.const(np.arange(8, dtype=np.uint8)), direction="RIGHT")
    bits = g.op("BitwiseAnd", shifted, g.const(np.ones(1, np.uint8)))
    return g.op("Reshape", bits, g.i64([out, 8 * width]))


def _fields(g: Graph, data: np.ndarray, k: int, n: int) -> str:
    """Unsigned k-bit fields (float) ``[out, n]`` of little-endian bit streams, one per row."""
    out = data.shape[0]
    bits = g.op("Slice", _bits(g, data), g.i64([0]), g.i64([n * k]), g.i64([1]))
    if k == 1:
        return g.op("Cast", bits, to=1)
    grouped = g.op("Cast", g.op("Reshape", bits, g.i64([out, n, k])), to=1)
    value = g.op("MatMul", grouped, g.f32((2.0 ** np.arange(k)).reshape(k, 1)))
    return g.op("Reshape", value, g.i64([out, n]))


def _words_as_bytes(words: np.ndarray) -> np.ndarray:
    """int64 words ``[out, W]`` -> their little-endian bytes ``[out, 8W]`` (bit j of byte m is element 8m + j)."""
    return np.ascontiguousarray(words.astype("<i8")).view(np.uint8).reshape(words.shape[0], -1)


def float_codes(g: Graph, layer: Linear) -> str:
    """The integer weight codes ``[out, in]`` as float32 values, computed from the stored tensors."""
    fmt, (out, n), packed = layer.fmt, layer.shape, layer.packed
    name = fmt.name
    if name == "binary":
        b = _fields(g, _words_as_bytes(packed["bits"]), 1, n)
        return g.op("Sub", g.op("Mul", b, g.f32(2.0)), g.f32(1.0))
    if name == "qesc":
        plus = _fields(g, _words_as_bytes(packed["plus"]), 1, n)
        return g.op("Sub", plus, _fields(g, _words_as_bytes(packed["minus"]), 1, n))
    if name == "ternary":
        data = packed["codes"]
        wide = g.op("Cast", g.op("Unsqueeze", g.const(data, "packed"), g.i64([2])), to=6)  # int32
        digits = g.op("Mod", g.op("Div", wide, g.const(np.array([1, 3, 9, 27, 81], np.int32))),
                      g.const(np.array([3], np.int32)))
        flat = g.op("Reshape", digits, g.i64([out, 5 * data.shape[1]]))
        trits = g.op("Slice", flat, g.i64([0]), g.i64([n]), g.i64([1]))
        return g.op("Sub", g.op("Cast", trits, to=1), g.f32(1.0))
    k = int(fmt.bits)
    if k == 8:
        return g.op("Cast", g.const(packed["codes"].view(np.int8), "codes"), to=1)
    if k == 4 and fmt.grid == "symmetric":
        data = packed["codes"]
        even = 2 * data.shape[1]  # each row's bytes hold an even number of nibbles (the last one 0 when n is odd)
        int4 = g.raw(data.tobytes(), g.onnx.TensorProto.INT4, [out, even], "codes_int4")
        zero = g.raw(b"\x00", g.onnx.TensorProto.INT4, [], "zero_int4")
        values = g.op("DequantizeLinear", int4, g.f32(1.0), zero)
        return g.op("Slice", values, g.i64([0]), g.i64([n]), g.i64([1]))
    u = _fields(g, packed["codes"], k, n)
    if fmt.grid == "halfstep":
        return g.op("Sub", g.op("Mul", u, g.f32(2.0)), g.f32(float(fmt.qmax)))
    signed = g.op("Sub", u, g.f32(float(2**k)))
    return g.op("Where", g.op("Greater", u, g.f32(2 ** (k - 1) - 0.5)), signed, u)


def _group_layout(layer: Linear) -> tuple[int, int]:
    n = layer.in_features
    size = n if getattr(layer.fmt, "group_size", None) is None else min(layer.fmt.group_size, n)
    return size, -(-n // size)


def _grouped(g: Graph, t: str, rows: int | None, size: int, groups: int, n: int) -> str:
    """``[rows, n]`` -> ``[rows, groups, size]``, zero-padding the short last group (``rows`` None: dynamic)."""
    if groups * size != n:
        t = g.op("Pad", t, g.i64([0, 0, 0, groups * size - n]))
    return g.op("Reshape", t, g.i64([-1 if rows is None else rows, groups, size]))


def _scales(g: Graph, scale: np.ndarray) -> str:
    """fp16 scales ``[out, groups]`` (stored as FLOAT16) -> float32 ``[groups, 1, out]``."""
    stored = g.const(np.ascontiguousarray(scale, np.float16), "scale")
    return g.op("Unsqueeze", g.op("Transpose", g.op("Cast", stored, to=1), perm=[1, 0]), g.i64([1]))


# ---- layers ----------------------------------------------------------------------------------------------------------


def _int8_rows(g: Graph, x: str) -> tuple[str, str, str]:
    """qwave's dynamic per-row activations (``quantize_rows_int8``): uint8 codes ``q [B, n]`` in 0..127, int32 zero
    points ``z [B, 1]`` and float32 scales ``[B, 1]``. The float32 operations are qwave's: ``hi - lo`` then ``/ 127``;
    rounding is half to even (ONNX ``Round``); clipping the rounded value to integer bounds equals clipping before.
    Where ``s`` is 0 the divisor is 1, which already gives qwave's codes and zero point 0: then ``hi - lo`` is below
    ``127 * 2^-150``, so every ``x`` and ``lo`` round to 0."""
    lo = g.op("Min", g.op("ReduceMin", x, g.i64([1]), keepdims=1), g.f32(0.0))
    hi = g.op("Max", g.op("ReduceMax", x, g.i64([1]), keepdims=1), g.f32(0.0))
    s = g.op("Div", g.op("Sub", hi, lo), g.f32(127.0), hint="act_scale")
    safe = g.op("Where", g.op("Greater", s, g.f32(0.0)), s, g.f32(1.0))
    z = g.op("Clip", g.op("Round", g.op("Div", g.op("Neg", lo), safe)), g.f32(0.0), g.f32(127.0), hint="act_zero")
    codes = g.op("Clip", g.op("Add", g.op("Round", g.op("Div", x, safe)), z), g.f32(0.0), g.f32(127.0),
                 hint="act_codes")
    return g.op("Cast", codes, to=2), g.op("Cast", z, to=6), s


def _abs_mean(g: Graph, x: str, n: int) -> str:
    """``mean|x_row|`` summed in float64 then rounded to float32 (qwave's popcount kernels), ``[B, 1]``."""
    total = g.op("ReduceSum", g.op("Abs", g.op("Cast", x, to=11)), g.i64([1]), keepdims=1)
    return g.op("Cast", g.op("Div", total, g.const(np.array(float(n), np.float64))), to=1)


def _offset_u8(g: Graph, codes: str) -> str:
    """Float codes in [-127, 127] -> ``codes + 128`` as uint8 (the operand ``MatMulInteger`` reads with zero point
    128)."""
    return g.op("Cast", g.op("Add", codes, g.f32(128.0)), to=2)


def _int_dot(g: Graph, a: str, w_codes: str) -> str:
    """int32 ``a @ w`` of integer codes ``a [.., B, n]`` and ``w [.., n, out]`` in [-127, 127], as float32 (the
    binary and qesc signs / trits).

    Both operands go in as ``code + 128`` (uint8) with zero point 128: ``MatMulInteger`` subtracts the zero points
    before multiplying, so the int32 sums are exactly qwave's. Unsigned x unsigned is ONNX Runtime's exact path on
    every CPU for signed activations (on AVX2 without VNNI its unsigned x signed kernel can saturate int16 pairs when
    the unsigned operand exceeds 127), and with int8 x int8 it ran 40x slower here."""
    zero = g.const(np.array(128, np.uint8), "zero_point")
    acc = g.op("MatMulInteger", _offset_u8(g, a), _offset_u8(g, w_codes), zero, zero)
    return g.op("Cast", acc, to=1)


def _wa8_dot(g: Graph, q: str, z: str, w_codes: str) -> str:
    """Exact int32 ``(q - z) @ w`` as float32, for uint8 activation codes ``q [.., B, n]`` in 0..127, int32 zero
    points ``z [B, 1]`` and float weight codes ``w [.., n, out]`` in [-127, 127] (constants).

    ``MatMulInteger`` (uint8 x int8, zero points 0) gives ``q @ w``; ``z * colsum(w)`` is subtracted in int32. The
    column sums come from the stored codes by constant operators that ONNX Runtime folds at load, so the file holds
    no copy of them. Unsigned x signed is exact on every CPU: a pair of products is at most ``2 * 127 * 127 < 2^15``
    (``vpmaddubsw`` on AVX2 without VNNI cannot saturate). Every int32 value, ``q @ w``, ``z * colsum`` and their
    difference, is at most ``127 * 127 * n`` in magnitude."""
    w8 = g.op("Cast", w_codes, to=3)  # int8
    colsum = g.op("ReduceSum", g.op("Cast", w8, to=6), g.i64([-2]), keepdims=1)  # [.., 1, out] int32
    acc = g.op("Sub", g.op("MatMulInteger", q, w8), g.op("Mul", z, colsum))
    return g.op("Cast", acc, to=1)


def _bias(g: Graph, y: str, layer: Linear) -> str:
    return y if layer.bias is None else g.op("Add", y, g.f32(layer.bias))


def _wa8(g: Graph, x: str, layer: Linear) -> str:
    out, n = layer.shape
    size, groups = _group_layout(layer)
    codes, z, s_x = _int8_rows(g, x)
    w = float_codes(g, layer)
    scales = _scales(g, layer.packed["scale"])
    if groups == 1:
        dot = _wa8_dot(g, codes, z, g.op("Transpose", w, perm=[1, 0]))
        f = g.op("Mul", dot, g.op("Squeeze", scales, g.i64([0])))
    else:
        a = g.op("Transpose", _grouped(g, codes, None, size, groups, n), perm=[1, 0, 2])  # [G, B, size]
        wg = g.op("Transpose", _grouped(g, w, out, size, groups, n), perm=[1, 2, 0])  # [G, size, out]
        parts = g.op("Mul", _wa8_dot(g, a, z, wg), scales)  # [G, B, out]
        f = None
        for i in range(groups):  # qwave's order: f = sum_g in order, from group 0
            part = g.op("Gather", parts, g.i64(i), axis=0)
            f = part if f is None else g.op("Add", f, part)
    return _bias(g, g.op("Mul", f, s_x), layer)


def _weight_only(g: Graph, x: str, layer: Linear) -> str:
    out, n = layer.shape
    size, groups = _group_layout(layer)
    scales = g.op("Cast", g.const(np.ascontiguousarray(layer.packed["scale"], np.float16), "scale"), to=1)
    w = g.op("Mul", _grouped(g, float_codes(g, layer), out, size, groups, n), g.op("Unsqueeze", scales, g.i64([2])))
    w = g.op("Slice", g.op("Reshape", w, g.i64([out, groups * size])), g.i64([0]), g.i64([n]), g.i64([1]))
    return _bias(g, g.op("MatMul", x, g.op("Transpose", w, perm=[1, 0])), layer)


def _popcount_like(g: Graph, x: str, layer: Linear) -> str:
    n = layer.in_features
    s_x = _abs_mean(g, x, n)
    if layer.fmt.name == "binary":
        a = g.op("Where", g.op("GreaterOrEqual", x, g.f32(0.0)), g.f32(1.0), g.f32(-1.0))
    else:
        safe = g.op("Where", g.op("Greater", s_x, g.f32(0.0)), s_x, g.f32(1.0))
        a = g.op("Clip", g.op("Round", g.op("Div", x, safe)), g.f32(-1.0), g.f32(1.0))
    dot = _int_dot(g, a, g.op("Transpose", float_codes(g, layer), perm=[1, 0]))
    s_w = g.op("Reshape", g.op("Cast", g.const(np.ascontiguousarray(layer.packed["scale"], np.float16), "scale"),
                               to=1), g.i64([1, -1]))
    return _bias(g, g.op("Mul", g.op("Mul", dot, s_x), s_w), layer)


def _float_weight(g: Graph, x: str, layer: Linear) -> str:
    name, w = layer.fmt.name, layer.packed["weight"]
    if name == "fp32":
        weight = g.const(np.ascontiguousarray(w, np.float32), "weight")
    elif name == "fp16":
        weight = g.op("Cast", g.const(np.ascontiguousarray(w, np.float16), "weight"), to=1)
    else:  # bf16: NumPy has no bfloat16; the raw 16-bit patterns are the tensor's bytes
        bits = np.ascontiguousarray(w, "<u2")  # read_model gives bfloat16 as its uint16 bit patterns
        weight = g.op("Cast", g.raw(bits.tobytes(), g.onnx.TensorProto.BFLOAT16, list(w.shape), "weight"), to=1)
    return _bias(g, g.op("MatMul", x, g.op("Transpose", weight, perm=[1, 0])), layer)


def linear(g: Graph, x: str, layer: Linear) -> str:
    """The ONNX nodes of one packed layer applied to ``x``; the name of its float32 output."""
    fmt = layer.fmt
    if fmt.name in ("fp32", "fp16", "bf16"):
        return _float_weight(g, x, layer)
    if fmt.activations in ("binary", "ternary"):
        return _popcount_like(g, x, layer)
    if fmt.activations == "int8":
        return _wa8(g, x, layer)
    if fmt.activations == "float":
        return _weight_only(g, x, layer)
    raise ExportError(f"format {fmt.name!r} with activations {fmt.activations!r} has no ONNX export")


def _normalise(g: Graph, x: str, model: ExportModel) -> str:
    norm = model.norm
    if norm.mode == "raw":
        return x
    if norm.mode == "l2":
        length = g.op("Max", g.op("ReduceL2", x, g.i64([1]), keepdims=1), g.f32(norm.eps))
        return g.op("Div", x, length)
    return g.op("Div", g.op("Sub", x, g.f32(norm.shift)), g.f32(norm.scale))


def build(model: ExportModel):
    """The ``onnx.ModelProto`` of ``model`` (checked by ``onnx.checker``)."""
    onnx = require_onnx()
    helper = onnx.helper
    g = Graph(onnx)
    h = _normalise(g, "x", model)
    for step in model.steps:
        if isinstance(step, Linear):
            h = linear(g, h, step)
        elif isinstance(step, Activation):
            h = g.op("Relu", h) if step.kind == "relu" else g.op("Clip", h, g.f32(-1.0), g.f32(1.0))
        elif isinstance(step, LayerNorm):
            h = g.op("LayerNormalization", h, g.f32(step.weight), g.f32(step.bias), axis=-1, epsilon=step.eps)
    g.nodes.append(helper.make_node("Identity", [h], ["logits"]))
    graph = helper.make_graph(
        g.nodes, "qwave", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", model.in_features])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", len(model.classes)])],
        g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qwave")
    proto.ir_version = 10  # opset 21's IR version (what ONNX Runtime 1.17+ reads)
    storage = [weight_storage(layer) for layer in model.linears]
    metadata = {"classes": json.dumps(model.classes), "formats": json.dumps(model.format_names),
                "weight_storage": json.dumps(storage), "normalize": model.norm.mode}
    helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto)
    return proto


@dataclass
class OnnxExport:
    path: Path
    bytes: int  # the .onnx file on disk
    stored_bytes: int  # the artifact's packed tensor bytes
    storage: list[str]


def export_onnx(artifact: str | Path, out: str | Path) -> OnnxExport:
    """Write the ONNX export of the artifact at ``artifact`` to ``out`` (atomically)."""
    onnx = require_onnx()
    model = read_model(artifact)
    proto = build(model)
    out = Path(out)
    write_with(out, lambda tmp: onnx.save(proto, str(tmp)), suffix=".onnx")
    return OnnxExport(out, out.stat().st_size, model.stored_bytes, [weight_storage(s) for s in model.linears])


def session(path: str | Path, threads: int = 1):
    """An ONNX Runtime session of an exported file on CPU with ``threads`` intra-op threads (spinning off)."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
