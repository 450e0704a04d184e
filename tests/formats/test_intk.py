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
