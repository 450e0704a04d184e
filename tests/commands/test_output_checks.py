"""Every command checks that its outputs can be written before it does the work, and fails in one line; saved
files get the permissions the umask gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwave.cli import main

TRAIN_FAST = ["--hidden", "8", "--epochs", "2", "--batch-size", "32"]


@pytest.fixture
def blocked(tmp_path: Path) -> Path:
    """A path below a regular file: no folder can be made there (this holds even for root, unlike chmod)."""
    (tmp_path / "file").write_text("not a folder")
    return tmp_path / "file" / "out"


def one_error_line(capsys, code: int, *texts: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert all(t in err[0] for t in texts), err[0]
    return err[0]


def test_train_checks_out_before_training(tiny_table, blocked, capsys):
    code = main(["train", "--data", str(tiny_table), "--out", str(blocked / "m"), *TRAIN_FAST])
    one_error_line(capsys, code, "--out", "cannot write there")


def test_train_refuses_a_foreign_out_folder_before_training(tiny_table, tmp_path, capsys, monkeypatch):
    import qwave.commands.train

    monkeypatch.setattr(qwave.commands.train, "fit_fold", lambda *a, **k: pytest.fail("trained before checking"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code = main(["train", "--data", str(tiny_table), "--out", str(tmp_path / "mine"), *TRAIN_FAST])
    one_error_line(capsys, code, "not a qwave artifact")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_quantize_checks_out_first(fp32_artifact, tiny_table, blocked, capsys):
    code = main(["quantize", str(fp32_artifact), "--formats", "8", "--calib", str(tiny_table), "--out", str(blocked)])
    one_error_line(capsys, code, "--out", "cannot write there")


@pytest.mark.parametrize("option", ["--output-csv", "--output-json"])
def test_compare_checks_its_outputs_before_running_the_models(fp32_artifact, tiny_table, blocked, capsys, option):
    code = main(["compare", str(fp32_artifact), str(fp32_artifact), "--data", str(tiny_table),
                 option, str(blocked / "x")])
    one_error_line(capsys, code, option, "cannot write there")


def test_compare_refuses_a_folder_as_the_csv(fp32_artifact, tiny_table, tmp_path, capsys):
    code = main(["compare", str(fp32_artifact), str(fp32_artifact), "--data", str(tiny_table),
                 "--output-csv", str(tmp_path)])
    one_error_line(capsys, code, "is a folder; give a file name")


@pytest.mark.parametrize("option", ["--output", "--plot"])
def test_size_checks_its_outputs(blocked, capsys, option):
    code = main(["size", "--formats", "8", "--hidden", "4", "--in-dim", "8", "--num-classes", "2", option,
                 str(blocked / "sizes.csv")])
    one_error_line(capsys, code, option, "cannot write there")


def test_extract_checks_out_before_reading_any_file(tmp_path, blocked, capsys):
    (tmp_path / "audio" / "dog").mkdir(parents=True)
    code = main(["extract", str(tmp_path / "audio"), "--out", str(blocked / "t.parquet"), "--quiet"])
    one_error_line(capsys, code, "--out", "cannot write there")


def test_bench_checks_output_dir_before_the_first_fold(tiny_table, blocked, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", f"data.path={tiny_table}", f"output_dir={blocked}", "quiet=true", "device=cpu"])
    one_error_line(capsys, stop.value.code, "output_dir", "cannot write there")
