"""``qwave predict`` and ``qwave.load``: predictions of a saved artifact against the packed model's own logits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import qwave
from qwave import artifact
from qwave.cli import main
from qwave.errors import ArtifactError, DataError
from qwave.formats import QuantPlan
from qwave.nn.mlp import MLPClassifier
from qwave.nn.surgery import pack_model, quantize_model

CLASSES = ["bird", "cat", "dog", "eel"]


@pytest.fixture
def saved(tmp_path):
    """An int8 MLP over 12 features saved with class names, its in-memory packed model and 30 input rows."""
    torch.manual_seed(0)
    model = pack_model(quantize_model(MLPClassifier(12, 4, (16,)), "8")).eval()
    artifact.save(model, tmp_path / "model", classes=CLASSES)
    X = np.random.default_rng(1).normal(size=(30, 12)).astype(np.float32)
    return tmp_path / "model", model, X


def reference_proba(model: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(X)).double(), dim=1).numpy()


def test_load_gives_a_classifier_whose_probabilities_are_the_models_softmax(saved) -> None:
    path, model, X = saved
    classifier = qwave.load(path)
    assert classifier.classes == CLASSES and classifier.in_features == 12
    np.testing.assert_allclose(classifier.predict_proba(X), reference_proba(model, X), rtol=1e-5, atol=1e-6)
    expected = [CLASSES[i] for i in reference_proba(model, X).argmax(axis=1)]
    assert classifier.predict(X).tolist() == expected
    assert torch.equal(classifier(torch.from_numpy(X)), model(torch.from_numpy(X)))


@pytest.mark.parametrize("fmt", ["8", "4", "bitnet", "1", "qesc", "16"])
def test_the_classifier_runs_the_fused_path_with_the_per_layer_logits(tmp_path, fmt) -> None:
    """``qwave.load`` deploys what ``qwave speed``'s fused rows time: every packed layer runs in the fused path, and
    the logits equal those of the per-layer modules of a separately loaded copy, bit for bit."""
    from qwave import kernels
    from qwave.nn.mlp import activation_for
    from qwave.nn.packed_linear import PackedLinear

    if not kernels.FAST_KERNELS:
        pytest.skip(f"fast kernels unavailable ({kernels.REASON}): nothing fuses")
    torch.manual_seed(0)
    model = pack_model(quantize_model(MLPClassifier(12, 4, (16, 8), activation=activation_for([fmt])), fmt)).eval()
    path = artifact.save(model, tmp_path / "m", classes=CLASSES)
    X = np.random.default_rng(2).normal(size=(7, 12)).astype(np.float32)
    classifier = qwave.load(path)
    logits = classifier.logits(X)
    layers = [m for m in classifier.model.modules() if isinstance(m, PackedLinear)]
    assert layers and all(m.last_kernel.endswith("+fused") for m in layers)
    per_layer = artifact.load(path)
    with torch.inference_mode():
        expected = per_layer(torch.from_numpy(X)).numpy()
    assert not any(m.last_kernel.endswith("+fused") for m in per_layer.modules() if isinstance(m, PackedLinear))
    np.testing.assert_array_equal(logits, expected)


def test_the_classifier_follows_weights_loaded_into_its_model_after_a_prediction(tmp_path) -> None:
    """The fused path is built from the layers' kernel states; new weights loaded into ``classifier.model`` after
    a prediction give the new model's logits, not the old ones."""
    torch.manual_seed(0)
    first = pack_model(quantize_model(MLPClassifier(12, 4, (16,)), "8")).eval()
    second = pack_model(quantize_model(MLPClassifier(12, 4, (16,)), "8")).eval()
    classifier = qwave.load(artifact.save(first, tmp_path / "m", classes=CLASSES))
    X = np.random.default_rng(3).normal(size=(5, 12)).astype(np.float32)
    classifier.logits(X)
    classifier.model.load_state_dict(second.state_dict())
    with torch.inference_mode():
        expected = second(torch.from_numpy(X)).numpy()
    np.testing.assert_array_equal(classifier.logits(X), expected)


def test_predict_writes_ids_classes_top_k_and_probabilities_of_a_table(saved, tmp_path, capsys) -> None:
    path, model, X = saved
    table = pd.DataFrame(X, columns=[str(i) for i in range(12)])
    table.insert(0, "label", "cat")
    table.insert(0, "fold", 1)
    table.insert(0, "name", [f"clip{i}.wav" for i in range(30)])
    table.to_csv(tmp_path / "t.csv", index=False)
    assert main(["predict", str(path), "--data", str(tmp_path / "t.csv"), "--out", str(tmp_path / "p.csv"),
                 "--top-k", "2"]) == 0
    out = pd.read_csv(tmp_path / "p.csv")
    proba = reference_proba(model, X)
    order = np.argsort(-proba, axis=1)
    assert out["id"].tolist() == table["name"].tolist()
    assert out["class"].tolist() == [CLASSES[i] for i in order[:, 0]]
    assert out["class_2"].tolist() == [CLASSES[i] for i in order[:, 1]]
    np.testing.assert_allclose(out["probability"], proba[np.arange(30), order[:, 0]], rtol=1e-5)
    np.testing.assert_allclose(out[[f"p_{c}" for c in CLASSES]].to_numpy(), proba, rtol=1e-5, atol=1e-6)


def test_predict_reads_npy_rows_with_row_numbers_as_ids(saved, tmp_path) -> None:
    path, model, X = saved
    np.save(tmp_path / "x.npy", X)
    assert main(["predict", str(path), "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "p.csv")]) == 0
    out = pd.read_csv(tmp_path / "p.csv")
    assert out["id"].tolist() == list(range(30))
    assert out["class"].tolist() == [CLASSES[i] for i in reference_proba(model, X).argmax(axis=1)]


def test_non_finite_logits_are_an_error_not_a_number(saved, tmp_path, capsys) -> None:
    path, model, X = saved
    last = [m for m in model.modules() if hasattr(m, "packed_names")][-1]
    last.bias[1] = float("inf")
    artifact.save(model, tmp_path / "inf_bias", classes=CLASSES)
    with pytest.raises(ArtifactError, match="bias has a non-finite value"):  # refused on load, before any kernel
        qwave.load(tmp_path / "inf_bias")
    torch.manual_seed(0)
    broken = pack_model(quantize_model(MLPClassifier(12, 4, (16,)), QuantPlan.parse("8", keep_last_fp=True))).eval()
    with torch.no_grad():
        broken.body[-1].weight.fill_(3e38)  # finite stored weights whose products overflow to inf
    artifact.save(broken, tmp_path / "broken", classes=CLASSES)
    with pytest.raises(ArtifactError, match=r"non-finite logits for \d+ of 30 rows"):
        qwave.load(tmp_path / "broken").predict_proba(X)
    np.save(tmp_path / "x.npy", X)
    assert main(["predict", str(tmp_path / "broken"), "--data", str(tmp_path / "x.npy"),
                 "--out", str(tmp_path / "p.csv")]) == 2
    assert "non-finite logits" in capsys.readouterr().err and not (tmp_path / "p.csv").exists()


def test_inputs_of_the_wrong_width_or_with_nan_are_one_line_errors(saved, tmp_path, capsys) -> None:
    path, _, X = saved
    classifier = qwave.load(path)
    with pytest.raises(DataError, match="takes 12 features per row, the inputs have 11"):
        classifier.predict(X[:, :11])
    bad = X.copy()
    bad[4, 2] = np.nan
    with pytest.raises(DataError, match="row 4 first"):
        classifier.predict(bad)
    np.save(tmp_path / "x.npy", X)
    assert main(["predict", str(path), "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "p.csv"),
                 "--top-k", "9"]) == 2
    assert "--top-k must be between 1 and the 4 classes" in capsys.readouterr().err
