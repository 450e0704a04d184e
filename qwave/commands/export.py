"""``qwave export``: a saved artifact -> an ONNX file (ONNX Runtime) or C99 sources (any C compiler), same logits."""

from __future__ import annotations

import argparse
from pathlib import Path

from qwave.errors import ConfigError

EPILOG = """examples:
  qwave export models/int8 --to onnx --out int8.onnx
  qwave export models/binary --to c --out binary_c && cc -std=c99 -O2 binary_c/*.c -lm -o classify
  ./classify rows.f32          # raw little-endian float32 rows of the model's input width -> one class per line

Integer formats compute qwave's own recipe (integer dot products of the same codes, the same float32 epilogue), so
the logits equal qwave's; float formats sum in another order (float32 rounding). MoE and recurrent artifacts are
refused with what their export still needs.
"""


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qwave export", description=__doc__.split(": ", 1)[1], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path, help="artifact directory (model.safetensors + manifest.json)")
    parser.add_argument("--to", required=True, choices=["onnx", "c"], help="target: an .onnx file or a C folder")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file (onnx) or the folder (c) to write")
    args = parser.parse_args(argv)
    if args.out.parent.exists() and not args.out.parent.is_dir():
        raise ConfigError(f"--out {args.out}: {args.out.parent} is not a folder")
    if args.to == "onnx":
        from qwave.export.onnx import export_onnx

        done = export_onnx(args.artifact, args.out)
        print(f"wrote {done.path}: {done.bytes:,} bytes ({done.bytes / 1000:.1f} KB) against {done.stored_bytes:,} "
              f"stored tensor bytes in the artifact ({done.bytes / done.stored_bytes:.2f}x); weights: "
              f"{'; '.join(dict.fromkeys(done.storage))}")
        return 0
    from qwave.export.c import FILES, export_c

    done = export_c(args.artifact, args.out)
    line = (f"wrote {done.directory}/{{{','.join(FILES)}}}: {done.bytes:,} bytes of source against "
            f"{done.stored_bytes:,} stored tensor bytes in the artifact")
    if done.object_bytes is not None:
        text, rodata = done.object_bytes["text"], done.object_bytes["rodata"]
        line += (f"; model.o (cc -std=c99 -O2, size -A): text {text:,} + rodata {rodata:,} = {text + rodata:,} bytes "
                 f"({(text + rodata) / done.stored_bytes:.2f}x stored)")
    else:
        line += "; no C compiler or binutils size here, object bytes not measured"
    print(line)
    print(f"build: cc -std=c99 -O2 {done.directory}/*.c -lm -o classify  (add -mavx2 or -march=native for SIMD)")
    return 0
