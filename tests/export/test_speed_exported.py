"""``qwave speed --artifact A --exported`` times the ONNX and C exports beside qwave's own kernels."""

from __future__ import annotations

import pytest

from qwave.cli import main
from qwave.export.c import compiler


def test_speed_exported_times_both_exports_beside_qwave(trained, capsys):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    if compiler() is None:
        pytest.skip("no C compiler (cc or $CC) on this machine")
    path = trained["fsdd"].artifact("binary")
    argv = ["speed", "--artifact", str(path), "--exported", "--no-reference", "--batch-sizes", "1,8", "--threads", "1",
            "--warmup", "1", "--repeats", "3", "--max-seconds", "0.2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [row for line in out.splitlines() if (row := line.split())[:1] == [path.name] and row[2] == "hardtanh"]
    assert {"qwave-artifact", "onnx-export", "c-export"} <= {row[1] for row in rows}
    assert all(float(row[3]) > 0 and float(row[4]) > 0 for row in rows)  # p50 ms at batch 1 and 8
    assert "c-export built with cc" in out
