"""The ``qwave`` dispatcher and ``qwave bench`` through Hydra: overrides, outputs, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwave.cli import SUBCOMMANDS, main


def test_help_lists_every_subcommand_with_examples(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SUBCOMMANDS) and "qwave bench data.path=" in out


def test_unknown_subcommand_is_a_one_line_error(capsys):
    assert main(["benchh"]) == 2
    assert "unknown command 'benchh'" in capsys.readouterr().err


def bench_args(table: Path, out: Path, *extra: str) -> list[str]:
    return [
        "bench", f"data.path={table}", "data.group=clip", "cv.folds=official", "model.hidden=[8]",
        "train.epochs=2", "train.batch_size=16", f"output_dir={out}", "tag=cli", "quiet=true", "plots=false",
        "device=cpu", *extra,
    ]


def test_bench_overrides_reach_the_run_and_print_the_summary(separable_table, tmp_path, capsys):
    assert main(bench_args(separable_table, tmp_path)) == 0
    metrics = json.loads((tmp_path / "cli" / "fp32" / "fold_2" / "metrics.json").read_text())
    assert metrics["fold"] == 2 and metrics["n_test"] == 30 and metrics["train"]["epochs_run"] == 2
    assert (tmp_path / "cli" / "summary.csv").is_file()
    assert "fp32" in capsys.readouterr().out


def test_bench_bad_column_is_one_clear_line(separable_table, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(bench_args(separable_table, tmp_path, "data.label=klass"))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label column 'klass' not found" in err[0] and str(separable_table) in err[0]
