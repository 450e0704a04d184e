"""Sizes and agreement of the ONNX and C exports of saved artifacts on every row of a table (docs/benchmarks.md,
"Export to ONNX and C (issue 19)").

    python scripts/export_check.py TABLE ARTIFACT [ARTIFACT ...]

For each artifact: its stored tensor bytes, the .onnx file's bytes, model.o's text + rodata (cc -std=c99 -O2,
size -A), and for both exports the share of rows whose argmax equals qwave.load's and the largest |logit difference|.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import qwave
from qwave.data import TableSpec, load_table
from qwave.export.c import export_c
from qwave.export.onnx import export_onnx, session
from qwave.export.speed import c_library, c_method


def main(table: str, artifacts: list[str]) -> None:
    X = np.ascontiguousarray(load_table(TableSpec(path=table)).X, np.float32)
    print(f"{len(X)} rows of {table}\n")
    print("| artifact | formats | stored B | .onnx B | ONNX argmax = qwave | ONNX max abs diff "
          "| model.o text + rodata B | C argmax = qwave | C max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in artifacts:
        model = qwave.load(path)
        want = model.logits(X)
        with tempfile.TemporaryDirectory() as tmp:
            onnx = export_onnx(path, Path(tmp) / "m.onnx")
            got_onnx = session(onnx.path).run(["logits"], {"x": X})[0]
            c = export_c(path, Path(tmp) / "c")
            got_c = c_method(*c_library(c.directory))(torch.from_numpy(X))
        formats = ",".join(dict.fromkeys(spec["format"] for spec in model.manifest["layers"].values()))
        obj = c.object_bytes or {"text": 0, "rodata": 0}
        print(f"| {path} | {formats} | {onnx.stored_bytes:,} | {onnx.bytes:,} | "
              f"{(got_onnx.argmax(1) == want.argmax(1)).mean():.4%} | {np.abs(got_onnx - want).max():.3g} | "
              f"{obj['text']:,} + {obj['rodata']:,} | {(got_c.argmax(1) == want.argmax(1)).mean():.4%} | "
              f"{np.abs(got_c - want).max():.3g} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
