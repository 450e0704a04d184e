"""Compare metrics against values computed by hand on tiny logits."""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from qwave import kernels
from qwave.eval.compare import Rows, compare_logits, compare_models, sample_logit_metrics, time_pair
from qwave.nn import MLPClassifier, pack_model, quantize_model

A = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 3.0], [0.0, 0.0, 1.0]])
B = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 3.0], [0.0, 2.0, 1.0]])
NAMES = ["a", "b", "c"]


def test_logit_metrics_match_hand_values():
    per = sample_logit_metrics(A, B)
    # row 0: diff (1, 0, 0); row 1: (-1, 1, 0); row 2: 0; row 3: (0, -2, 0)
    np.testing.assert_allclose(per["mse"], [1 / 3, 2 / 3, 0, 4 / 3])
    np.testing.assert_allclose(per["mae"], [1 / 3, 2 / 3, 0, 2 / 3])
    np.testing.assert_allclose(per["max_abs"], [1, 1, 0, 2])
    np.testing.assert_allclose(per["cosine"], [1.0, 0.0, 1.0, 1 / math.sqrt(5)])
    p = np.exp([2.0, 0, 0]) / np.exp([2.0, 0, 0]).sum()
    q = np.exp([1.0, 0, 0]) / np.exp([1.0, 0, 0]).sum()
    assert per["kl"][0] == pytest.approx(float((p * np.log(p / q)).sum()))
    assert per["kl"][2] == pytest.approx(0.0, abs=1e-15)
    assert (per["kl"] >= -1e-15).all()


def test_labelled_summary_agreement_drops_and_per_class():
    y = np.array([0, 1, 2, 2])
    result = compare_logits(A, B, class_names=NAMES, y=y, ids=["w", "x", "y", "z"])
    s = result.summary
    # predictions: original 0 1 2 2 (all right), quantized 0 0 2 1 (two right)
    assert s["predictions"]["agreement"] == 0.5
    acc = s["predictions"]["accuracy"]
    assert (acc["original"], acc["quantized"], acc["drop"], acc["drop_rel"]) == (1.0, 0.5, 0.5, 0.5)
    f1 = s["predictions"]["macro_f1"]
    # quantized F1: class a 2/3 (p 1/2, r 1), class b 0, class c 2/3 (p 1, r 1/2)
    assert f1["quantized"] == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)
    assert f1["drop"] == pytest.approx(1 - 4 / 9)
    pc = s["predictions"]["per_class"]
    assert pc["b"]["recall_drop"] == 1.0 and pc["c"]["recall_drop"] == 0.5 and pc["a"]["recall_drop"] == 0.0
    assert pc["c"]["support"] == 2
    assert s["logits"]["max_abs"] == 2.0
    assert s["logits"]["mse"] == pytest.approx((1 / 3 + 2 / 3 + 0 + 4 / 3) / 4)
    frame = result.per_sample
    assert list(frame["id"]) == ["w", "x", "y", "z"]
    assert list(frame["pred_quantized"]) == ["a", "a", "c", "b"] and list(frame["label"]) == ["a", "b", "c", "c"]


def test_label_free_mode_reports_only_label_free_metrics():
    s = compare_logits(A, B, class_names=NAMES).summary
    assert s["labelled"] is False
    assert s["predictions"] == {"agreement": 0.5}
    assert "label" not in compare_logits(A, B, class_names=NAMES).per_sample


def test_sequence_comparison_decodes_both_and_reports_error_rate_increase():
    def frames(path):
        z = np.zeros((len(path), 4))
        z[np.arange(len(path)), path] = 5.0
        return z

    orig = np.stack([frames([1, 1, 0, 2, 0, 3]), frames([2, 0, 0, 2, 2, 0])])
    quant = np.stack([frames([1, 0, 1, 2, 0, 3]), frames([2, 0, 0, 0, 2, 0])])
    refs = [[1, 2, 3], [2, 2]]
    result = compare_logits(orig, quant, class_names=["_", "a", "b", "c"], references=refs)
    seq = result.summary["sequence"]
    # decodes: original [1 2 3], [2 2]; quantized [1 1 2 3], [2 2]
    assert result.per_sample["decoded_quantized"].tolist() == ["1 1 2 3", "2 2"]
    assert result.per_sample["edit_distance"].tolist() == [1, 0]
    assert seq["sequence_exact_match"] == 0.5
    assert seq["similarity_mean"] == pytest.approx((0.75 + 1.0) / 2)
    assert seq["frame_agreement"] == pytest.approx(9 / 12)
    assert seq["error_rate"]["original"] == 0.0
    assert seq["error_rate"]["quantized"] == pytest.approx(1 / 5)
    assert seq["error_rate"]["increase"] == pytest.approx(1 / 5)
    assert result.per_sample["error_rate_quantized"].tolist() == pytest.approx([1 / 3, 0.0])


def test_compare_models_times_both_and_audit_reports_forced_fallback(caplog):
    torch.manual_seed(0)
    float_model = MLPClassifier(6, 3, hidden=(8,), dropout=0.0).eval()
    original = pack_model(float_model)
    quantized = pack_model(quantize_model(copy.deepcopy(float_model), "int8"))
    X = torch.randn(16, 6).numpy()
    rows = Rows(X, np.array([f"r{i}" for i in range(16)]), y=np.arange(16) % 3)
    previous = kernels.set_fast_kernels(False)
    try:
        with caplog.at_level(logging.WARNING):
            result = compare_models(original, quantized, rows, warmup=1, repeats=2)
    finally:
        kernels.set_fast_kernels(previous)
    audit = result.summary["kernels"]["quantized"]
    assert [a["format"] for a in audit] == ["int8", "int8"]
    assert all(a["fallback"] and a["kernel"] == kernels.FALLBACK for a in audit)
    assert "body.0" in caplog.text and "not a fast kernel" in caplog.text
    speed = result.summary["speed"]
    assert speed["speedup"] == pytest.approx(
        speed["original"]["seconds_per_sample"] / speed["quantized"]["seconds_per_sample"]
    )
    with torch.no_grad():
        expected = (float_model(torch.as_tensor(X)).argmax(1) == quantized(torch.as_tensor(X)).argmax(1)).float()
    assert result.summary["predictions"]["agreement"] == pytest.approx(float(expected.mean()))


def test_time_pair_interleaves_and_reports_every_model():
    X = torch.randn(8, 4)
    speed = time_pair({"a": nn.Linear(4, 4), "b": nn.Sequential(nn.Linear(4, 4), nn.ReLU())}, X, warmup=1, repeats=3)
    assert set(speed) == {"a", "b"}
    assert all(v["seconds_per_sample"] > 0 and v["repeats"] == 3 for v in speed.values())
