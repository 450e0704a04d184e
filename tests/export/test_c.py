"""C export: the sources compile with the machine's ``cc`` (C99, -Wall -Werror, and -mavx2 where the CPU has it), give
qwave's logits (integer formats to the bit, within the stated tolerance), and main.c prints the class of each row."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from export_models import INTEGER, edge_rows, matrix

import qwave
from qwave.cli import main
from qwave.export.c import compiler, export_c

CC = compiler()
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (cc or $CC) on this machine")
STRICT = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror"]
INTEGER_RTOL = 2.0**-22  # one float32 rounding of the epilogue, relative to the largest logit (observed: 0)
FLOAT_RTOL = 1e-5  # float formats: another summation order


def has_avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def c_logits(directory: Path, X: np.ndarray, flags: list[str]) -> np.ndarray:
    """Logits of every row from model.c built as a shared library with ``flags`` and called through ctypes."""
    lib = directory / f"model{len(flags)}.so"
    subprocess.run([CC, *flags, "-shared", "-fPIC", str(directory / "model.c"), "-o", str(lib), "-lm"], check=True,
                   capture_output=True, text=True)
    model = ctypes.CDLL(str(lib))
    out = np.zeros((len(X), model_classes(directory)), np.float32)
    pointer = ctypes.c_void_p
    model.qwave_predict_rows(X.ctypes.data_as(pointer), ctypes.c_long(len(X)), out.ctypes.data_as(pointer))
    return out


def model_classes(directory: Path) -> int:
    line = next(line for line in (directory / "model.h").read_text().splitlines() if "#define QWAVE_CLASSES" in line)
    return int(line.split()[-1])


def check_c(models, spec: str, directory: Path, flags: list[str]) -> None:
    path = models.artifact(spec)
    export_c(path, directory, measure=False)
    want = qwave.load(path).logits(models.X)
    got = c_logits(directory, models.X, flags)
    if spec in INTEGER:
        np.testing.assert_allclose(got, want, rtol=0, atol=INTEGER_RTOL * np.abs(want).max())
        assert np.array_equal(got.argmax(1), want.argmax(1))
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=FLOAT_RTOL * np.abs(want).max())
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.999


@pytest.mark.parametrize(("table", "spec"), matrix())
def test_c_export_gives_qwaves_logits_on_every_bundled_row(trained, tmp_path, table, spec):
    check_c(trained[table], spec, tmp_path / "c", STRICT)


@pytest.mark.parametrize("spec", ["int8", "ternary", "int4:group_size=64", "int3"])
def test_c_export_gives_qwaves_logits_at_the_activation_recipes_corners(trained, tmp_path, spec):
    """Rows of all zeros (scale 0), all negative (zero point 127), all positive (zero point 0) and mixed signs into
    the first layer: the zero-point correction gives qwave's logits; the rows are checked to reach those corners."""
    path = trained["fsdd"].artifact(spec)
    X, scale = edge_rows(path)
    model = qwave.load(path)
    export_c(path, tmp_path / "c", measure=False)
    got = c_logits(tmp_path / "c", X, STRICT + (["-mavx2"] if has_avx2() else []))
    want = model.logits(X)
    np.testing.assert_allclose(got, want, rtol=0, atol=INTEGER_RTOL * np.abs(want).max())
    assert np.array_equal(got.argmax(1), want.argmax(1))


@pytest.mark.skipif(not has_avx2(), reason="this CPU has no AVX2")
@pytest.mark.parametrize("spec", ["int8", "ternary", "int4:group_size=64"])
def test_c_export_avx2_path_gives_qwaves_logits(trained, tmp_path, spec):
    """The AVX2 int8 dot product (``-mavx2``) gives the same integer dots as the portable loop."""
    check_c(trained["esc50"], spec, tmp_path / "c", STRICT + ["-mavx2"])


@pytest.mark.parametrize("spec", ["binary", "int8"])
def test_the_c_program_prints_qwaves_class_for_each_row(trained, tmp_path, spec):
    models = trained["fsdd"]
    path = models.artifact(spec)
    assert main(["export", str(path), "--to", "c", "--out", str(tmp_path / "c")]) == 0
    prog = tmp_path / "prog"
    sources = sorted(str(p) for p in (tmp_path / "c").glob("*.c"))
    subprocess.run([CC, "-std=c99", "-O2", *sources, "-lm", "-o", str(prog)], check=True, capture_output=True)
    rows = models.X[:500]
    (tmp_path / "rows.f32").write_bytes(rows.astype("<f4").tobytes())
    printed = subprocess.run([str(prog), str(tmp_path / "rows.f32")], check=True, capture_output=True,
                             text=True).stdout.splitlines()
    assert printed == list(qwave.load(path).predict(rows))


def test_the_c_program_refuses_a_partial_row(trained, tmp_path):
    export_c(trained["fsdd"].artifact("int8"), tmp_path / "c", measure=False)
    prog = tmp_path / "prog"
    subprocess.run([CC, "-std=c99", "-O2", *map(str, (tmp_path / "c").glob("*.c")), "-lm", "-o", str(prog)],
                   check=True, capture_output=True)
    (tmp_path / "rows.f32").write_bytes(trained["fsdd"].X[:2].tobytes()[:-4])
    done = subprocess.run([str(prog), str(tmp_path / "rows.f32")], capture_output=True, text=True)
    assert done.returncode == 1 and "trailing bytes" in done.stderr and len(done.stdout.splitlines()) == 1


def test_c_object_holds_the_packed_bytes(trained, tmp_path):
    """The .o's read-only data is the stored tensors plus little else (class names, the kernels' constants)."""
    if shutil.which("size") is None:
        pytest.skip("binutils size not on this machine")
    done = export_c(trained["esc50"].artifact("binary"), tmp_path / "c")
    assert done.object_bytes is not None
    assert done.stored_bytes <= done.object_bytes["rodata"] <= done.stored_bytes + 2000
