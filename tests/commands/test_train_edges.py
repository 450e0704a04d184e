"""``qwave train`` checks every numeric option before any work: one line naming the option, nothing written."""

from __future__ import annotations

import pytest

from qwave.cli import main


@pytest.mark.parametrize("option, value", [("--lr", "nan"), ("--lr", "-1"), ("--hidden", "-5"),
                                           ("--dropout", "-0.5"), ("--dropout", "1"), ("--seed", "-1"),
                                           ("--seed", str(2**40)), ("--val-fraction", "0")])
def test_a_bad_option_is_one_line_naming_it_and_nothing_is_written(tiny_table, tmp_path, capsys, option, value):
    out = tmp_path / "m"
    assert main(["train", "--data", str(tiny_table), "--out", str(out), "--epochs", "1", option, value]) == 2
    err = capsys.readouterr().err.strip()
    assert option.lstrip("-").replace("-", "_") in err.replace("-", "_") and "\n" not in err, err
    assert not out.exists()
