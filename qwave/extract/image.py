"""Rendered spectrogram images (PNG) -> intensity arrays: crop the plot axes away and invert the colour map.

The reference workflow stores spectrograms as pictures drawn by librosa's ``specshow`` (matplotlib, a colour map,
axes and tick labels around the plot). To get the underlying intensity back we (1) find the plot rectangle as the
rows and columns that are mostly non-white and drop its grey spine lines, and (2) map every RGB pixel to the index
of the nearest colour of the colour map's 256-entry table, divided by 255 (the table as current matplotlib draws
it, truncated to bytes, and as older versions drew it, rounded).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy.spatial import cKDTree

from qwave.errors import DataError

IMAGE_SUFFIXES = (".png",)


@lru_cache(maxsize=8)
def colormap_table(name: str, rounded: bool = False) -> np.ndarray:
    """The (256, 3) uint8 RGB table of colour map ``name``: matplotlib's byte lookup table (truncated), or the
    float table rounded to bytes, which is what older matplotlib versions drew (the ESC-50 renderings)."""
    from matplotlib import colormaps

    if name not in colormaps:
        raise DataError(f"colour map {name!r} is not a matplotlib colour map (try magma, viridis, gray).")
    cmap = colormaps[name].resampled(256)
    if rounded:
        return np.round(cmap(np.arange(256))[:, :3] * 255).astype(np.uint8)
    return cmap(np.arange(256), bytes=True)[:, :3].copy()


@lru_cache(maxsize=16)
def _tree(name: str, rounded: bool) -> cKDTree:
    return cKDTree(colormap_table(name, rounded).astype(np.float32))


def _packed(rgb: np.ndarray) -> np.ndarray:
    flat = rgb.reshape(-1, 3).astype(np.int32)
    return (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]


def apply_colormap(intensity: np.ndarray, name: str = "magma") -> np.ndarray:
    """Intensity in [0, 1] -> uint8 RGB exactly as matplotlib maps it: table entry ``min(floor(256 v), 255)``."""
    index = np.clip(np.floor(np.asarray(intensity) * 256), 0, 255).astype(np.int64)
    return colormap_table(name)[index]


def invert_colormap(rgb: np.ndarray, name: str = "magma") -> np.ndarray:
    """uint8 RGB (..., 3) -> float32 intensity in [0, 1]: level of the nearest table colour / 255.

    Of the two tables (truncated, rounded) the one that matches more pixels exactly is used for the whole picture.
    """
    colours, inverse, counts = np.unique(_packed(rgb), return_inverse=True, return_counts=True)
    exact = [counts[np.isin(colours, _packed(colormap_table(name, rounded)))].sum() for rounded in (False, True)]
    unique_rgb = np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], axis=1).astype(np.float32)
    _, index = _tree(name, exact[1] > exact[0]).query(unique_rgb)
    return (index[inverse.ravel()].astype(np.float32) / 255.0).reshape(rgb.shape[:-1])


def _longest_run(mask: np.ndarray) -> tuple[int, int]:
    """First and last index of the longest run of True in a 1-D mask (the plot, not tick labels)."""
    best, start, best_span = (0, -1), None, 0
    for i, value in enumerate(np.append(mask, False)):
        if value and start is None:
            start = i
        elif not value and start is not None:
            if i - start > best_span:
                best, best_span = (start, i - 1), i - start
            start = None
    return best


def _achromatic(line: np.ndarray) -> bool:
    """True for a line of grey / black pixels (axis spine, antialiasing), which colour maps like magma never give."""
    spread = line.max(axis=-1).astype(np.int16) - line.min(axis=-1)
    return bool(np.all(spread <= 2))


def plot_area(rgb: np.ndarray, min_fraction: float = 0.6, max_border: int = 4) -> tuple[slice, slice]:
    """Row and column slices of the plot inside matplotlib axes, spines excluded; whole image if no axes.

    The plot is the longest run of rows (and of columns) that are mostly non-white; up to ``max_border`` grey or
    black lines at each edge of it (the spine and its antialiasing) are then dropped.
    """
    non_white = rgb.min(axis=-1) < 250
    (top, bottom), (left, right) = (_longest_run(non_white.mean(axis=1) > min_fraction),
                                    _longest_run(non_white.mean(axis=0) > min_fraction))
    height, width = non_white.shape
    if bottom - top < 8 or right - left < 8 or ((top, bottom) == (0, height - 1) and (left, right) == (0, width - 1)):
        return slice(0, height), slice(0, width)
    for _ in range(max_border):
        top += _achromatic(rgb[top, left : right + 1])
        bottom -= _achromatic(rgb[bottom, left : right + 1])
        left += _achromatic(rgb[top : bottom + 1, left])
        right -= _achromatic(rgb[top : bottom + 1, right])
    return slice(top, bottom + 1), slice(left, right + 1)


def read_spectrogram_image(path: str | Path, colormap: str = "magma", crop_axes: bool = True) -> np.ndarray:
    """A spectrogram picture -> float32 (frequency, time) intensity in [0, 1], row 0 the lowest frequency.

    ``colormap="none"`` reads the picture as grey levels (luminance) instead of inverting a colour map.
    """
    try:
        with Image.open(path) as picture:
            rgb = np.asarray(picture.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"image file {path} cannot be read ({err}).") from err
    if crop_axes:
        rows, cols = plot_area(rgb)
        rgb = rgb[rows, cols]
    if colormap == "none":
        intensity = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
    else:
        intensity = invert_colormap(rgb, colormap)
    return np.ascontiguousarray(intensity[::-1], dtype=np.float32)
