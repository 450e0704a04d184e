"""report.md and pareto.png of a tag: the table a person reads first and the accuracy/size/latency picture."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from PIL import Image

from qwave.bench.config import BUNDLED_TABLES, BenchConfig, bundled_table, table_path
from qwave.bench.overview import pareto_front
from qwave.bench.runner import load_dataset, run_benchmark


def test_pareto_front_keeps_the_points_no_other_beats_on_both_axes() -> None:
    points = [(100, 0.50), (10, 0.40), (50, 0.55), (20, 0.30), (200, 0.55), (5, 0.10)]
    # by hand: 5 (smallest), 10 (better than 5), 50 (better than everything smaller), nothing larger is better
    assert pareto_front(points) == [5, 1, 2]


def test_run_writes_a_report_row_per_model_and_the_pareto_picture(fast_config) -> None:
    fast_config.models = ["fp32", "8", "1"]
    run_benchmark(fast_config)
    root = Path(fast_config.output_dir) / "t"
    summary = pd.read_csv(root / "summary.csv").set_index("model")
    lines = (root / "report.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("| ") and not line.startswith("| model")]
    assert len(table) == 3 and "pareto.png" in "\n".join(lines)
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        row = summary.loc[cells[0]]
        assert float(cells[3]) == round(row["macro_f1_mean"], 4)
        assert float(cells[6]) == round(row["stored_kb"], 1)
        assert float(cells[8]) == round(row["resident_kb"], 1)
        assert abs(float(cells[10].rstrip("x")) - row["speed_vs_fp32"]) < 0.006  # measured in each job (test_measure)
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
