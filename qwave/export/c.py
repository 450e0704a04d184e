"""Export a packed qwave MLP to dependency-free C99: ``model.h`` + ``model.c`` (+ a ``main.c`` that classifies raw
float32 rows), no allocation, libc and libm only.

The stored tensors go into ``model.c`` as ``const`` arrays in qwave's own layout (integer codes as the packed bytes,
binary / qesc as 64-bit words, fp16 scales and fp16 / bf16 weights as their 16-bit patterns, converted in the loop;
floats as exact hexadecimal literals). Each layer calls the kernel of its format (``c_kernels``): integer dot products
for int8 and the W·A8 formats on qwave's zero-point activation codes (0..127 as uint8; an AVX2 ``vpmaddubsw`` or NEON
dot product beside the portable loop, chosen at compile time by ``__AVX2__`` / ``__ARM_NEON``; ternary by lookup
tables built per call over its packed bytes), with the weights' column sums per group as ``const int32_t`` arrays
for the zero-point correction (4 bytes per output and group, in the sizes ``export`` reports), XNOR / AND-popcount
for binary and qesc. ``int qwave_predict(const float *x, float *logits)`` writes the logits of one row and returns
the predicted class index (the first largest logit); it keeps its buffers on the stack (about 12 bytes per unit of
the widest layer, plus 15.5 KB of tables for ternary), so it is re-entrant.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qwave.atomic import atomic_dir
from qwave.export import c_kernels as k
from qwave.export.model import Activation, ExportError, ExportModel, LayerNorm, Linear, read_model

FILES = ("model.h", "model.c", "main.c")
PER_LINE = 24  # array values per source line
# 133,000 * 127 * 127 < 2^31: no int32 value of a W·A8 row overflows (sum(q * w) with codes q in 0..127, z * colsum
# with z <= 127, their difference the dot of q - z in [-127, 127]; each at most 127 * 127 * n in magnitude)
INT32_SAFE_INPUTS = 133_000


def c_string(text: str) -> str:
    """A C string literal of ``text`` (UTF-8 bytes; quotes, backslashes and non-printing bytes escaped)."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= byte < 127 and ch != "?":  # '?' escaped: no trigraphs
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _literals(values: np.ndarray, ctype: str) -> list[str]:
    flat = np.ascontiguousarray(values).reshape(-1)
    if ctype == "float":
        return [float(v).hex() + "f" for v in flat.astype(np.float64)]
    if ctype == "uint64_t":
        return [f"0x{int(v):016x}ull" for v in flat.astype("<i8").view(np.uint64)]
    return [str(int(v)) for v in flat]


def c_array(ctype: str, name: str, values: np.ndarray) -> str:
    """``static const ctype name[n] = {...};`` holding ``values`` (row-major)."""
    items = _literals(values, ctype)
    lines = [", ".join(items[i : i + PER_LINE]) for i in range(0, len(items), PER_LINE)]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{max(len(items), 1)}] = {{\n    {body or '0'}\n}};\n"


def _decode(layer: Linear) -> tuple[str, int, int]:
    """``(code layout, kind, qmax)`` of an integer layer's stored rows for ``decode_row``."""
    fmt = layer.fmt
    if fmt.name == "ternary":
        return "trits", 0, 0
    bits = int(fmt.bits)
    if bits == 8:
        return "int8", 8, 0
    return "bits", bits, fmt.qmax if fmt.grid == "halfstep" else 0


def column_sums(layer: Linear, groups: int, size: int) -> np.ndarray:
    """int32 ``[out, groups]``: the sum of each row's integer weight codes over each group of ``size`` inputs, which
    the W·A8 kernels multiply by a row's activation zero point (``sum((q - z) * w) = sum(q * w) - z * colsum``)."""
    out, n = layer.shape
    packed = {name: torch.from_numpy(np.ascontiguousarray(v)) for name, v in layer.packed.items()}
    codes = layer.fmt.unpack(packed, (out, n)).codes.to(torch.int64).numpy()
    padded = np.zeros((out, groups * size), np.int64)
    padded[:, :n] = codes
    return padded.reshape(out, groups, size).sum(axis=2).astype(np.int32)


def _group(layer: Linear) -> tuple[int, int]:
    n = layer.in_features
    size = n if getattr(layer.fmt, "group_size", None) is None else min(layer.fmt.group_size, n)
    return size, -(-n // size)


@dataclass
class Source:
    """The pieces of model.c as they are gathered: kernels used, constant arrays, the body of qwave_predict."""

    kernels: dict[str, str]
    arrays: list[str]
    calls: list[str]
    decodes: set[str]


def _layer(src: Source, i: int, layer: Linear, x: str, y: str, act: str) -> None:
    fmt, (out, n), p = layer.fmt, layer.shape, layer.packed
    bias = "0"
    if layer.bias is not None:
        src.arrays.append(c_array("float", f"L{i}_bias", layer.bias))
        bias = f"L{i}_bias"
    if fmt.name in k.DENSE_TYPES:
        src.kernels.update({"half": k.HALF} if fmt.name == "fp16" else {"bf16": k.BF16} if fmt.name == "bf16" else {})
        src.kernels[f"dense_{fmt.name}"] = k.dense(fmt.name)
        ctype = "float" if fmt.name == "fp32" else "uint16_t"
        src.arrays.append(c_array(ctype, f"L{i}_weight", p["weight"].view(np.uint16) if ctype != "float" else
                                  p["weight"]))
        src.calls.append(f"dense_{fmt.name}({x}, {y}, {n}, {out}, L{i}_weight, {bias}, {act});")
        return
    src.kernels["half"] = k.HALF
    src.arrays.append(c_array("uint16_t", f"L{i}_scale", p["scale"].view(np.uint16)))
    if fmt.activations in ("binary", "ternary"):
        if n >= 1 << 24:
            raise ExportError(f"layer {i}: {n} inputs; popcount dot products are exact in float32 below 2^24")
        src.kernels["popcount"] = k.POPCOUNT
        if fmt.name == "binary":
            src.kernels["binary"] = k.BINARY
            src.arrays.append(c_array("uint64_t", f"L{i}_bits", p["bits"]))
            src.calls.append(f"binary_layer({x}, {y}, {n}, {out}, L{i}_bits, L{i}_scale, {bias}, {act});")
        else:
            src.kernels["qesc"] = k.QESC
            src.arrays.append(c_array("uint64_t", f"L{i}_plus", p["plus"]))
            src.arrays.append(c_array("uint64_t", f"L{i}_minus", p["minus"]))
            src.calls.append(f"qesc_layer({x}, {y}, {n}, {out}, L{i}_plus, L{i}_minus, L{i}_scale, {bias}, {act});")
        return
    codes = p["codes"]
    src.arrays.append(c_array("uint8_t", f"L{i}_codes", codes.view(np.uint8)))
    size, groups = _group(layer)
    if fmt.activations == "int8":
        if n > INT32_SAFE_INPUTS:
            raise ExportError(f"layer {i}: {n} inputs; the C export's int32 dot products are exact up to "
                              f"{INT32_SAFE_INPUTS:,}")
        src.arrays.append(c_array("int32_t", f"L{i}_colsum", column_sums(layer, groups, size)))
    if fmt.name == "ternary" and fmt.activations == "int8":
        src.kernels.update({"act8": k.ACT8, "ternary_a8": k.TERNARY_A8})
        src.calls.append(f"ternary_a8({x}, {y}, {n}, {out}, L{i}_codes, {codes.shape[1]}, L{i}_scale, L{i}_colsum, "
                         f"{bias}, {act});")
        return
    layout, kind, qmax = _decode(layer)
    src.decodes.add(layout)
    args = f"L{i}_codes, {codes.shape[1]}, {kind}, {qmax}, L{i}_scale"
    if fmt.activations == "int8":
        src.kernels.update({"act8": k.ACT8, "dot": k.DOT_U8I8, "wa8": k.WA8})
        src.calls.append(f"wa8({x}, {y}, {n}, {out}, {args}, L{i}_colsum, {groups}, {size}, {bias}, {act});")
    elif fmt.activations == "float":
        src.kernels["dequant"] = k.DEQUANT
        src.calls.append(f"dense_dequant({x}, {y}, {n}, {out}, {args}, {groups}, {size}, {bias}, {act});")
    else:
        raise ExportError(f"format {fmt.name!r} with activations {fmt.activations!r} has no C export")


def _normalise(src: Source, model: ExportModel) -> None:
    norm, n = model.norm, model.in_features
    if norm.mode == "raw":
        src.calls.append(f"memcpy(a, x, sizeof(float) * {n});")
    elif norm.mode == "l2":
        src.calls.append(f"{{ double sq = 0.0; float len; for (k = 0; k < {n}; ++k) sq += (double)x[k] * x[k];\n"
                         f"      len = (float)sqrt(sq); if (len < {float(np.float32(norm.eps)).hex()}f) "
                         f"len = {float(np.float32(norm.eps)).hex()}f;\n"
                         f"      for (k = 0; k < {n}; ++k) a[k] = x[k] / len; }}")
    else:
        src.arrays.append(c_array("float", "norm_shift", norm.shift))
        src.arrays.append(c_array("float", "norm_scale", norm.scale))
        src.calls.append(f"for (k = 0; k < {n}; ++k) a[k] = (x[k] - norm_shift[k]) / norm_scale[k];")


def model_c(model: ExportModel) -> str:
    """The text of model.c."""
    src = Source({}, [], [], set())
    _normalise(src, model)
    steps, buffers, current = model.steps, ("a", "b"), 0
    linears = [i for i, s in enumerate(steps) if isinstance(s, Linear)]
    if not linears or linears[-1] != len(steps) - 1:
        raise ExportError("the model must end with a linear layer (its logits)")
    acts = {"relu": "ACT_RELU", "hardtanh": "ACT_HARDTANH"}
    for i, step in enumerate(steps):
        if isinstance(step, Linear):
            follows = steps[i + 1] if i + 1 < len(steps) else None
            act = acts[follows.kind] if isinstance(follows, Activation) else "ACT_NONE"
            x = buffers[current]
            y = "logits" if i == len(steps) - 1 else buffers[1 - current]
            _layer(src, i, step, x, y, act)
            current = 1 - current
        elif isinstance(step, Activation) and not isinstance(steps[i - 1], Linear):
            src.calls.append(f"for (k = 0; k < width; ++k) {buffers[current]}[k] = "
                             f"activate({buffers[current]}[k], {acts[step.kind]});")
        elif isinstance(step, LayerNorm):
            src.kernels["layer_norm"] = k.LAYER_NORM
            src.arrays += [c_array("float", f"N{i}_weight", step.weight), c_array("float", f"N{i}_bias", step.bias)]
            src.calls.append(f"layer_norm({buffers[current]}, {step.weight.shape[0]}, N{i}_weight, N{i}_bias, "
                             f"{float(np.float32(step.eps)).hex()}f);")
        if isinstance(step, Linear):
            src.calls.append(f"width = {step.out_features};")
    if src.decodes:
        src.kernels["decode"] = "".join(
            [k.DECODE_BITS if "bits" in src.decodes else "", k.decode_trits() if "trits" in src.decodes else "",
             k.decode_row(src.decodes)])
    order = ["half", "bf16", "popcount", "act8", "dot", "decode", "wa8", "ternary_a8", "dequant", "binary", "qesc",
             "layer_norm"]
    kernels = [src.kernels[name] for name in order if name in src.kernels]
    kernels += [v for name, v in src.kernels.items() if name.startswith("dense_")]
    widest = max([model.in_features] + [s.out_features for s in model.linears])
    classes = ",\n    ".join(c_string(c) for c in model.classes)
    body = "\n    ".join(src.calls)
    return (f"/* Generated by qwave export: formats {', '.join(model.format_names)}. */\n"
            + k.PRELUDE.replace('#include "model.h"\n', f'#include "model.h"\n\n#define QWAVE_MAX_WIDTH {widest}\n')
            + "".join(kernels)
            + f"\nconst char *const qwave_classes[QWAVE_CLASSES] = {{\n    {classes}\n}};\n\n"
            + "\n".join(src.arrays)
            + "\nint qwave_predict(const float *x, float *logits)\n{\n"
            + "    float a[QWAVE_MAX_WIDTH], b[QWAVE_MAX_WIDTH];\n    int k, width = QWAVE_IN, best = 0;\n"
            + f"    {body}\n    (void)b;\n    (void)width;\n"
            + "    for (k = 1; k < QWAVE_CLASSES; ++k)\n        if (logits[k] > logits[best]) best = k;\n"
            + "    return best;\n}\n\n"
            + "void qwave_predict_rows(const float *x, long rows, float *logits)\n{\n    long r;\n"
            + "    for (r = 0; r < rows; ++r) qwave_predict(x + r * QWAVE_IN, logits + r * QWAVE_CLASSES);\n}\n")


def model_h(model: ExportModel) -> str:
    """The text of model.h."""
    return f"""/* Generated by qwave export: a {' / '.join(model.format_names)} MLP, {model.in_features} inputs, \
{len(model.classes)} classes. */
#ifndef QWAVE_MODEL_H
#define QWAVE_MODEL_H

#define QWAVE_IN {model.in_features}
#define QWAVE_CLASSES {len(model.classes)}

/* Class names, in logit order. */
extern const char *const qwave_classes[QWAVE_CLASSES];

/* Logits of one row x[QWAVE_IN] into logits[QWAVE_CLASSES] (the stored normaliser applied first); returns the
   index of the predicted class (the first largest logit). No allocation; re-entrant. */
int qwave_predict(const float *x, float *logits);

/* qwave_predict over rows x QWAVE_IN floats into rows x QWAVE_CLASSES logits. */
void qwave_predict_rows(const float *x, long rows, float *logits);

#endif
"""


@dataclass
class CExport:
    directory: Path
    bytes: int  # model.h + model.c + main.c on disk
    stored_bytes: int  # the artifact's packed tensor bytes
    object_bytes: dict[str, int] | None  # text / rodata of model.o (``size``), None without a compiler or ``size``


def write_sources(model: ExportModel, out: Path) -> None:
    """Write model.h, model.c and main.c into ``out`` atomically (a temporary folder beside it, then renamed)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "model.c").is_file())):
        raise ExportError(f"--out {out} exists and is not a qwave C export; refusing to replace it")
    texts = {"model.h": model_h(model), "model.c": model_c(model), "main.c": k.MAIN}
    with atomic_dir(out) as tmp:
        for name, text in texts.items():
            (tmp / name).write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o755)


def compiler() -> str | None:
    """The C compiler to use: ``$CC`` or ``cc`` when on the PATH, else None."""
    return shutil.which(os.environ.get("CC", "cc"))


def object_bytes(directory: Path, flags: tuple[str, ...] = ("-std=c99", "-O2")) -> dict[str, int] | None:
    """``{"text": ..., "rodata": ...}`` bytes of model.o compiled with ``flags``, read by the binutils ``size -A``;
    None when no compiler or ``size`` is present."""
    cc, size = compiler(), shutil.which("size")
    if cc is None or size is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "model.o"
        subprocess.run([cc, *flags, "-c", str(Path(directory) / "model.c"), "-o", str(obj)], check=True,
                       capture_output=True)
        listing = subprocess.run([size, "-A", str(obj)], check=True, capture_output=True, text=True).stdout
    sections = {"text": 0, "rodata": 0}
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            if parts[0].startswith(".text"):
                sections["text"] += int(parts[1])
            elif parts[0].startswith((".rodata", ".data.rel.ro")):
                sections["rodata"] += int(parts[1])
    return sections


def export_c(artifact: str | Path, out: str | Path, measure: bool = True) -> CExport:
    """Write the C export of the artifact at ``artifact`` into the folder ``out``."""
    model = read_model(artifact)
    out = Path(out)
    write_sources(model, out)
    written = sum((out / name).stat().st_size for name in FILES)
    return CExport(out, written, model.stored_bytes, object_bytes(out) if measure else None)
