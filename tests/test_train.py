"""The shared training loop: schedule closed forms, best-epoch restore, determinism, config validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score
from torch import nn

from qwave.errors import ConfigError
from qwave.train import TrainConfig, lr_factor, predict_logits, resolve_device, train_model


def _data(seed=0, n=120):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = (rng.normal(size=(n, 5)) + 2.0 * np.eye(3, 5)[y]).astype(np.float32)
    return X, y


def test_cosine_schedule_matches_closed_form():
    cfg = TrainConfig(epochs=10, warmup_epochs=2, schedule="cosine")
    for epoch in (2.0, 4.5, 7.0, 10.0):
        expected = 0.5 * (1 + math.cos(math.pi * (epoch - 2) / 8)) + 1e-3
        assert lr_factor(epoch, cfg) == pytest.approx(expected)
    assert lr_factor(1.0, cfg) == pytest.approx((1.0 + 1e-3) / 2)
    assert lr_factor(3.0, TrainConfig(schedule="constant")) == 1.0


def test_best_epoch_weights_are_restored():
    X, y = _data()
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    result = train_model(model, X[:80], y[:80], X[80:], y[80:], 3, TrainConfig(epochs=12, patience=3), seed=1)
    pred = predict_logits(model, torch.as_tensor(X[80:])).argmax(1).numpy()
    assert f1_score(y[80:], pred, average="macro") == pytest.approx(result.best_val_macro_f1)
    best = max(h["val_macro_f1"] for h in result.history)
    assert result.best_val_macro_f1 == best
    assert result.history[result.best_epoch - 1]["val_macro_f1"] == best


def test_early_stopping_stops_after_patience_without_improvement():
    X, y = _data()
    model = nn.Linear(5, 3)
    result = train_model(model, X[:80], y[:80], X[80:], y[80:], 3, TrainConfig(epochs=200, patience=2), seed=0)
    assert result.epochs_run == result.best_epoch + 2 or result.epochs_run == 200


def test_same_seed_gives_identical_weights():
    X, y = _data()
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))
        train_model(model, X[:80], y[:80], X[80:], y[80:], 3, TrainConfig(epochs=3), seed=7)
        states.append(model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key])


def test_aux_loss_of_a_model_is_added():
    class WithAux(nn.Linear):
        calls = 0

        def aux_loss(self):
            WithAux.calls += 1
            return self.weight.sum() * 0.0

    X, y = _data()
    train_model(WithAux(5, 3), X[:80], y[:80], X[80:], y[80:], 3, TrainConfig(epochs=1, batch_size=40), seed=0)
    assert WithAux.calls == 2


@pytest.mark.parametrize(
    "field,value", [("schedule", "linear"), ("sampler", "smote"), ("epochs", 0), ("label_smoothing", 1.0)]
)
def test_invalid_train_options_name_the_option(field, value):
    with pytest.raises(ConfigError, match=f"train.{field}"):
        TrainConfig(**{field: value}).validate()


def test_cuda_request_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="device=cuda"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
