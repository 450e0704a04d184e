"""Front ends: one input file -> the array a backbone embeds (log-mel spectrogram, spectrogram image, waveform).

Everything is plain numpy/scipy so that results do not depend on an audio library's version:
power STFT (periodic Hann window, centred frames with reflect padding), a Slaney-style mel filterbank
(linear below 1 kHz, logarithmic above, area-normalised triangles), natural log of mel power plus a floor,
and MFCC as the orthonormal DCT-II of the log-mel bands. Leading and trailing silence is trimmed from the
log-mel spectrogram (frames more than ``trim_db`` below the loudest frame), so that statistics and time spans
describe the sound itself rather than how much silence the recording holds around it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.fft import dct, rfft
from scipy.signal import get_window
from scipy.special import logsumexp

from qwave.errors import ConfigError, DataError
from qwave.extract.audio import AUDIO_SUFFIXES, CROP_POLICIES, LEVELS, fix_length, normalize_level, read_audio
from qwave.extract.image import IMAGE_SUFFIXES, read_spectrogram_image


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale: 3 mels per 200 Hz below 1 kHz, then 27 mels per factor 6.4."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3.0)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0), mel * 200.0 / 3.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, equally spaced in mel, each normalised to unit area (Slaney)."""
    fmax = sample_rate / 2.0 if fmax is None else fmax
    if not 0.0 <= fmin < fmax <= sample_rate / 2.0:
        raise DataError(f"mel range fmin={fmin} fmax={fmax} must satisfy 0 <= fmin < fmax <= sample_rate/2.")
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (upper - lower))
    return weights.astype(np.float32)


def power_spectrogram(wave: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """|STFT|^2 as (n_fft // 2 + 1, frames): centred frames (reflect padding), periodic Hann window."""
    if len(wave) < 2:
        raise DataError("a waveform needs at least two samples for a spectrogram.")
    pad = n_fft // 2
    padded = np.pad(wave, pad, mode="reflect" if len(wave) > pad else "constant")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    spectrum = rfft(frames * get_window("hann", n_fft, fftbins=True).astype(np.float32), axis=1)
    return (np.abs(spectrum) ** 2).T.astype(np.float32)


def log_mel_spectrogram(wave: np.ndarray, sample_rate: int, n_fft: int, hop: int, n_mels: int,
                        fmin: float = 0.0, fmax: float | None = None, floor: float = 1e-10) -> np.ndarray:
    """(n_mels, frames) natural log of mel-band power, ``log(mel + floor)``."""
    mel = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax) @ power_spectrogram(wave, n_fft, hop)
    return np.log(mel + floor).astype(np.float32)


def mfcc(log_mel: np.ndarray, n_mfcc: int) -> np.ndarray:
    """(n_mfcc, frames) cepstral coefficients: orthonormal DCT-II over the mel axis of a log-mel spectrogram."""
    return dct(log_mel, type=2, axis=0, norm="ortho")[:n_mfcc].astype(np.float32)


def trim_silence(log_mel: np.ndarray, top_db: float) -> np.ndarray:
    """Frames from the first to the last whose total mel power is within ``top_db`` dB of the loudest frame
    (quieter frames inside that span are kept); ``top_db <= 0`` keeps every frame."""
    if top_db <= 0:
        return log_mel
    energy = logsumexp(log_mel.astype(np.float64), axis=0)  # natural log of each frame's mel power
    loud = np.flatnonzero(energy >= energy.max() - top_db * np.log(10.0) / 10.0)
    return log_mel[:, loud[0] : loud[-1] + 1]


def _check_clip_options(crop: str, level: str, duration: float | None) -> None:
    if crop not in CROP_POLICIES:
        raise ConfigError(f"--crop {crop!r} is not one of {', '.join(CROP_POLICIES)}.")
    if level not in LEVELS:
        raise ConfigError(f"--level {level!r} is not one of {', '.join(LEVELS)}.")
    if duration is not None and duration <= 0:
        raise ConfigError(f"--duration must be positive seconds, got {duration}.")


class _Recorded:
    """A front end whose settings, all but its file ``suffixes``, go into the sidecar (``params``)."""

    def params(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "suffixes"}


@dataclass
class MelSettings(_Recorded):
    """Clip and mel settings shared by the log-mel front ends; unset n_fft / hop take each front end's defaults."""

    sample_rate: int
    n_mels: int = 32
    n_fft: int | None = None
    hop: int | None = None
    fmin: float = 0.0
    fmax: float | None = None
    duration: float | None = None
    crop: str = "center"
    level: str = "peak"

    def _resolve(self, window_seconds: float, hop: Callable[[int], int]) -> None:
        """Default n_fft (next power of two >= ``window_seconds``) and hop (``hop(n_fft)``), then validate."""
        if self.n_fft is None:
            self.n_fft = int(2 ** np.ceil(np.log2(window_seconds * self.sample_rate)))
        if self.hop is None:
            self.hop = hop(self.n_fft)
        if self.n_mels < 1 or self.n_fft < 8 or self.hop < 1:
            raise ConfigError(f"{self.name} needs n_mels >= 1, n_fft >= 8 and hop >= 1 (got {self.n_mels}, "
                              f"{self.n_fft}, {self.hop}).")
        _check_clip_options(self.crop, self.level, self.duration)

    def waveform(self, path: Path) -> np.ndarray:
        return Waveform(self.sample_rate, self.duration, self.crop, self.level).load(path)


@dataclass
class LogMel(MelSettings):
    """Audio -> (n_mels, frames) log-mel of the level-normalised clip, silence at both ends trimmed (frames more
    than ``trim_db`` below the loudest; 0 keeps them); n_fft / hop default to 64 ms / 10 ms."""

    trim_db: float = 20.0
    name: str = "logmel"
    suffixes: tuple[str, ...] = AUDIO_SUFFIXES

    def __post_init__(self) -> None:
        self._resolve(0.064, lambda n_fft: max(1, round(0.010 * self.sample_rate)))
        if self.trim_db < 0:
            raise ConfigError(f"--trim-db must be >= 0 dB (0 keeps silence), got {self.trim_db}.")

    def load(self, path: Path) -> np.ndarray:
        log_mel = log_mel_spectrogram(self.waveform(path), self.sample_rate, self.n_fft, self.hop, self.n_mels,
                                      self.fmin, self.fmax)
        return trim_silence(log_mel, self.trim_db)


@dataclass
class Waveform(_Recorded):
    """Audio -> mono float32 at ``sample_rate``, level-normalised, optionally cropped/padded to ``duration`` s."""

    sample_rate: int
    duration: float | None = None
    crop: str = "center"
    level: str = "peak"
    name: str = "waveform"
    suffixes: tuple[str, ...] = AUDIO_SUFFIXES

    def __post_init__(self) -> None:
        _check_clip_options(self.crop, self.level, self.duration)

    def load(self, path: Path) -> np.ndarray:
        wave = normalize_level(read_audio(path, self.sample_rate)[0], self.level)
        if self.duration:
            wave = fix_length(wave, int(round(self.duration * self.sample_rate)), self.crop)
        return wave


@dataclass
class LogMelImage(MelSettings):
    """Audio -> a log-mel spectrogram picture's intensity (mel, time) in [0, 1], as librosa's ``specshow`` draws it.

    Power in dB relative to the clip's loudest bin, floored ``top_db`` below it, then scaled to [0, 1] over the
    clip's own range (the colour scale of a rendered spectrogram). Image backbones draw it through a colour map,
    so audio folders reach them in the same form as rendered spectrogram PNGs. n_fft / hop default to the next
    power of two >= 46 ms (2048 at 44.1 kHz) / a quarter of it; 128 mel bands.
    """

    n_mels: int = 128
    top_db: float = 80.0
    name: str = "logmel-image"
    suffixes: tuple[str, ...] = AUDIO_SUFFIXES

    def __post_init__(self) -> None:
        self._resolve(0.046, lambda n_fft: max(1, n_fft // 4))
        if self.top_db <= 0:
            raise ConfigError(f"--top-db must be > 0 dB, got {self.top_db}.")

    def load(self, path: Path) -> np.ndarray:
        return log_mel_picture(self.waveform(path), self.sample_rate, self.n_fft, self.hop, self.n_mels, self.fmin,
                               self.fmax, self.top_db)


def log_mel_picture(wave: np.ndarray, sample_rate: int, n_fft: int, hop: int, n_mels: int, fmin: float = 0.0,
                    fmax: float | None = None, top_db: float = 80.0) -> np.ndarray:
    """(n_mels, frames) in [0, 1]: 10 log10 of mel power relative to its maximum, floored at ``-top_db``, min-max
    scaled; a silent clip gives zeros."""
    mel = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax) @ power_spectrogram(wave, n_fft, hop)
    db = 10.0 * np.log10(np.maximum(mel.astype(np.float64), 1e-10))
    db = np.maximum(db, db.max() - top_db)
    span = db.max() - db.min()
    return ((db - db.min()) / span if span > 0 else np.zeros_like(db)).astype(np.float32)


@dataclass
class SpectrogramImage(_Recorded):
    """Rendered spectrogram picture -> (frequency, time) intensity in [0, 1] (see :mod:`qwave.extract.image`)."""

    colormap: str = "magma"
    crop_axes: bool = True
    name: str = "image"
    suffixes: tuple[str, ...] = IMAGE_SUFFIXES

    def load(self, path: Path) -> np.ndarray:
        return read_spectrogram_image(path, self.colormap, self.crop_axes)


FRONTENDS = {"logmel": LogMel, "logmel-image": LogMelImage, "waveform": Waveform, "image": SpectrogramImage}
