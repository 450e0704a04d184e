"""``qwave size``: the calculator table, CSV and plot outputs, saved artifacts, and one-line option errors."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from qwave import artifact
from qwave.cli import main
from qwave.commands.size import run
from qwave.nn import MLPClassifier, pack_model, quantize_model


def test_table_csv_and_plot_for_a_small_mlp(tmp_path, capsys):
    out, png = tmp_path / "sizes.csv", tmp_path / "sizes.png"
    argv = ["--in-dim", "64", "--num-classes", "5", "--hidden", "32", "--formats", "fp32,4,1", "--output", str(out)]
    assert run([*argv, "--plot", str(png), "--layer-formats", "1,8", "--per-layer"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["format"] for r in rows] == ["fp32", "int4", "binary", "mixed[binary,int8]"]
    norm, bias = 2 * 64 * 4, (32 + 5) * 4
    expected = {
        "fp32": norm + bias + 4 * (64 * 32 + 32 * 5),
        "int4": norm + bias + 32 * 32 + 5 * 16 + 2 * 37,
        "binary": norm + bias + 8 * 37 + 2 * 37,
        "mixed[binary,int8]": norm + bias + 8 * 32 + 2 * 32 + 5 * 32 + 2 * 5,
    }
    for row in rows:
        stored = int(row["stored_bytes"])
        assert stored == expected[row["format"]]
        assert math.isclose(float(row["bits_per_weight"]), stored * 8 / (64 * 32 + 32 * 5))
        assert math.isclose(float(row["reduction_vs_fp32"]), expected["fp32"] / stored)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "mixed[binary,int8]" in printed and "per layer" in printed and "body.0" in printed


def test_artifact_paths_report_stored_and_file_bytes(tmp_path, capsys):
    torch.manual_seed(0)
    model = pack_model(quantize_model(MLPClassifier(20, 3, (8,)), "2"))
    directory = artifact.save(model, tmp_path / "a")
    assert run([str(directory), "--output", str(tmp_path / "a.csv")]) == 0
    (row,) = list(csv.DictReader((tmp_path / "a.csv").open()))
    stored = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    file_bytes = (directory / "model.safetensors").stat().st_size
    assert int(row["stored_bytes"]) == stored
    assert int(row["file_bytes"]) == file_bytes == 8 + int(row["header_bytes"]) + stored


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--hidden", "8", "--formats", "4,int9"], "--formats/--layer-formats: unknown quantization format 'int9'"),
        (["--hidden", "8,8", "--layer-formats", "1,8"], "--layer-formats has 2 entries"),
        (["--hidden", "8", "--models", "resnet"], "--models: unknown model 'resnet'"),
    ],
)
def test_bad_values_give_one_line_errors_naming_the_option(argv, message, capsys):
    assert main(["size", "--in-dim", "16", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv", [["--hidden", "64,x"], ["--group-size", "0"], ["--in-dim", "-3"]])
def test_malformed_numbers_are_rejected_by_the_parser_naming_the_option(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(argv)
    assert exit_info.value.code == 2
    assert argv[0] in capsys.readouterr().err.splitlines()[-1]
