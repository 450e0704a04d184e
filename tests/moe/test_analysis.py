"""Uncertainty usefulness metrics against brute force, and the per-fold curiosity files of a fixed MoE."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from qwave.moe.analysis import error_detection_auroc, evaluate_moe, selective_accuracy, switch_points
from qwave.moe.config import CuriosityConfig
from qwave.moe.model import MoEClassifier, quantize_moe
from qwave.nn.surgery import pack_model


def test_error_auroc_is_the_probability_an_error_is_more_uncertain_than_a_correct_prediction():
    rng = np.random.default_rng(0)
    u = rng.integers(0, 5, size=60).astype(float)  # ties on purpose
    correct = rng.random(60) < 0.6
    pairs = list(itertools.product(u[~correct], u[correct]))
    expected = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])
    assert error_detection_auroc(u, correct) == pytest.approx(expected)
    assert error_detection_auroc(u, np.ones(60, dtype=bool)) is None


def test_selective_accuracy_keeps_the_least_uncertain_fraction():
    u = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0])
    correct = np.array([0, 1, 1, 1, 0, 1, 0, 0, 1, 1], dtype=bool)
    for coverage in (0.1, 0.5, 0.8, 0.9, 1.0):
        keep = int(np.ceil(coverage * 10))
        kept = sorted(range(10), key=lambda i: (u[i], i))[:keep]
        assert selective_accuracy(u, correct, coverage) == pytest.approx(correct[kept].mean())


def test_perfectly_informative_uncertainty_scores_auroc_one_and_full_selective_accuracy():
    correct = np.array([True] * 8 + [False] * 2)
    u = np.where(correct, 0.1, 0.9)
    assert error_detection_auroc(u, correct) == 1.0
    assert selective_accuracy(u, correct, 0.8) == 1.0


def test_evaluate_writes_consistent_curiosity_files(tmp_path):
    torch.manual_seed(0)
    model = MoEClassifier(6, 3, ["bitnet", "4", "8"], hidden=[8], top_k=2, router_dropout=0.4,
                          curiosity=CuriosityConfig(enabled=True, alpha=1.0, mc_samples=6), mask_seed=1)
    packed = pack_model(quantize_moe(model))
    X = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    y = np.arange(50) % 3
    ids = np.array([f"s{i}" for i in range(50)])
    extra = evaluate_moe(packed, X, y, ids, ["a", "b", "c"], tmp_path)
    for name in ("curiosity_values.json", "curiosity_histogram.png", "curiosity_per_class.png"):
        assert (tmp_path / name).is_file()
    values = json.loads((tmp_path / "curiosity_values.json").read_text())
    samples = values["samples"]
    assert len(samples) == 50 and values["mc_samples"] == 6 and values["routing_uses_uncertainty"]
    pred = packed(torch.as_tensor(X)).argmax(1).numpy()
    assert [s["prediction"] for s in samples] == [["a", "b", "c"][p] for p in pred]
    assert all(len(s["experts"]) == 2 and s["expert"] in s["experts"] for s in samples)
    assert all(s["uncertainty"] == s["mutual_info"] >= 0 for s in samples)
    moe = extra["moe"]
    rows = moe["experts"]
    assert sum(r["assignments"] for r in rows) == 2 * 50
    assert sum(r["first_choice"] for r in rows) == 50
    assert sum(r["usage_fraction"] for r in rows) == pytest.approx(2.0)
    accuracy = np.mean(pred == y)
    assert moe["uncertainty"]["accuracy"] == pytest.approx(accuracy)
    assert set(moe["uncertainty"]["error_auroc"]) == {"mutual_info", "variance", "router_max_softmax",
                                                      "classifier_max_softmax"}
    assert moe["stored_bytes"] > extra["active_bytes"] > moe["router_bytes"]
    assert moe["router_passes"] == 6
    assert moe["router_format"] == "int8"
    router_tensors = sum(t.nbytes for k, t in packed.state_dict().items() if k.startswith("router."))
    assert moe["router_bytes"] == router_tensors
    assert {packed.router.fc1.fmt.name, packed.router.fc2.fmt.name} == {"int8"}
    for key in ("routes_changed_by_curiosity", "routes_changed_vs_constant_u", "routes_changed_by_constant_u"):
        assert 0.0 <= moe[key] <= 1.0 and values[key] == moe[key]


def test_switch_points_are_where_the_typical_samples_first_choice_changes_in_closed_form():
    model = MoEClassifier(6, 3, ["binary", "int8"], hidden=[8], router_dropout=0.4,
                          curiosity=CuriosityConfig(enabled=True, alpha=2.0, mc_samples=4))
    model.u_mean.fill_(0.1)
    model.u_std.fill_(0.05)
    base = torch.tensor([[0.7, 0.3], [0.8, 0.2]])  # geometric mean: log p = mean of the logs
    a = base.log().mean(0)
    # ranks -1 (binary), +1 (int8): a0 - alpha s = a1 + alpha s  ->  s* = (a0 - a1) / (2 alpha)
    expected = 0.1 + 0.05 * float(a[0] - a[1]) / (2 * 2.0)
    points = switch_points(model, base, 0.0, 1.0, steps=100001)
    assert len(points) == 1 and points[0]["from"] == "binary" and points[0]["to"] == "int8"
    assert points[0]["u"] == pytest.approx(expected, abs=2e-5)
    assert switch_points(model, base, 0.0, expected - 0.01) == []
    plain = MoEClassifier(6, 3, ["binary", "int8"], hidden=[8])
    assert switch_points(plain, base, 0.0, 1.0) == []


def test_a_plain_moe_reports_no_curiosity_ablation_and_no_switch(tmp_path):
    torch.manual_seed(0)
    packed = pack_model(quantize_moe(MoEClassifier(6, 3, ["bitnet", "8"], hidden=[8])))
    X = np.random.default_rng(1).normal(size=(30, 6)).astype(np.float32)
    extra = evaluate_moe(packed, X, np.arange(30) % 3, np.arange(30).astype(str), ["a", "b", "c"], tmp_path,
                         plots=False)
    values = json.loads((tmp_path / "curiosity_values.json").read_text())
    assert values["switch_points"] == [] and not values["routing_uses_uncertainty"]
    assert extra["moe"]["routes_changed_by_curiosity"] is None
    assert not (tmp_path / "curiosity_histogram.png").exists()
