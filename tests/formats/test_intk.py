"""Integer grids: the half-step int2 grid uses all four codes and halves three-level int2's weight error."""

from __future__ import annotations

import pytest
import torch

from qwave.errors import FormatError
from qwave.formats import get_format


def relative_error(fmt, w: torch.Tensor) -> float:
    return float((w - fmt.dequantize(fmt.quantize(w))).norm() / w.norm())


def test_four_level_int2_has_the_optimal_uniform_grid_error_on_uniform_weights():
    """For w ~ U(-1, 1) (std 1/sqrt(3)) the best 4-level uniform grid has step 1/2 (levels +-1/4, +-3/4) and error
    step / sqrt(12): relative error exactly 1/4. Three levels at max-abs scale ({-1, 0, 1}) give 1/2."""
    w = torch.rand(512, 1024, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert relative_error(get_format("int2"), w) == pytest.approx(0.25, abs=0.005)
    assert relative_error(get_format("int2", grid="symmetric"), w) == pytest.approx(0.5, abs=0.005)
    assert relative_error(get_format("int2"), w) < relative_error(get_format("ternary"), w)


def test_four_level_int2_beats_ternary_on_gaussian_weights():
    """Lloyd-Max for a Gaussian: 4 uniform levels reach a relative error of sqrt(0.1188) = 0.345."""
    w = torch.randn(512, 1024, generator=torch.Generator().manual_seed(1))
    assert relative_error(get_format("int2"), w) == pytest.approx(0.3447, abs=0.005)
    assert relative_error(get_format("int2"), w) < relative_error(get_format("ternary"), w)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_half_step_codes_are_odd_and_use_every_level(bits):
    fmt = get_format(f"int{bits}", grid="halfstep")
    codes = fmt.quantize(torch.randn(64, 512, generator=torch.Generator().manual_seed(bits))).codes
    levels = torch.arange(-(2**bits - 1), 2**bits, 2, dtype=torch.int8)
    assert torch.equal(torch.unique(codes), levels)


def test_bad_grid_and_activation_options_name_the_option():
    with pytest.raises(FormatError, match="int4 grid"):
        get_format("int4", grid="uniform")
    with pytest.raises(FormatError, match="halfstep"):
        get_format("int8", grid="halfstep")
    with pytest.raises(FormatError, match="ternary activations"):
        get_format("ternary", activations="int4")


def test_activation_rows_after_a_relu_keep_the_symmetric_int8_codes():
    """A row with no negative value gets zero point 0 and scale max / 127: the codes of symmetric int8 rows."""
    from qwave.formats.base import quantize_rows_int8

    x = torch.randn(5, 300, generator=torch.Generator().manual_seed(0)).abs()
    codes, zero, scale = quantize_rows_int8(x)
    assert torch.equal(zero, torch.zeros(5, 1)) and torch.equal(scale, x.amax(-1, keepdim=True) / 127)
    assert torch.equal(codes, (x / scale).round().clamp(-127, 127))


def test_activation_codes_span_0_to_127_with_the_zero_point_on_zero():
    """All-negative, mixed and all-zero rows: codes in 0..127 reaching both ends where the row spans them, the zero
    point coding 0.0, and code - zero point times the scale within half a step of x."""
    from qwave.formats.base import quantize_rows_int8

    x = torch.tensor([[-4.0, -1.0, -2.5, -0.5], [-1.0, 0.0, 3.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    codes, zero, scale = quantize_rows_int8(x)
    assert zero.flatten().tolist() == [127.0, 32.0, 0.0] and codes[2].eq(0).all()
    assert codes.min() >= 0 and codes.max() <= 127 and codes[0, 0] == 0 and codes[1, 2] == 127
    assert codes[1, 1] == zero[1, 0]  # 0.0 is exactly representable
    assert ((codes - zero) * scale - x).abs().max() <= scale.max() / 2 + 1e-6
