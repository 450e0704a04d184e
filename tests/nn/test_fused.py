"""The fused whole-model path gives the per-layer path's logits bit for bit (every format, ReLU and hardtanh models,
batch 1 and odd batches, a fitted normaliser, mixed formats), reuses each layer's prepared kernel state, and refuses
what it cannot fuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qwave import kernels
from qwave.data.normalize import fit_normalizer
from qwave.formats import QuantPlan, registered_formats
from qwave.nn.fused import compile_model
from qwave.nn.mlp import MLPClassifier, activation_for
from qwave.nn.packed_linear import PackedLinear
from qwave.nn.surgery import pack_model, quantize_model

pytestmark = pytest.mark.skipif(not kernels.FAST_KERNELS, reason=f"fast kernels unavailable: {kernels.REASON}")

IN, CLASSES, HIDDEN = 77, 5, (33, 17)
CASES = [(name, {}) for name in registered_formats()] + [("int4", {"activations": "float"})]
IDS = [name + ("-weight-only" if opts else "") for name, opts in CASES]
BATCHES = [1, 9, 301]  # 301 rows: the kernels' multi-threaded paths


def _mlp(activation: str, seed: int = 0, normalize: str = "standard") -> MLPClassifier:
    torch.manual_seed(seed)
    rows = np.random.default_rng(seed).normal(3.0, 2.0, (64, IN)).astype(np.float32)
    model = MLPClassifier(IN, CLASSES, hidden=HIDDEN, dropout=0.1, normalize=fit_normalizer(rows, normalize),
                          activation=activation)
    return model.eval()


def _packed(model: nn.Module, fmt: str, **options) -> nn.Module:
    return pack_model(quantize_model(model, QuantPlan.parse(fmt, **options)))


def _inputs(batch: int) -> torch.Tensor:
    return torch.randn(batch, IN, generator=torch.Generator().manual_seed(batch)) * 2.0 + 3.0


def _assert_fused_equals_per_layer(model: nn.Module) -> None:
    fused = compile_model(model)
    assert fused is not None
    for batch in BATCHES:
        x = _inputs(batch)
        with torch.inference_mode():
            want, got = model(x), fused(x)
        assert torch.equal(got, want), f"batch {batch}: max |diff| {(got - want).abs().max():.3g}"
    assert all(name.endswith("+fused") for name in fused.kernel_names)


@pytest.mark.parametrize(("fmt", "options"), CASES, ids=IDS)
@pytest.mark.parametrize("activation", ["relu", "hardtanh"])
def test_fused_equals_per_layer_path_bit_for_bit(fmt, options, activation):
    _assert_fused_equals_per_layer(_packed(_mlp(activation), fmt, **options))


@pytest.mark.parametrize("normalize", ["raw", "min_max", "l2"])
@pytest.mark.parametrize("fmt", ["int8", "binary", "fp16"])
def test_every_normaliser_mode_runs_in_the_fused_path_bit_for_bit(fmt, normalize):
    _assert_fused_equals_per_layer(_packed(_mlp("relu", normalize=normalize), fmt))


def test_the_fused_path_takes_3d_float64_inputs_and_sees_a_normaliser_loaded_in_place():
    model = _packed(_mlp("relu"), "int8")
    fused = compile_model(model)
    x = _inputs(12).reshape(3, 4, IN).double()
    with torch.inference_mode():
        assert torch.equal(fused(x), model(x.float()))
        model.norm.shift.copy_(model.norm.shift + 1.0)  # what load_state_dict does to a buffer
        assert torch.equal(fused(x), model(x.float()))


@pytest.mark.parametrize("fmt", ["int8", "ternary", "binary", "qesc", "fp16"])
def test_a_crowded_machine_gives_the_same_logits_on_the_calling_thread(fmt, monkeypatch, tmp_path):
    from qwave.kernels import work

    model = _packed(_mlp("relu"), fmt)
    want = compile_model(model)(_inputs(3000))
    (tmp_path / "loadavg").write_text("9.0 9.0 9.0 40/400 1\n")
    monkeypatch.setattr(work, "LOADAVG", str(tmp_path / "loadavg"))
    assert torch.equal(compile_model(model)(_inputs(3000)), want)


def test_hardtanh_outputs_are_clamped_inside_the_fused_chain():
    """The hidden activations really are clamped: a ReLU model of the same weights gives other logits."""
    x = _inputs(9)
    hard, relu = (compile_model(_packed(_mlp(activation), "int8")) for activation in ("hardtanh", "relu"))
    with torch.inference_mode():
        hard, relu = hard(x), relu(x)
    assert not torch.equal(hard, relu)


@pytest.mark.parametrize("layer_formats", [["int8", "binary", "qesc"], ["binary", "int4", "fp16"]])
def test_mixed_format_chains_with_their_deployed_activation_equal_the_per_layer_path(layer_formats):
    model = _mlp(activation_for(layer_formats))
    plan = QuantPlan.parse("int8", layer_formats=layer_formats)
    _assert_fused_equals_per_layer(pack_model(quantize_model(model, plan)))


def test_a_plain_sequential_fuses_too():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(IN, 20), nn.Hardtanh(), nn.Dropout(0.2), nn.Linear(20, 3)).eval()
    _assert_fused_equals_per_layer(_packed(model, "binary"))


def test_the_fused_path_holds_each_layers_own_prepared_state_not_a_second_copy():
    model = _packed(_mlp("hardtanh"), "int8")
    with torch.inference_mode():
        model(_inputs(1))  # the layers prepare their kernel state here
    layers = [m for m in model.modules() if isinstance(m, PackedLinear)]
    prepared = [layer._kernel_state[2] for layer in layers]
    fused = compile_model(model)
    assert all(f.state is state for f, state in zip(fused.layers, prepared, strict=True))
    with torch.inference_mode():
        fused(_inputs(3))
        model(_inputs(3))
    assert all(layer._kernel_state[2] is state for layer, state in zip(layers, prepared, strict=True))
    assert all(layer.released for layer in layers)  # compiling re-derived no packed tensors: still one copy


def test_fused_refuses_layer_norm_and_a_hardtanh_with_other_bounds():
    torch.manual_seed(0)
    assert compile_model(_packed(MLPClassifier(20, 3, hidden=(8,), layer_norm=True).eval(), "int8")) is None
    wide = nn.Sequential(nn.Linear(20, 8), nn.Hardtanh(-2.0, 2.0), nn.Linear(8, 3)).eval()
    assert compile_model(_packed(wide, "int8")) is None


@pytest.mark.parametrize(("layer_formats", "chained"), [
    (["int8"] * 3, True), (["ternary"] * 3, True), (["binary"] * 3, True), (["qesc"] * 3, True),
    (["int8", "int4", "ternary"], True),  # one W·A8 family: one chain
    (["binary", "qesc", "binary"], True),  # one popcount family
    (["int8", "binary", "qesc"], False), (["fp16"] * 3, True), (["fp16", "bf16", "fp16"], True),
])
def test_a_chain_of_one_kernel_family_runs_as_one_compiled_call_with_the_same_logits(layer_formats, chained):
    plan = QuantPlan.parse("int8", layer_formats=layer_formats)
    model = pack_model(quantize_model(_mlp(activation_for(layer_formats)), plan))
    assert (compile_model(model).chain is not None) == chained
    _assert_fused_equals_per_layer(model)


def test_a_deep_chain_runs_as_one_compiled_call_with_the_same_logits():
    torch.manual_seed(2)
    depth = 9
    modules = [m for _ in range(depth - 1) for m in (nn.Linear(IN, IN), nn.ReLU())] + [nn.Linear(IN, CLASSES)]
    model = _packed(nn.Sequential(*modules).eval(), "int8")
    assert compile_model(model).chain is not None
    _assert_fused_equals_per_layer(model)
