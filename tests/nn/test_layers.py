"""QuantLinear (QAT) and PackedLinear (inference) agree for every format; PackedLinear stores only packed bytes
and caches a fast kernel's prepared state correctly."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qwave import kernels
from qwave.errors import FormatError
from qwave.formats import QuantPlan, get_format, registered_formats
from qwave.nn import MLPClassifier, PackedLinear, QuantLinear, pack_model, quantize_model

CASES = [(name, {}) for name in registered_formats()] + [("int4", {"group_size": 64}), ("int8", {"group_size": 32})]
IDS = [name + "".join(f"-{k}{v}" for k, v in opts.items()) for name, opts in CASES]
# QAT forward vs packed forward: the same quantized values summed in a different float order.
TOLERANCE = 1e-4


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_quant_linear_initialises_like_nn_linear_and_shares_parameters_in_from_linear():
    torch.manual_seed(3)
    reference = nn.Linear(30, 7)
    torch.manual_seed(3)
    layer = QuantLinear(30, 7, fmt="4")
    assert torch.equal(layer.weight, reference.weight) and torch.equal(layer.bias, reference.bias)
    wrapped = QuantLinear.from_linear(reference, "binary")
    assert wrapped.weight is reference.weight and wrapped.bias is reference.bias
    assert wrapped.fmt.name == "binary"


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_quant_linear_forward_is_linear_of_fake_quantized_input_and_dequantized_codes(name, options):
    layer = QuantLinear(130, 9, fmt=name, **options)
    x = randn(5, 130, seed=1)
    fmt = layer.fmt
    expected = F.linear(fmt.fake_quant_input(x), fmt.dequantize(fmt.quantize(layer.weight)), layer.bias)
    assert torch.equal(layer(x), expected)


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_packed_layer_matches_the_qat_layer_for_every_format(name, options):
    layer = QuantLinear(200, 33, fmt=name, **options)
    packed = pack_model(layer)
    x = randn(2, 4, 200, seed=2)
    with torch.no_grad():
        expected = layer(x)
    got = packed(x)
    assert isinstance(packed, PackedLinear) and got.dtype == torch.float32 and got.shape == (2, 4, 33)
    assert (got - expected).abs().max() <= TOLERANCE * (1 + expected.abs().max())


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_packed_mlp_keeps_top1_predictions_of_the_qat_mlp(name, options):
    torch.manual_seed(0)
    qat = quantize_model(MLPClassifier(96, 12, (64, 32)), QuantPlan.parse(name, **options)).eval()
    packed = pack_model(qat)
    x = randn(400, 96, seed=4)
    with torch.no_grad():
        agreement = (qat(x).argmax(1) == packed(x).argmax(1)).float().mean().item()
    assert agreement >= 0.995


def test_packed_state_dict_is_exactly_the_packed_tensors_and_bias():
    fmt = get_format("int4", group_size=16)
    w = randn(6, 40)
    packed = fmt.pack(fmt.quantize(w))
    layer = PackedLinear(fmt, packed, (6, 40), torch.ones(6))
    state = layer.state_dict()
    assert list(state) == ["codes", "scale", "bias"]
    assert all(torch.equal(state[k], packed[k]) for k in packed)
    assert not list(layer.parameters())
    no_bias = PackedLinear(fmt, packed, (6, 40), None)
    assert list(no_bias.state_dict()) == ["codes", "scale"]


def test_packed_forward_rejects_a_wrong_input_width():
    layer = pack_model(QuantLinear(8, 3, fmt="8"))
    with pytest.raises(FormatError, match="8 input features"):
        layer(torch.zeros(2, 9))


class CountingKernel:
    """A stand-in fast kernel (dequantize then matmul) that counts how often it prepares its state."""

    def __init__(self) -> None:
        self.prepared = 0
        self.kernel = kernels.Kernel("counting-test", ("int4",), "cpu", self.prepare, self.run, lambda s: s.nbytes)

    def prepare(self, fmt, packed, shape):
        self.prepared += 1
        return fmt.dequantize(fmt.unpack(packed, shape)).contiguous()

    @staticmethod
    def run(state, x):
        return x @ state.T


@pytest.fixture
def counting(monkeypatch) -> CountingKernel:
    fake = CountingKernel()
    monkeypatch.setattr(kernels, "kernel_for", lambda fmt, device: fake.kernel if fmt.name == "int4" else None)
    return fake


def test_kernel_state_is_prepared_once_and_rebuilt_after_buffers_are_reloaded(counting):
    torch.manual_seed(1)
    qat = QuantLinear(48, 10, fmt="4", activations="float")  # the stand-in kernel's float recipe
    layer = pack_model(qat)
    x = randn(3, 48)
    first = layer(x)
    layer(x)
    assert counting.prepared == 1 and layer.last_kernel == "counting-test"
    assert layer.kernel_cached_bytes == 10 * 48 * 4
    assert torch.allclose(first, layer.fmt.matmul(x, layer.packed, layer.shape) + layer.bias, atol=1e-5)
    other = pack_model(QuantLinear(48, 10, fmt="4", activations="float"))
    layer.load_state_dict(other.state_dict())
    assert torch.allclose(layer(x), other(x), atol=1e-6)
    assert counting.prepared == 3  # once for the reloaded layer, once for `other`
    assert "_kernel_state" not in layer.state_dict()
    assert copy.deepcopy(layer)._kernel_state is None and layer.kernel_cached_bytes > 0


def test_fallback_is_recorded_when_no_kernel_applies(counting):
    layer = pack_model(QuantLinear(20, 4, fmt="binary"))
    assert layer.last_kernel is None and layer.kernel_cached_bytes == 0
    layer(randn(2, 20))
    assert layer.last_kernel == kernels.FALLBACK and counting.prepared == 0


def test_switching_fast_kernels_off_uses_the_reference_path():
    previous = kernels.set_fast_kernels(False)
    try:
        layer = pack_model(QuantLinear(64, 8, fmt="8"))
        layer(randn(2, 64))
        assert layer.last_kernel == kernels.FALLBACK
    finally:
        kernels.set_fast_kernels(previous)


@pytest.mark.parametrize("name", ["int8", "binary", "qesc", "ternary", "int4", "fp16"])
def test_packed_layer_refuses_tensors_outside_the_layout_before_any_kernel_runs(name, monkeypatch):
    fmt = get_format(name)
    shape = (6, 130)
    packed = fmt.pack(fmt.quantize(torch.randn(shape)))
    monkeypatch.setattr(kernels, "kernel_for", lambda *a, **k: pytest.fail("a kernel was consulted"))
    first = next(iter(packed))
    with pytest.raises(FormatError, match=first):
        PackedLinear(fmt, {**packed, first: packed[first][:3]}, shape, None)
    with pytest.raises(FormatError, match="stores the tensors"):
        PackedLinear(fmt, dict(list(packed.items())[1:]), shape, None)
    with pytest.raises(FormatError, match="6 values"):
        PackedLinear(fmt, packed, shape, torch.zeros(1))
    with pytest.raises(FormatError, match="non-finite"):
        PackedLinear(fmt, packed, shape, torch.full((6,), float("nan")))
    with pytest.raises(FormatError, match="positive integers"):
        PackedLinear(fmt, packed, (6, 130, 1), None)


fast = pytest.mark.skipif(not kernels.FAST_KERNELS, reason=f"fast kernels unavailable: {kernels.REASON}")
RELEASED = [("int8", {}), ("int8", {"group_size": 32}), ("int5", {}), ("int4", {}), ("int3", {"group_size": 16}),
            ("int2", {}), ("ternary", {}), ("binary", {}), ("qesc", {}), ("fp16", {}), ("bf16", {})]
RELEASED_IDS = [name + "".join(f"-{k}{v}" for k, v in opts.items()) for name, opts in RELEASED]


def packed_layer(name: str, options: dict, seed: int = 0, shape=(37, 130)) -> PackedLinear:
    torch.manual_seed(seed)
    return pack_model(QuantLinear(shape[1], shape[0], fmt=name, **options)).eval()


def assert_same_state(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape and torch.equal(got[name], tensor)


def after_first_forward(name: str, options: dict):
    """A packed layer, its state before any forward (cloned), an input and the output of its first forward."""
    layer = packed_layer(name, options)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    x = randn(5, 130)
    return layer, before, x, layer(x)


@fast
@pytest.mark.parametrize(("name", "options"), RELEASED, ids=RELEASED_IDS)
def test_the_first_forward_releases_the_packed_buffers_and_state_dict_re_derives_them(name, options):
    layer, before, x, y = after_first_forward(name, options)
    assert layer.released and [n for n, _ in layer.named_buffers()] == ["bias"]  # the kernel state is the copy
    assert_same_state(layer.state_dict(), before)
    assert_same_state({**layer.packed, "bias": layer.bias}, before)
    assert all(torch.equal(getattr(layer, n), before[n]) for n in layer.packed_names)
    assert torch.equal(layer(x), y)


@fast
@pytest.mark.parametrize(("name", "options"), RELEASED, ids=RELEASED_IDS)
def test_a_released_layer_pickles_copies_and_saves_the_same_bytes_and_outputs(name, options):
    layer, before, x, y = after_first_forward(name, options)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    copies = [copy.deepcopy(layer), pickle.loads(pickle.dumps(layer)), torch.load(buffer, weights_only=False)]
    for other in copies:
        assert not other.released and other.kernel_cached_bytes == 0
        assert_same_state(other.state_dict(), before)
        assert torch.equal(other(x), y) and other.released
    assert layer.released and torch.equal(layer(x), y)


@fast
def test_moving_a_released_layer_to_its_own_device_keeps_it_released_and_a_dtype_change_restores_the_buffers():
    layer = packed_layer("int8", {})
    x = randn(3, 130)
    y = layer(x)
    assert layer.to("cpu") is layer and layer.cpu().released and torch.equal(layer(x), y)
    scale = layer.state_dict()["scale"]
    layer.float()  # converts the fp16 scale: the layer must hold the buffers to convert them
    assert not layer.released and layer.scale.dtype == torch.float32
    assert torch.equal(layer.scale, scale.float())


@fast
def test_load_state_dict_into_a_released_layer_checks_the_tensors_and_replaces_the_weights():
    layer, other = packed_layer("int8", {}, seed=1), packed_layer("int8", {}, seed=2)
    x = randn(3, 130)
    y = layer(x)
    bad = {k: v.clone() for k, v in other.state_dict().items()}
    bad["codes"][4, 7] = 128  # the uint8 view of int8 code -128, outside the symmetric range
    with pytest.raises(FormatError, match="-128"):
        layer.load_state_dict(bad)
    assert torch.equal(layer(x), y)  # refused before anything was copied
    with pytest.raises(FormatError, match="bias"):
        layer.load_state_dict({**other.state_dict(), "bias": torch.full((37,), float("inf"))})
    layer.load_state_dict(other.state_dict(), strict=True)
    assert_same_state(layer.state_dict(), other.state_dict())
    assert torch.equal(layer(x), other(x)) and layer.released


@fast
def test_switching_fast_kernels_off_after_the_release_runs_the_reference_on_the_re_derived_tensors():
    layer = packed_layer("int4", {})
    x = randn(3, 130)
    y = layer(x)
    reference = layer.fmt.matmul(x, layer.packed, layer.shape) + layer.bias
    previous = kernels.set_fast_kernels(False)
    try:
        got = layer(x)
        assert layer.last_kernel == kernels.FALLBACK and not layer.released and layer.kernel_cached_bytes == 0
        assert torch.equal(got, reference)
    finally:
        kernels.set_fast_kernels(previous)
    assert torch.equal(layer(x), y) and layer.released


@fast
def test_packed_of_a_released_layer_is_one_copy_while_it_lives_and_never_an_edited_one():
    layer = packed_layer("int8", {})
    layer(randn(2, 130))
    first = layer.packed
    assert layer.packed["codes"] is first["codes"]  # a state_dict of a shared module sees one storage
    original = first["codes"].clone()
    first["codes"][0, 0] ^= 1  # edits a copy: the layer's weights are the kernel state
    assert torch.equal(layer.packed["codes"], original) and layer.packed["codes"] is not first["codes"]


@fast
def test_assigning_a_packed_tensor_of_a_released_layer_holds_the_buffers_again_and_uses_the_new_one():
    layer = packed_layer("int8", {})
    x = randn(3, 130)
    y = layer(x) - layer.bias
    layer.scale = (layer.scale.float() * 2).half()
    assert not layer.released
    assert torch.allclose(layer(x) - layer.bias, 2 * y, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("name", "options"),
                         [("int8", {"activations": "float"}), ("ternary", {"activations": "float"}), ("fp32", {})])
def test_layers_without_an_invertible_kernel_keep_their_packed_buffers(name, options):
    layer = packed_layer(name, options)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer(randn(2, 130))
    assert not layer.released and [n for n, _ in layer.named_buffers()] == [*layer.packed_names, "bias"]
    assert_same_state(layer.state_dict(), before)


@fast
def test_concurrent_first_forwards_prepare_one_state_and_agree():
    from concurrent.futures import ThreadPoolExecutor

    layer = packed_layer("int8", {})
    reference = packed_layer("int8", {})
    x = randn(3, 130)
    want = reference(x)
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda _: layer(x), range(8)))
    assert all(torch.equal(y, want) for y in outputs) and layer.released
    assert_same_state(layer.state_dict(), reference.state_dict())


@fast
def test_buffers_restored_inside_inference_mode_are_plain_tensors_that_load_state_dict_can_write():
    layer, other = packed_layer("int4", {}, seed=1), packed_layer("int4", {}, seed=2)
    x = randn(2, 130)
    previous = kernels.set_fast_kernels(True)
    try:
        with torch.inference_mode():
            layer(x)  # releases
            kernels.set_fast_kernels(False)
            layer(x)  # holds the buffers again, re-derived inside inference mode
    finally:
        kernels.set_fast_kernels(previous)
    assert not layer.released and not layer.codes.is_inference()
    layer.load_state_dict(other.state_dict())
    assert torch.equal(layer(x), other(x))
