"""Audio readers: formats, mono mix, resampling, crop/pad and level normalisation against known signals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from qwave.errors import DataError
from qwave.extract.audio import fix_length, normalize_level, read_audio, resample


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("suffix, subtype", [(".wav", "PCM_16"), (".flac", "PCM_16"), (".ogg", "VORBIS")])
def test_read_audio_reads_each_format_back_to_the_written_tone(tmp_path: Path, suffix: str, subtype: str) -> None:
    wave = tone(440.0, 8000, 0.5)
    path = tmp_path / f"a{suffix}"
    sf.write(path, wave, 8000, subtype=subtype)
    got, rate = read_audio(path)
    assert rate == 8000 and got.dtype == np.float32
    assert abs(peak_hz(got, rate) - 440.0) < 3.0
    if suffix != ".ogg":  # lossless formats give the samples back to 16-bit precision
        np.testing.assert_allclose(got, wave, atol=1.0 / 2**15)


def test_read_audio_mixes_stereo_to_the_channel_mean(tmp_path: Path) -> None:
    left, right = tone(300.0, 8000, 0.25, 0.4), tone(700.0, 8000, 0.25, 0.2)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 8000, subtype="FLOAT")
    got, _ = read_audio(tmp_path / "s.wav")
    np.testing.assert_allclose(got, (left + right) / 2, atol=1e-7)


def test_resampling_keeps_frequency_and_duration() -> None:
    wave = tone(1000.0, 44100, 1.0)
    out = resample(wave, 44100, 16000)
    assert len(out) == 16000
    assert abs(peak_hz(out, 16000) - 1000.0) < 2.0
    middle = slice(2000, 14000)  # away from the filter's edge transients
    np.testing.assert_allclose(out[middle], tone(1000.0, 16000, 1.0)[middle], atol=2e-3)


def test_read_audio_resamples_to_the_requested_rate(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", tone(500.0, 22050, 0.5), 22050, subtype="FLOAT")
    got, rate = read_audio(tmp_path / "a.wav", sample_rate=8000)
    assert rate == 8000 and len(got) == 4000
    assert abs(peak_hz(got, rate) - 500.0) < 3.0


def test_fix_length_crops_centre_or_start_and_pads_with_zeros_at_the_end() -> None:
    wave = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(fix_length(wave, 4, "center"), [3, 4, 5, 6])
    np.testing.assert_array_equal(fix_length(wave, 4, "start"), [0, 1, 2, 3])
    np.testing.assert_array_equal(fix_length(wave, 12), [*range(10), 0, 0])
    with pytest.raises(DataError, match="crop policy 'middle'"):
        fix_length(wave, 4, "middle")


def test_normalize_level_gives_unit_peak_or_rms_and_keeps_silence() -> None:
    wave = tone(100.0, 8000, 0.5, amplitude=0.1)
    assert np.abs(normalize_level(wave, "peak")).max() == pytest.approx(1.0, abs=1e-6)
    assert np.sqrt(np.mean(normalize_level(wave, "rms") ** 2)) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(normalize_level(np.zeros(5, np.float32), "peak"), np.zeros(5))
    assert normalize_level(wave, "none") is wave


@pytest.mark.parametrize("content", [b"", b"this is not audio at all" * 10])
def test_unreadable_audio_is_a_data_error_naming_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.wav"
    path.write_bytes(content)
    with pytest.raises(DataError, match="broken.wav"):
        read_audio(path)


def test_audio_without_samples_is_a_data_error(tmp_path: Path) -> None:
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 8000)
    with pytest.raises(DataError, match="empty.wav holds no samples"):
        read_audio(tmp_path / "empty.wav")


def test_a_zero_byte_file_is_reported_as_empty_not_as_an_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(DataError, match=r"zero.wav is empty \(0 bytes\)"):
        read_audio(tmp_path / "zero.wav")
