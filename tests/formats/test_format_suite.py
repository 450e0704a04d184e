"""The common check suite every registered format goes through (a new format is tested on registration)."""

from __future__ import annotations

import math

import pytest
import torch

from qwave.errors import FormatError
from qwave.formats import get_format, registered_formats

# Every registered format with its default options, plus per-group integer variants.
CASES = [(name, {}) for name in registered_formats()] + [
    ("int4", {"group_size": 64}),
    ("int8", {"group_size": 32}),
    ("int2", {"group_size": 128}),
    ("int2", {"grid": "symmetric"}),
    ("int4", {"grid": "halfstep"}),
    ("int4", {"activations": "float"}),
    ("ternary", {"activations": "float"}),
]
IDS = [name + "".join(f"-{k}{v}" for k, v in opts.items()) for name, opts in CASES]
SHAPES = [(3, 7), (5, 130), (1, 1), (17, 65), (8, 640)]

# Stored bytes of a (5, 130) weight, worked out by hand from each layout (rows padded independently).
EXPECTED_BYTES_5x130 = {
    "fp32": 5 * 130 * 4,
    "fp16": 5 * 130 * 2,
    "bf16": 5 * 130 * 2,
    "int8": 5 * 130 + 5 * 2,
    "int7": 5 * math.ceil(130 * 7 / 8) + 5 * 2,
    "int6": 5 * math.ceil(130 * 6 / 8) + 5 * 2,
    "int5": 5 * math.ceil(130 * 5 / 8) + 5 * 2,
    "int4": 5 * 65 + 5 * 2,
    "int3": 5 * math.ceil(130 * 3 / 8) + 5 * 2,
    "int2": 5 * 33 + 5 * 2,
    "binary": 5 * 3 * 8 + 5 * 2,
    "ternary": 5 * 26 + 5 * 2,
    "qesc": 2 * 5 * 3 * 8 + 5 * 2,
}

# Tolerance of matmul against fake_quant_input(x) @ dequantize(q).T (float32 rounding of a different order).
RTOL = 1e-5


def weights(shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def adversarial(shape: tuple[int, int]) -> dict[str, torch.Tensor]:
    out, n = shape
    outliers = weights(shape, 1)
    outliers[0, 0] = 1e6
    outliers[-1, -1] = -1e6
    return {
        "zeros": torch.zeros(shape),
        "constant_rows": torch.arange(out, dtype=torch.float32).unsqueeze(1).expand(out, n) - out / 2,
        "outliers": outliers,
        "tiny": weights(shape, 2) * 1e-9,
    }


def brute_force(fmt, x: torch.Tensor, q) -> torch.Tensor:
    """Integer dot products of activation codes and weight codes, element by element in int64, then scaled
    exactly as each integer recipe documents."""
    w_codes = q.codes.to(torch.int64)
    if fmt.activations == "int8":
        # 128 levels per row with a zero point: s = (max(x, 0) - min(x, 0)) / 127, codes 0..127 less the zero point
        lo, hi = x.min(-1, keepdim=True).values.clamp(max=0), x.max(-1, keepdim=True).values.clamp(min=0)
        x_scale = (hi - lo) / 127
        safe = torch.where(x_scale > 0, x_scale, torch.ones_like(x_scale))
        zero = torch.where(x_scale > 0, (-lo / safe).round().clamp(0, 127), 0)
        x_codes = torch.where(x_scale > 0, ((x / safe).round() + zero).clamp(0, 127) - zero, 0).to(torch.int64)
        group_size = getattr(fmt, "group_size", None)
        size = q.shape[1] if group_size is None else min(group_size, q.shape[1])
        y = torch.zeros(x.shape[0], q.shape[0])
        for g in range(q.scale.shape[1]):
            cols = slice(g * size, (g + 1) * size)
            acc = (x_codes[:, None, cols] * w_codes[None, :, cols]).sum(-1)
            y = y + acc.float() * q.scale.float()[:, g]
        return y * x_scale
    if fmt.activations == "binary":
        x_codes = torch.where(x >= 0, 1, -1).to(torch.int64)
        x_scale = x.abs().mean(-1, keepdim=True)
    elif fmt.activations == "ternary":
        x_scale = x.abs().mean(-1, keepdim=True)
        safe = torch.where(x_scale > 0, x_scale, torch.ones_like(x_scale))
        x_codes = torch.where(x_scale > 0, (x / safe).round().clamp(-1, 1), 0).to(torch.int64)
    else:
        raise AssertionError(f"add a brute-force reference for activations={fmt.activations!r}")
    dot = (x_codes[:, None, :] * w_codes[None, :, :]).sum(-1)
    return dot.float() * x_scale * q.scale.float().T


@pytest.fixture(params=CASES, ids=IDS)
def fmt(request):
    name, options = request.param
    return get_format(name, **options)


@pytest.mark.parametrize("shape", SHAPES)
def test_unpack_of_pack_is_bit_exact(fmt, shape):
    q = fmt.quantize(weights(shape))
    assert fmt.unpack(fmt.pack(q), shape).equal(q)


@pytest.mark.parametrize("shape", SHAPES)
def test_dequantize_of_quantize_equals_fake_quant_forward(fmt, shape):
    w = weights(shape)
    assert torch.equal(fmt.dequantize(fmt.quantize(w)), fmt.fake_quant(w))


@pytest.mark.parametrize("shape", SHAPES)
def test_matmul_matches_fake_quant_reference(fmt, shape):
    w, x = weights(shape), weights((6, shape[1]), 3)
    q = fmt.quantize(w)
    reference = fmt.fake_quant_input(x) @ fmt.dequantize(q).T
    y = fmt.matmul(x, fmt.pack(q), shape)
    assert y.dtype == torch.float32 and y.shape == (6, shape[0])
    assert (y - reference).abs().max() <= RTOL * (1 + reference.abs().max())


@pytest.mark.parametrize("shape", SHAPES)
def test_integer_matmul_equals_brute_force_integer_dot_exactly(fmt, shape):
    if fmt.activations == "float":
        pytest.skip("weight-only format: float activations, no integer path")
    w, x = weights(shape), weights((6, shape[1]), 3)
    q = fmt.quantize(w)
    assert torch.equal(fmt.matmul(x, fmt.pack(q), shape), brute_force(fmt, x, q))


def test_matmul_keeps_leading_dimensions_and_accepts_an_empty_batch(fmt):
    shape = (5, 130)
    packed = fmt.pack(fmt.quantize(weights(shape)))
    x = weights((6, 130), 3)
    assert torch.equal(fmt.matmul(x.reshape(2, 3, 130), packed, shape), fmt.matmul(x, packed, shape).reshape(2, 3, 5))
    assert fmt.matmul(torch.zeros(0, 130), packed, shape).shape == (0, 5)


def test_stored_bytes_are_the_packed_tensor_bytes_the_layout_promises(fmt):
    packed = fmt.pack(fmt.quantize(weights((5, 130))))
    stored = sum(t.numel() * t.element_size() for t in packed.values())
    n_scales = sum(t.numel() for k, t in packed.items() if k == "scale")
    expected = EXPECTED_BYTES_5x130[fmt.name] + (n_scales - 5) * 2 * (n_scales > 0)
    assert stored == expected


def test_bits_per_weight_are_achieved_when_rows_need_no_padding(fmt):
    out, n = 8, 640
    packed = fmt.pack(fmt.quantize(weights((out, n))))
    code_bytes = sum(t.numel() * t.element_size() for k, t in packed.items() if k != "scale")
    assert code_bytes == out * n * fmt.bits / 8


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["zeros", "constant_rows", "outliers", "tiny"])
def test_adversarial_weights_give_in_range_codes_and_consistent_values(fmt, shape, kind):
    w = adversarial(shape)[kind]
    q = fmt.quantize(w)
    if q.codes.dtype == torch.int8:
        limit = getattr(fmt, "qmax", 1)
        assert q.codes.abs().max() <= limit
    value = fmt.dequantize(q)
    assert torch.isfinite(value).all() and torch.isfinite(q.scale.float()).all()
    assert torch.equal(value, fmt.fake_quant(w))
    assert fmt.unpack(fmt.pack(q), shape).equal(q)
    if kind == "zeros":
        assert torch.equal(value, torch.zeros(shape))
    x = weights((4, shape[1]), 5)
    assert torch.isfinite(fmt.matmul(x, fmt.pack(q), shape)).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_raise_format_error(fmt, bad):
    w = weights((3, 7))
    w[1, 2] = bad
    with pytest.raises(FormatError, match="non-finite"):
        fmt.quantize(w)


def test_straight_through_gradients_reach_weights_and_inputs(fmt):
    w = weights((5, 130)).requires_grad_()
    x = weights((4, 130), 1).requires_grad_()
    upstream = weights((4, 5), 2)
    y = fmt.fake_quant_input(x) @ fmt.fake_quant(w).T
    (y * upstream).sum().backward()
    assert torch.allclose(w.grad, upstream.T @ fmt.fake_quant_input(x).detach())
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_options_rebuild_the_same_format(fmt):
    w = weights((5, 130))
    twin = get_format(fmt.name, **fmt.options())
    assert twin.pack(twin.quantize(w)).keys() == fmt.pack(fmt.quantize(w)).keys()
    assert twin.quantize(w).equal(fmt.quantize(w))


def test_three_dimensional_weights_are_refused(fmt):
    with pytest.raises(FormatError, match="2-D"):
        fmt.quantize(torch.zeros(2, 3, 4))


@pytest.mark.parametrize("shape", SHAPES)
def test_layout_states_exactly_the_dtypes_and_shapes_pack_writes(fmt, shape):
    packed = fmt.pack(fmt.quantize(weights(shape)))
    assert {k: (v.dtype, tuple(v.shape)) for k, v in packed.items()} == {
        k: (s.dtype, s.shape) for k, s in fmt.layout(shape).items()
    }


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["zeros", "constant_rows", "outliers", "tiny"])
def test_check_packed_accepts_everything_pack_writes(fmt, shape, kind):
    fmt.check_packed(fmt.pack(fmt.quantize(adversarial(shape)[kind])), shape)


def test_check_packed_refuses_a_tensor_of_another_shape_or_dtype_and_a_wrong_tensor_set(fmt):
    shape = (5, 130)
    packed = fmt.pack(fmt.quantize(weights(shape)))
    for name, tensor in packed.items():
        grown = [torch.cat([tensor, tensor[:1]]), torch.cat([tensor, tensor[:, :1]], 1), tensor[:-1],
                 tensor.reshape(-1), tensor.double()]
        for bad in grown:
            with pytest.raises(FormatError, match=name):
                fmt.check_packed({**packed, name: bad}, shape)
    with pytest.raises(FormatError, match="stores the tensors"):
        fmt.check_packed(dict(list(packed.items())[:-1]), shape)
    with pytest.raises(FormatError, match="stores the tensors"):
        fmt.check_packed({**packed, "zero_point": torch.zeros(5)}, shape)
    for bad_shape in [(5, 260), (6, 130), (5, 130, 1), (0, 130), (-5, 130)]:
        with pytest.raises(FormatError):
            fmt.check_packed(packed, bad_shape)


def out_of_range_code(fmt) -> int | None:
    """A k-bit two's-complement code just outside ``fmt.code_range()``, or None when every k-bit code is used."""
    k = int(fmt.bits)
    low, high = fmt.code_range()
    if low - 1 >= -(2 ** (k - 1)):
        return low - 1
    return high + 1 if high + 1 <= 2 ** (k - 1) - 1 else None


def corrupted(fmt, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> dict[str, dict]:
    """Packed tensors with one value ``pack`` never writes, built by hand from the layouts in qwave.formats.base."""
    out, n = shape
    cases: dict[str, dict] = {}

    def with_value(name: str, index: tuple, value) -> dict:
        tensor = packed[name].clone()
        tensor[index] = value
        return {**packed, name: tensor}

    if "scale" in packed:
        for label, value in (("negative scale", -1.0), ("NaN scale", float("nan")), ("inf scale", float("inf"))):
            cases[label] = with_value("scale", (0, 0), value)
    if fmt.name.startswith("int"):
        k = int(fmt.bits)
        code = out_of_range_code(fmt)
        if code is not None:  # code 0 of row 0 is the k low bits of byte 0 (LSB first)
            byte = (int(packed["codes"][0, 0]) & ~((1 << k) - 1) & 0xFF) | (code & ((1 << k) - 1))
            cases[f"code {code}"] = with_value("codes", (0, 0), byte)
        if n * k % 8:
            cases["padding bit"] = with_value("codes", (0, -1), int(packed["codes"][0, -1]) | 0x80)
    elif fmt.name in ("binary", "qesc"):
        word_names = ["bits"] if fmt.name == "binary" else ["plus", "minus"]
        if n % 64:
            for name in word_names:
                cases[f"{name} padding bit"] = with_value(name, (0, -1), int(packed[name][0, -1]) | -(1 << 63))
        if fmt.name == "qesc":
            both = {**packed, "plus": packed["plus"].clone(), "minus": packed["minus"].clone()}
            both["plus"][0, 0] |= 1
            both["minus"][0, 0] |= 1
            cases["trit both +1 and -1"] = both
    elif fmt.name == "ternary":
        cases["byte 243"] = with_value("codes", (0, 0), 243)
        if n % 5:
            cases["padding trit"] = with_value("codes", (0, -1), 0)
    elif fmt.name in ("fp32", "fp16", "bf16"):
        cases["NaN weight"] = with_value("weight", (0, 0), float("nan"))
        cases["inf weight"] = with_value("weight", (0, 0), float("inf"))
    else:
        raise AssertionError(f"add hand-made corruptions of format {fmt.name!r}'s layout")
    return cases


@pytest.mark.parametrize("shape", [(5, 130), (3, 7)])
def test_check_packed_refuses_codes_padding_bits_and_scales_pack_never_writes(fmt, shape):
    packed = fmt.pack(fmt.quantize(weights(shape)))
    cases = corrupted(fmt, packed, shape)
    assert cases
    for label, bad in cases.items():
        with pytest.raises(FormatError):
            fmt.check_packed(bad, shape)
            pytest.fail(f"{label} was accepted")


def _random_like(t: torch.Tensor, gen: torch.Generator, sparse: bool) -> torch.Tensor:
    """Random bits for integer tensors (mostly valid ones when ``sparse``), random values for float ones."""
    if t.dtype.is_floating_point:
        values = torch.randn(t.shape, generator=gen).abs()
        values = torch.where(torch.rand(t.shape, generator=gen) < 0.02, -values, values)
        return torch.where(torch.rand(t.shape, generator=gen) < 0.002 * (not sparse), torch.nan, values).to(t.dtype)
    info = torch.iinfo(t.dtype)
    noise = torch.randint(info.min, info.max, t.shape, generator=gen, dtype=t.dtype)
    if not sparse:
        return noise
    keep = torch.rand(t.shape, generator=gen) < 0.995
    return torch.where(keep, t, noise)


@pytest.mark.parametrize("shape", [(5, 130), (3, 7), (4, 64), (2, 1)])
def test_each_formats_own_value_check_agrees_with_the_generic_unpack_repack_check(fmt, shape):
    from qwave.formats.base import FormatBase

    packed = fmt.pack(fmt.quantize(weights(shape)))
    gen = torch.Generator().manual_seed(11)
    for trial in range(60):
        candidate = {k: _random_like(v, gen, sparse=trial % 2 == 0) for k, v in packed.items()}
        verdicts = []
        for check in (fmt._check_values, lambda p, s: FormatBase._check_values(fmt, p, s)):
            try:
                check(candidate, shape)
                verdicts.append(True)
            except FormatError:
                verdicts.append(False)
        assert verdicts[0] == verdicts[1], f"trial {trial}: own check {verdicts[0]}, generic {verdicts[1]}"
