"""Quantized input embeddings: codes, bytes per embedding and reconstruction against closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from qwave.data.input_quant import fit_input_quantizer
from qwave.errors import ConfigError, DataError


def rows(n: int = 200, d: int = 13, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * np.linspace(0.5, 3, d) + np.linspace(-20, 5, d)).astype(np.float32)


@pytest.mark.parametrize("mode, stored", [("float32", 4 * 13), ("int8", 13), ("sign", 2)])
def test_bytes_per_embedding_are_the_bytes_of_the_stored_codes(mode: str, stored: int) -> None:
    quantizer = fit_input_quantizer(rows(), mode)
    codes = quantizer.encode(rows(5, seed=1))
    assert quantizer.bytes_per_embedding == stored == codes.nbytes // 5
    assert quantizer.shared_bytes == (0 if mode == "float32" else 2 * 4 * 13)


def test_int8_fits_midrange_and_step_on_training_rows_and_reconstructs_within_half_a_step() -> None:
    train = rows()
    quantizer = fit_input_quantizer(train, "int8")
    high, low = train.max(axis=0), train.min(axis=0)
    np.testing.assert_allclose(quantizer.center, (high + low) / 2, rtol=1e-6)
    np.testing.assert_allclose(quantizer.scale, (high - low) / 254, rtol=1e-6)
    codes = quantizer.encode(train)
    assert codes.dtype == np.int8 and codes.min() == -127 and codes.max() == 127
    error = np.abs(quantizer.decode(codes) - train)
    assert np.all(error <= quantizer.scale / 2 * (1 + 1e-4))


def test_int8_clips_test_values_outside_the_training_range() -> None:
    quantizer = fit_input_quantizer(rows(), "int8")
    far = quantizer.center + 1000 * quantizer.scale
    codes = quantizer.encode(np.stack([far, -far + 2 * quantizer.center]))
    np.testing.assert_array_equal(codes, [[127] * 13, [-127] * 13])
    assert quantizer.clipped_fraction(np.stack([far, quantizer.center])) == pytest.approx(0.5)


def test_sign_keeps_one_bit_per_dimension_and_decodes_to_mean_plus_or_minus_mean_absolute_deviation() -> None:
    train, test = rows(), rows(7, seed=3)
    quantizer = fit_input_quantizer(train, "sign")
    center = train.mean(axis=0)
    scale = np.abs(train - center).mean(axis=0)
    expected = center + np.where(test >= center, 1.0, -1.0) * scale
    np.testing.assert_allclose(quantizer.quantize(test), expected, rtol=1e-5)
    assert quantizer.encode(test).shape == (7, 2) and quantizer.encode(test).dtype == np.uint8


def test_rows_outside_the_training_range_clip_to_its_scales() -> None:
    train, test = rows(), rows(50, seed=2) + 100.0
    quantizer = fit_input_quantizer(train, "int8")
    np.testing.assert_array_equal(np.abs(quantizer.encode(test)), 127)
    assert quantizer.clipped_fraction(test) > 0.5 and quantizer.clipped_fraction(train) == 0.0


def test_a_constant_dimension_reconstructs_exactly() -> None:
    train = rows()
    train[:, 4] = 2.5
    for mode in ("int8", "sign"):
        assert np.all(fit_input_quantizer(train, mode).quantize(train)[:, 4] == 2.5)


def test_float32_mode_is_the_identity() -> None:
    train, test = rows(), rows(9, seed=4)
    quantizer = fit_input_quantizer(train, "float32")
    np.testing.assert_array_equal(quantizer.quantize(test), test)
    assert quantizer.bytes_per_embedding == 52 and quantizer.shared_bytes == 0


def test_bad_modes_shapes_and_values_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="'int4' is not one of float32, int8, sign"):
        fit_input_quantizer(rows(), "int4")
    bad = rows()
    bad[3, 2] = np.nan
    with pytest.raises(DataError, match="NaN or infinite"):
        fit_input_quantizer(bad, "int8")
    with pytest.raises(DataError, match="fitted on 13 dimensions, got 4"):
        fit_input_quantizer(rows(), "sign").encode(np.zeros((2, 4)))
