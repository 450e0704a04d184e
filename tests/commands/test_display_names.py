"""Every command's table names the models as people say them (``tables.model_label``: ``int4 (W4A8)``, not ``4``),
run on a bundled table, while the config keys and the machine-readable outputs keep the format names."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from qwave.cli import main
from qwave.tables import model_label

KEYS = ["8", "4", "bitnet", "1"]
LABELS = {"8": "int8", "4": "int4 (W4A8)", "bitnet": "ternary (W1.58A8)", "1": "binary"}
DIRS = {"8": "int8", "4": "int4", "bitnet": "ternary", "1": "binary"}  # what quantize names the artifacts
DATA = "bundled:fsdd"


def cells(out: str, first: str) -> list[list[str]]:
    """The cells of the printed table rows that start with ``first`` (columns are two or more spaces apart)."""
    return [re.split(r"\s{2,}", line.strip()) for line in out.splitlines() if line.strip().startswith(first)]


def test_model_label_names_every_default_format_as_people_say_it():
    assert {key: model_label(key) for key in KEYS} == LABELS


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """An FP32 artifact trained briefly on a bundled table and its int8, int4, ternary and binary versions."""
    root = tmp_path_factory.mktemp("display")
    fp32 = root / "fp32"
    assert main(["train", "--data", DATA, "--out", str(fp32), "--test-fold", "1", "--hidden", "16", "--epochs", "2",
                 "--patience", "2"]) == 0
    assert main(["quantize", str(fp32), "--formats", ",".join(KEYS), "--calib", DATA, "--out", str(root / "q")]) == 0
    return root


def test_size_table_and_plot_name_the_formats(tmp_path, capsys):
    out_csv = tmp_path / "sizes.csv"
    assert main(["size", "--formats", ",".join(KEYS), "--output", str(out_csv), "--plot", str(tmp_path / "s.png")]) == 0
    printed = [row[1] for row in cells(capsys.readouterr().out, "mlp")]
    assert printed == [LABELS[k] for k in KEYS]
    assert [r["format"] for r in csv.DictReader(open(out_csv))] == [DIRS[k] for k in KEYS]  # the CSV keeps keys


def test_speed_tables_name_the_formats(tmp_path, capsys):
    assert main(["speed", "--formats", ",".join(KEYS), "--batch-sizes", "1", "--repeats", "2", "--warmup", "1",
                 "--max-seconds", "0.1", "--threads", "1", "--output-dir", str(tmp_path), "--plot"]) == 0
    out = capsys.readouterr().out
    methods = [row[1] for row in cells(out, "reference-mlp")]  # the latency table, then the memory table
    for key in KEYS:
        assert f"qwave {LABELS[key]}" in methods and f"qwave {LABELS[key]} fused" in methods
        assert f"qwave-{key}" not in out
    audit = [row[0] for row in cells(out, "qwave ") if len(row) > 3]  # not the heading line
    assert sorted(set(audit)) == sorted(f"qwave {LABELS[k]}" for k in KEYS)
    rows = list(csv.DictReader(open(tmp_path / "speed.csv")))
    assert {r["method"]: r["label"] for r in rows if r["method"].startswith("qwave-") and "fused" not in r["method"]} \
        == {f"qwave-{k}": f"qwave {LABELS[k]}" for k in KEYS}


def test_compare_and_compare_all_name_the_formats(models, tmp_path, capsys):
    fast = ["--data", DATA, "--split", "test", "--num-samples", "60", "--repeats", "2", "--warmup", "1"]
    js = tmp_path / "c.json"
    assert main(["compare", str(models / "fp32"), str(models / "q" / "int4"), *fast, "--output-json", str(js)]) == 0
    assert "(int4 (W4A8)) on 60 rows" in capsys.readouterr().out
    assert json.loads(js.read_text())["format"] == "int4"
    assert main(["compare-all", str(models / "fp32"), str(models / "q"), *fast, "--output-dir", str(tmp_path)]) == 0
    printed = cells(capsys.readouterr().out, str(models / "q"))
    assert sorted(row[1] for row in printed) == sorted(LABELS.values())
    table = list(csv.DictReader(open(tmp_path / "compare_all.csv")))
    assert {r["format"]: r["label"] for r in table} == {DIRS[k]: LABELS[k] for k in KEYS}
