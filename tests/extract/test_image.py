"""Spectrogram pictures: colour-map inversion and axes cropping, checked on arrays rendered with matplotlib."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from qwave.errors import DataError  # noqa: E402
from qwave.extract.image import apply_colormap, invert_colormap, read_spectrogram_image  # noqa: E402


def known_spectrogram(freq: int = 40, time: int = 60) -> np.ndarray:
    """A smooth (frequency, time) array in [0, 1]: rises with frequency, a bump over time."""
    return np.linspace(0, 1, freq)[:, None] * 0.7 + 0.3 * np.sin(np.linspace(0, np.pi, time))[None, :]


def test_inverting_every_magma_table_colour_gives_its_index() -> None:
    levels = np.arange(256) / 255.0
    np.testing.assert_array_equal(invert_colormap(apply_colormap(levels)), levels.astype(np.float32))


def test_matplotlib_imsave_with_magma_is_inverted_to_the_quantised_array(tmp_path: Path) -> None:
    array = known_spectrogram()
    plt.imsave(tmp_path / "plain.png", array, cmap="magma", vmin=0, vmax=1, origin="lower")
    got = read_spectrogram_image(tmp_path / "plain.png")  # no axes: the whole picture is the plot
    assert got.shape == array.shape
    np.testing.assert_allclose(got, array, atol=1.0 / 255 + 1e-6)


def test_a_specshow_like_figure_is_cropped_to_the_plot_and_inverted(tmp_path: Path) -> None:
    array = known_spectrogram()
    fig, ax = plt.subplots(figsize=(3.2, 2.4), dpi=100)  # 320 x 240, as the ESC-50 renderings
    ax.imshow(array, origin="lower", cmap="magma", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xlabel("Time")
    ax.set_ylabel("Hz")
    fig.savefig(tmp_path / "axes.png", dpi=100)
    plt.close(fig)
    got = read_spectrogram_image(tmp_path / "axes.png")
    assert 170 < got.shape[0] < 200 and 230 < got.shape[1] < 260  # the axes box, not the whole 240 x 320
    rows = ((np.arange(got.shape[0]) + 0.5) * array.shape[0] / got.shape[0]).astype(int)
    cols = ((np.arange(got.shape[1]) + 0.5) * array.shape[1] / got.shape[1]).astype(int)
    error = np.abs(got - array[rows][:, cols])
    # pixels map to cells up to one cell off at cell borders (the array changes < 0.02 per cell); no spine pixels
    assert error.max() < 0.05 and error.mean() < 0.01


def test_grey_pictures_are_read_as_luminance_when_no_colour_map_is_given(tmp_path: Path) -> None:
    array = known_spectrogram()
    plt.imsave(tmp_path / "grey.png", array, cmap="gray", vmin=0, vmax=1, origin="lower")
    np.testing.assert_allclose(read_spectrogram_image(tmp_path / "grey.png", colormap="none"), array, atol=2 / 255)


def test_unknown_colour_map_and_unreadable_picture_are_data_errors(tmp_path: Path) -> None:
    plt.imsave(tmp_path / "a.png", known_spectrogram(), cmap="magma")
    with pytest.raises(DataError, match="'nosuchmap' is not a matplotlib colour map"):
        read_spectrogram_image(tmp_path / "a.png", colormap="nosuchmap")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png cannot be read"):
        read_spectrogram_image(tmp_path / "bad.png")


def test_real_esc50_rendering_crops_to_the_plot_and_spans_the_colour_map(require_shared) -> None:
    picture = require_shared("esc50/specs") / "1-100032-A-0.wav.png"
    if not picture.exists():
        pytest.skip(f"{picture} not present")
    got = read_spectrogram_image(picture)
    assert got.shape == (184, 247)
    assert got.min() == 0.0 and got.max() > 0.9
