"""``qwave doctor``: the report's content, JSON output, self-checks, and what it says with fast kernels off."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

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


def test_doctor_checks_that_each_invertible_kernel_gives_the_stored_bits_back(monkeypatch, capsys):
    if not kernels.FAST_KERNELS:
        pytest.skip(f"fast kernels unavailable: {kernels.REASON}")
    data = doctor.report()
    inverses = {c["format"]: c["inverse_exact"] for c in data["self_checks"]}
    assert all(inverses[f] is True for f in ("int8", "int4", "int2", "ternary", "binary", "qesc", "fp16", "bf16"))
    assert inverses["fp32"] is None  # its float copy is the stored tensor: nothing to invert
    from qwave.formats import get_format

    kernel = kernels.kernel_for(get_format("int8"), "cpu")
    wrong = dataclasses.replace(kernel, unprepare=lambda fmt, state: {**kernel.unprepare(fmt, state),
                                                                       "scale": torch.zeros(1, dtype=torch.float16)})
    monkeypatch.setattr(kernels, "kernel_for", lambda fmt, device="cpu": wrong if fmt.name == "int8" else None)
    check = doctor.self_check("int8")
    assert check["inverse_exact"] is False and not check["ok"]


def test_formats_whose_kernels_share_compiled_code_are_one_family():
    if not kernels.FAST_KERNELS:
        pytest.skip(f"fast kernels unavailable: {kernels.REASON}")
    families = doctor.kernel_families(["int8", "binary", "int4", "fp16", "qesc", "ternary", "bf16"])
    family = {name: i for i, names in enumerate(families) for name in names}
    assert family["int8"] == family["int4"] == family["ternary"]  # the W·A8 drivers
    assert family["binary"] == family["qesc"] and family["fp16"] == family["bf16"]
    assert len({family["int8"], family["binary"], family["fp16"]}) == 3
    assert families[0] == ["int8", "int4", "ternary"]  # largest first: this process checks it


def test_helper_processes_check_the_other_families_and_every_check_still_runs_here(monkeypatch):
    if not kernels.FAST_KERNELS:
        pytest.skip(f"fast kernels unavailable: {kernels.REASON}")
    started, here = [], []

    class Helper:
        def __init__(self, command, **kw):
            started.append(command[3:])  # [python, -c, code, *formats]

        def wait(self):
            return 0

    monkeypatch.setattr(doctor.subprocess, "Popen", Helper)
    monkeypatch.setattr(doctor, "self_check", lambda name, device="cpu": here.append(name) or {"format": name})
    names = ["fp32", "fp16", "bf16", "int8", "int4", "binary", "ternary", "qesc"]  # W·A8: the largest family
    checks = doctor.cpu_checks(names, jobs=2)
    assert [c["format"] for c in checks] == names
    assert sorted(here) == sorted(names)  # every result is this process's own check
    assert len(started) == 1 and sorted(started[0]) == ["bf16", "binary", "fp16", "fp32", "qesc"]
    started.clear()
    doctor.cpu_checks(names, jobs=3)
    assert len(started) == 2 and sorted(n for s in started for n in s) == ["bf16", "binary", "fp16", "fp32", "qesc"]
    started.clear()
    doctor.cpu_checks(names, jobs=1)
    assert started == []
    previous = kernels.set_fast_kernels(False)
    try:
        doctor.cpu_checks(names, jobs=2)
    finally:
        kernels.set_fast_kernels(previous)
    assert started == []  # nothing to compile: no helpers
