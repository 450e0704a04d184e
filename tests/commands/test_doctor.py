"""``qwave doctor``: the report's content, JSON output, self-checks, and what it says with fast kernels off."""

from __future__ import annotations

import json

from qwave import kernels
from qwave.commands import doctor


def test_doctor_json_has_versions_cpu_and_passing_self_checks(capsys):
    assert doctor.run(["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["versions"]["torch"] and data["versions"]["python"]
    assert "avx2" in data["cpu"]["flags"] and "neon" in data["cpu"]["flags"]
    names = {c["format"] for c in data["self_checks"]}
    assert {"int8", "binary", "qesc", "int4", "fp16"} <= names
    assert all(c["ok"] for c in data["self_checks"])


def test_doctor_says_when_fast_kernels_are_off(capsys):
    previous = kernels.set_fast_kernels(False)
    try:
        assert doctor.run([]) == 0
    finally:
        kernels.set_fast_kernels(previous)
    out = capsys.readouterr().out
    assert "fast kernels: OFF" in out
    assert "WARNING: no fast kernel" in out


def test_doctor_exits_nonzero_when_a_self_check_fails(monkeypatch, capsys):
    real = doctor.self_check

    def broken(name, device="cpu"):
        result = real(name, device)
        return {**result, "ok": False} if name == "int8" else result

    monkeypatch.setattr(doctor, "self_check", broken)
    assert doctor.run([]) == 1
    assert "FAILED" in capsys.readouterr().out
