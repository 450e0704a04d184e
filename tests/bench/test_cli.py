"""The ``qwave`` dispatcher and ``qwave bench`` through Hydra: overrides, outputs, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qwave.cli import SUBCOMMANDS, main

# the jobs run the timing path without its 0.5 s floor (see the fixture)
pytestmark = pytest.mark.usefixtures("no_timing_floor")

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


@pytest.fixture
def wine_table(tmp_path) -> Path:
    """A plain CSV as a new user brings it: a label named ``cultivar`` and numeric columns, no fold, name or group."""
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    frame = pd.DataFrame(rng.normal(size=(60, 5)) + y[:, None], columns=["alcohol", "ash", "hue", "proline", "mg"])
    frame.insert(0, "cultivar", [f"c{c}" for c in y])
    path = tmp_path / "wine.csv"
    frame.to_csv(path, index=False)
    return path


def test_a_plain_user_table_runs_with_only_data_path_and_label(wine_table, tmp_path, capsys):
    args = ["bench", f"data.path={wine_table}", "data.label=cultivar", "model.hidden=[8]", "train.epochs=2",
            f"output_dir={tmp_path}", "tag=wine", "quiet=true", "plots=false", "device=cpu", "save_artifacts=false"]
    assert main(args) == 0
    folds = sorted(p.name for p in (tmp_path / "wine" / "fp32").glob("fold_*"))
    assert folds == [f"fold_{k}" for k in range(1, 6)]  # cv.n_folds=5 stratified folds
    predictions = pd.read_csv(tmp_path / "wine" / "fp32" / "fold_1" / "predictions.csv")
    assert set(predictions["id"]) <= {i for i in range(60)}


@pytest.mark.parametrize("role, column", [("fold", "fold"), ("id", "name"), ("group", "group")])
def test_a_column_named_explicitly_on_the_command_line_must_exist(wine_table, tmp_path, capsys, role, column):
    with pytest.raises(SystemExit) as stop:
        main(["bench", f"data.path={wine_table}", "data.label=cultivar", f"data.{role}={column}",
              f"output_dir={tmp_path}", "quiet=true", "device=cpu"])
    assert stop.value.code == 2
    assert f"{role} column {column!r} not found" in capsys.readouterr().err


@pytest.mark.parametrize("override, hint", [
    ("trian.epochs=3", "did you mean train.epochs?"),
    ("+trian.epochs=3", "did you mean train.epochs?"),  # Hydra would add the key and the run would ignore it
    ("++model.hiden=[8]", "did you mean model.hidden?"),
    ("moe.curiosity.alfa=0.5", "did you mean moe.curiosity.alpha?"),
])
def test_an_unknown_key_is_refused_with_the_closest_known_key(override, hint, tmp_path, capsys):
    assert main(["bench", override, f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qwave bench: error:") and hint in err[0]
    assert not any(tmp_path.iterdir()), "nothing may run"


@pytest.mark.parametrize("argv, text", [
    (["train.epochs=abc"], "could not be converted to Integer"),
    (["-m", "seed=0,1", "train.epochs=2,abc"], "could not be converted to Integer"),
    (["cv.folds=[1"], "cannot read the override"),
])
def test_hydra_errors_exit_2_with_one_line_like_qwaves_own(argv, text, tmp_path, capsys):
    assert main(["bench", *argv, f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and text in err[0]


def test_an_unquoted_non_ascii_value_gets_a_hint_to_quote_it(tmp_path, capsys):
    assert main(["bench", "tag=café", f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "non-ASCII" in err and "'tag=\"café\"'" in err


def test_a_closed_pipe_ends_the_output_quietly():
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "qwave.cli", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before qwave writes (as with `qwave --help | head -1`)
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Traceback" not in err and "BrokenPipe" not in err
