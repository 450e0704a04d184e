"""report.md and pareto.png of a tag: the table a person reads first and the accuracy/size/latency picture."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from qwave.bench.config import BenchConfig
from qwave.bench.overview import pareto_front, plot_pareto
from qwave.bench.runner import load_dataset, run_benchmark
from qwave.data.source import BUNDLED_TABLES, bundled_table, table_path
from qwave.tables import model_label

# the jobs run the timing path without its 0.5 s floor (see the fixture)
pytestmark = pytest.mark.usefixtures("no_timing_floor")


def test_pareto_front_keeps_the_points_no_other_beats_on_both_axes() -> None:
    points = [(100, 0.50), (10, 0.40), (50, 0.55), (20, 0.30), (200, 0.55), (5, 0.10)]
    # by hand: 5 (smallest), 10 (better than 5), 50 (better than everything smaller), nothing larger is better
    assert pareto_front(points) == [5, 1, 2]


def test_run_writes_a_report_row_per_model_and_the_pareto_picture(fast_config) -> None:
    fast_config.models = ["fp32", "8", "1"]
    run_benchmark(fast_config)
    root = Path(fast_config.output_dir) / "t"
    summary = pd.read_csv(root / "summary.csv").set_index("label")
    lines = (root / "report.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("| ") and not line.startswith("| model")]
    assert len(table) == 3 and "pareto.png" in "\n".join(lines)
    assert sorted(line.split("|")[1].strip() for line in table) == ["binary", "fp32", "int8"]  # as people say them
    header = [c.strip() for c in next(line for line in lines if line.startswith("| model")).strip("|").split("|")]
    for line in table:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        row = summary.loc[cells["model"]]
        assert float(cells["macro-F1"]) == round(row["macro_f1_mean"], 4)
        assert float(cells["± std"]) == round(row["macro_f1_std"], 4)
        assert float(cells["stored KB"]) == round(row["stored_kb"], 1)
        assert float(cells["resident KB"]) == round(row["resident_kb"], 1)
        assert float(cells["train s"]) == round(row["train_s_mean"], 1)
        # measured in each job (test_measure)
        assert abs(float(cells["speed vs FP32"].rstrip("x")) - row["speed_vs_fp32"]) < 0.006
    with Image.open(root / "pareto.png") as picture:
        assert picture.format == "PNG" and picture.width > 800 and picture.height > 300


def test_the_default_table_is_the_bundled_esc50_one_and_the_default_models_span_the_formats() -> None:
    cfg = BenchConfig()
    assert table_path(cfg.data.path) == bundled_table() and bundled_table().endswith(BUNDLED_TABLES["esc50"])
    assert cfg.models == ["fp32", "8", "4", "bitnet", "1"]
    dataset = load_dataset(cfg)
    assert dataset.X.shape == (1200, 1280) and dataset.n_classes == 50 and sorted(set(dataset.fold)) == [1, 2, 3]
    sidecar = json.loads(Path(bundled_table() + ".json").read_text())
    assert sidecar["backbone"]["spec"] == "efficientnet-lite0"
    cfg.data.path, cfg.data.label = "bundled:fsdd", "label"
    fsdd = load_dataset(cfg)
    assert fsdd.X.shape == (3000, 288) and fsdd.n_classes == 10 and sorted(set(fsdd.fold)) == [1, 2, 3, 4, 5, 6]


def test_models_are_named_as_people_say_them() -> None:
    expected = {"fp32": "fp32", "16": "fp16", "8": "int8", "4": "int4 (W4A8)", "2": "int2 (W2A8)",
                "bitnet": "ternary (W1.58A8)", "1": "binary", "qesc": "qesc", "ptq8": "int8 PTQ",
                "1-1-8": "binary-binary-int8", "moe": "moe"}
    assert {key: model_label(key) for key in expected} == expected
    assert model_label("4", weight_only=True) == "int4 (W4, float activations)"
    assert model_label("8", weight_only=True) == "int8 (W8, float activations)"


def test_the_pareto_plot_labels_every_point_and_only_the_decades_of_its_log_axis() -> None:
    rows = [{"model": m, "label": model_label(m), "stored_bytes": b, "macro_f1_mean": f, "macro_f1_ci95": 0.01,
             "infer_ms_per_sample": 0.01 * (i + 1), "infer_ms_std": 0.001}
            for i, (m, b, f) in enumerate([("fp32", 2_000_000, 0.6), ("8", 500_000, 0.6), ("4", 260_000, 0.59),
                                           ("bitnet", 110_000, 0.58), ("1", 70_000, 0.55)])]
    fig = plot_pareto(rows, "t")
    fig.canvas.draw()
    size_axis = fig.axes[0]
    labels = sorted(t.get_text() for t in size_axis.texts)
    assert labels == sorted(model_label(m) for m in ("fp32", "8", "4", "bitnet", "1"))
    assert all(t.get_text() == "" for t in size_axis.get_xticklabels(minor=True))
    shown = [t.get_text() for t in size_axis.get_xticklabels() if t.get_text()]
    assert shown and all(text.endswith("B") for text in shown)  # 100 kB, 1 MB: one label per decade
