"""Claims about trained MoEs, end to end: binary/qesc experts learn, only routed experts execute, the curiosity
cascade changes routes in a trained model (in the documented direction), and alpha = 0 is plain routing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qwave import artifact
from qwave.data import fit_normalizer
from qwave.moe.analysis import route_ablation
from qwave.moe.config import CuriosityConfig
from qwave.moe.model import MoEClassifier, quantize_moe
from qwave.moe.routing import top_k_mask
from qwave.nn.surgery import pack_model
from qwave.train import TrainConfig, train_model

CLASSES, DIM = 4, 32


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Four Gaussian classes around +-1.5 sign-pattern centres (fixed), noise 1: separable from input signs."""
    centres = np.random.default_rng(0).choice([-1.5, 1.5], size=(CLASSES, DIM))
    y = np.arange(n) % CLASSES
    X = centres[y] + np.random.default_rng(seed).normal(size=(n, DIM))
    return X.astype(np.float32), y


def train(formats: list[str], top_k: int, curiosity: CuriosityConfig | None = None, activation: str = "auto",
          epochs: int = 20) -> MoEClassifier:
    X, y = blobs(480, seed=1)
    Xv, yv = blobs(120, seed=2)
    torch.manual_seed(0)
    model = MoEClassifier(DIM, CLASSES, formats, hidden=[32], dropout=0.0, top_k=top_k, router_hidden=16,
                          router_dropout=0.3, curiosity=curiosity, mask_seed=3,
                          normalize=fit_normalizer(X, "standard"), activation=activation)
    quantize_moe(model)
    train_model(model, X, y, Xv, yv, CLASSES, TrainConfig(epochs=epochs, batch_size=64, patience=epochs), seed=0)
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread trains them several times faster than two on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def test_rows() -> tuple[torch.Tensor, np.ndarray]:
    X, y = blobs(400, seed=4)
    return torch.as_tensor(X), y


@pytest.fixture(scope="module")
def curious_packed(tmp_path_factory) -> MoEClassifier:
    """A trained MoE of [binary, int4, int8] with the cascade on (alpha 1), saved and reloaded."""
    model = train(["binary", "int4", "int8"], 1, CuriosityConfig(enabled=True, alpha=1.0, mc_samples=8))
    return artifact.load(artifact.save(pack_model(model), tmp_path_factory.mktemp("moe") / "a"))


def solo_accuracy(model: MoEClassifier, x: torch.Tensor, y: np.ndarray) -> list[float]:
    own = model.trace(x).expert_log_proba.argmax(2).numpy()
    return [float((own[:, e] == y).mean()) for e in range(model.num_experts)]


def test_binary_and_qesc_experts_learn_with_a_signed_hidden_activation(test_rows):
    x, y = test_rows
    model = pack_model(train(["binary", "qesc"], top_k=2))
    assert model.activations == ["hardtanh", "hardtanh"]
    for fmt, accuracy in zip(model.formats, solo_accuracy(model, x, y), strict=True):
        assert accuracy > 0.7, f"{fmt} expert alone: accuracy {accuracy:.3f} (chance 0.25)"


def test_a_binary_expert_behind_relu_sees_only_plus_one_and_stays_near_chance(test_rows):
    # the reference the fix is measured against: the sign of a ReLU output is constant, so the second binary
    # layer binarises every sample's hidden vector to all +1 and only the row scale varies
    x, y = test_rows
    model = pack_model(train(["binary"], top_k=1, activation="relu"))
    seen = []
    handle = model.experts[0][3].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        accuracy = solo_accuracy(model, x, y)[0]
    finally:
        handle.remove()
    assert bool((torch.cat(seen) >= 0).all()), "binary sign(x >= 0) = +1 for every hidden unit"
    assert accuracy < 0.45, f"accuracy {accuracy:.3f}"


def count_expert_calls(model: MoEClassifier, x: torch.Tensor) -> tuple[list[int], list[int]]:
    """Calls and rows each expert module receives during one eval forward of ``x``."""
    calls, rows = [0] * model.num_experts, [0] * model.num_experts

    def counter(e):
        def hook(_module, args, _out):
            calls[e] += 1
            rows[e] += len(args[0])
        return hook

    handles = [expert.register_forward_hook(counter(e)) for e, expert in enumerate(model.experts)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return calls, rows


def test_only_routed_experts_execute_on_exactly_their_rows(curious_packed, test_rows):
    x, _ = test_rows
    model = curious_packed
    with torch.no_grad():
        mask = model.route(model.norm(x)).mask
    routed = mask.sum(0).tolist()
    calls, rows = count_expert_calls(model, x)
    assert rows == routed and sum(rows) == len(x), "top-1: each row runs through exactly one expert"
    assert calls == [1 if n else 0 for n in routed]
    busiest = int(mask.sum(0).argmax())
    calls, rows = count_expert_calls(model, x[mask[:, busiest]])
    assert calls == [1 if e == busiest else 0 for e in range(model.num_experts)], "unrouted experts never run"


def test_curiosity_changes_routes_of_a_trained_model_toward_precision_when_uncertain(curious_packed, test_rows):
    x, _ = test_rows
    model = curious_packed
    with torch.no_grad():
        r = model.route(model.norm(x))
        trace = model.trace(x)
    plain = top_k_mask(r.base, 1).float().argmax(1)
    routed = r.mask.float().argmax(1)
    moved = routed != plain
    assert 0.02 < float(moved.float().mean()) < 0.98
    direction = torch.sign(model.ranks[routed[moved]] - model.ranks[plain[moved]])
    assert torch.equal(direction, torch.sign(r.score[moved])), "uncertain -> more precise, confident -> cheaper"
    ablation = route_ablation(model, x, trace)
    assert ablation["routes_changed_by_curiosity"] == pytest.approx(float(moved.float().mean()))
    assert ablation["routes_changed_vs_constant_u"] > 0.02, "the per-sample u matters, not only its average"


def test_alpha_zero_on_the_trained_model_is_plain_top_k_routing(curious_packed, test_rows):
    x, _ = test_rows
    model = curious_packed
    model.curiosity.alpha = 0.0
    try:
        with torch.no_grad():
            r = model.route(model.norm(x))
            out = model(x)
            expert_lp = torch.stack([torch.log_softmax(e(model.norm(x)), -1) for e in model.experts], 1)
    finally:
        model.curiosity.alpha = 1.0
    assert torch.equal(r.probs, r.base)
    first = [max(range(3), key=lambda e, i=i: (float(r.base[i, e]), -e)) for i in range(len(x))]
    torch.testing.assert_close(out, expert_lp[torch.arange(len(x)), first], rtol=1e-5, atol=1e-5)
