"""``qwave speed --artifact A --exported`` times the ONNX and C exports beside qwave's own kernels."""

from __future__ import annotations

import csv
import tempfile

import pytest

from qwave.cli import main
from qwave.export.c import compiler


def test_speed_exported_times_both_exports_beside_qwave(trained, capsys, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    if compiler() is None:
        pytest.skip("no C compiler (cc or $CC) on this machine")
    path = trained["fsdd"].artifact("binary")
    argv = ["speed", "--artifact", str(path), "--exported", "--no-reference", "--batch-sizes", "1,8", "--threads", "1",
            "--warmup", "1", "--repeats", "3", "--max-seconds", "0.2", "--output-dir", str(tmp_path)]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert main(argv) == 0
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("qwave-")]  # exports built, loaded, removed
    out = capsys.readouterr().out
    with open(tmp_path / "speed.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["model"] == path.name and r["activation"] == "hardtanh"]
    assert {"qwave-artifact", "onnx-export", "c-export"} <= {r["method"] for r in rows}
    assert {(r["method"], r["batch"]) for r in rows} >= {(m, b) for m in ("onnx-export", "c-export") for b in "18"}
    assert all(float(r["p50_ms"]) > 0 for r in rows)
    assert "c-export built with cc" in out
