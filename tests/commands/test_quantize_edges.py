"""``qwave quantize`` checks every target before it writes any artifact."""

from __future__ import annotations

from qwave.cli import main


def test_a_bad_int4_target_is_refused_before_int8_is_written(fp32_artifact, tiny_table, tmp_path, capsys):
    out = tmp_path / "q"
    (out / "int4").mkdir(parents=True)
    (out / "int4" / "notes.txt").write_text("not an artifact")
    argv = ["quantize", str(fp32_artifact), "--formats", "8,4", "--calib", str(tiny_table), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "int4" in err and "not a qwave artifact" in err and "\n" not in err
    assert sorted(p.name for p in out.iterdir()) == ["int4"]


def test_a_group_size_of_zero_is_refused_not_ignored(fp32_artifact, tiny_table, tmp_path, capsys):
    out = tmp_path / "q"
    argv = ["quantize", str(fp32_artifact), "--formats", "8,4", "--group-size", "0", "--calib", str(tiny_table),
            "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--group-size" in err and "\n" not in err
    assert not out.exists() or not any(out.iterdir())
