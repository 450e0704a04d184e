"""The exported forms of an artifact as callables for ``qwave speed --exported``: its ONNX export in ONNX Runtime and
its C export built as a shared library (``-O2 -march=native``, so the AVX2 / NEON dot product where the CPU has it)
called through ctypes, one row after another on one thread (what ``qwave_predict_rows`` does)."""

from __future__ import annotations

import ctypes
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from qwave.errors import QwaveError
from qwave.export.c import compiler, export_c
from qwave.export.onnx import export_onnx, session

C_FLAGS = ("-std=c99", "-O2", "-march=native", "-shared", "-fPIC")


def c_library(directory: Path) -> tuple[ctypes.CDLL, int]:
    """model.c of a C export built as a shared library (``C_FLAGS``) and loaded; with its number of classes."""
    lib = directory / "libqwave_model.so"
    subprocess.run([compiler(), *C_FLAGS, str(directory / "model.c"), "-o", str(lib), "-lm"], check=True,
                   capture_output=True)
    header = (directory / "model.h").read_text()
    classes = int(next(line.split()[-1] for line in header.splitlines() if line.startswith("#define QWAVE_CLASSES")))
    return ctypes.CDLL(str(lib)), classes


def c_method(library: ctypes.CDLL, classes: int) -> Callable[[torch.Tensor], np.ndarray]:
    def call(x: torch.Tensor) -> np.ndarray:
        rows = np.ascontiguousarray(x.numpy(), np.float32)
        out = np.empty((rows.shape[0], classes), np.float32)
        library.qwave_predict_rows(rows.ctypes.data_as(ctypes.c_void_p), ctypes.c_long(rows.shape[0]),
                                   out.ctypes.data_as(ctypes.c_void_p))
        return out

    return call


def exported_methods(artifact: str | Path, threads: int) -> tuple[dict[str, Callable], list[str]]:
    """``({"onnx-export": f, "c-export": f}, notes)`` for the artifact; a target that cannot run here is left out
    and a note says why."""
    methods: dict[str, Callable] = {}
    notes: list[str] = []
    name = Path(artifact).name
    with tempfile.TemporaryDirectory(prefix="qwave-export-") as tmp:  # sessions and loaded libraries outlive it
        folder = Path(tmp)
        try:
            done = export_onnx(artifact, folder / "model.onnx")
            s = session(done.path, threads)
            methods["onnx-export"] = lambda x, s=s: s.run(None, {"x": x.numpy()})[0]
            notes.append(f"{name}: onnx-export {done.bytes:,} bytes, ONNX Runtime {threads} thread(s), no spinning")
        except QwaveError as err:
            notes.append(f"{name}: onnx-export not timed: {err}")
        if compiler() is None:
            notes.append(f"{name}: c-export not timed: no C compiler (cc or $CC)")
            return methods, notes
        c = export_c(artifact, folder / "c")
        methods["c-export"] = c_method(*c_library(c.directory))
    obj = c.object_bytes
    size = "" if obj is None else f", model.o text {obj['text']:,} + rodata {obj['rodata']:,} bytes"
    notes.append(f"{name}: c-export built with cc {' '.join(C_FLAGS)}, one thread{size}")
    return methods, notes
