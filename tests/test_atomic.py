"""Atomic writes: the target appears whole or not at all, with ordinary file permissions."""

from __future__ import annotations

import os
import stat

import pytest

from qwave import atomic


def test_written_file_has_umask_permissions_not_mkstemp_0600(tmp_path):
    target = tmp_path / "out.json"
    atomic.write_json(target, {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    atomic.write_text(target, "old")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic.write_with(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_nan_is_written_as_json_null(tmp_path):
    atomic.write_json(tmp_path / "m.json", {"x": float("nan")})
    assert '"x": null' in (tmp_path / "m.json").read_text()
