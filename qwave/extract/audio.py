"""Audio readers: any soundfile format (wav/flac/ogg) -> mono float32 at one sample rate, optionally fixed length."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from qwave.errors import DataError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3")
CROP_POLICIES = ("center", "start")
LEVELS = ("peak", "rms", "none")


def read_audio(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read ``path`` as mono float32 (channels averaged), resampled to ``sample_rate`` when given."""
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise DataError(f"audio file {path} is empty (0 bytes).")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise DataError(f"audio file {path} cannot be read ({err}).") from err
    if data.shape[0] == 0:
        raise DataError(f"audio file {path} holds no samples.")
    wave = data.mean(axis=1)
    if not np.all(np.isfinite(wave)):
        raise DataError(f"audio file {path} holds NaN or infinite samples.")
    if sample_rate and sample_rate != rate:
        wave, rate = resample(wave, rate, sample_rate), sample_rate
    return wave.astype(np.float32), int(rate)


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling by the exact rational factor rate_out / rate_in (Kaiser-windowed FIR)."""
    ratio = Fraction(rate_out, rate_in).limit_denominator(1000)
    return resample_poly(wave, ratio.numerator, ratio.denominator).astype(np.float32)


def fix_length(wave: np.ndarray, length: int, crop: str = "center") -> np.ndarray:
    """Crop (centre or start) or zero-pad at the end to exactly ``length`` samples."""
    if crop not in CROP_POLICIES:
        raise DataError(f"crop policy {crop!r} is not one of {', '.join(CROP_POLICIES)}.")
    if len(wave) >= length:
        start = (len(wave) - length) // 2 if crop == "center" else 0
        return wave[start : start + length]
    return np.pad(wave, (0, length - len(wave)))


def normalize_level(wave: np.ndarray, level: str = "peak") -> np.ndarray:
    """Scale to unit peak (max |x| = 1) or unit RMS so recording gain is not a feature; silence stays 0."""
    if level not in LEVELS:
        raise DataError(f"level normalisation {level!r} is not one of {', '.join(LEVELS)}.")
    if level == "none":
        return wave
    size = float(np.abs(wave).max()) if level == "peak" else float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    return (wave / size).astype(np.float32) if size > 0 else wave
