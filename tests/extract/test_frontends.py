"""Silence trimming of the log-mel front end, against spectrograms whose frame powers are set by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from qwave.errors import ConfigError
from qwave.extract.frontends import LogMel, trim_silence

POWERS = np.array([1e-6, 1e-6, 1.0, 1e-3, 0.5, 2e-4, 1e-6])  # total mel power of each frame


def spectrogram() -> np.ndarray:
    """Two mel bands sharing each frame's power equally, as natural-log values."""
    return np.log(np.stack([POWERS / 2, POWERS / 2])).astype(np.float32)


@pytest.mark.parametrize(("top_db", "first", "last"), [(20.0, 2, 4), (40.0, 2, 5), (70.0, 0, 6), (0.0, 0, 6)])
def test_trim_keeps_the_span_of_frames_within_top_db_of_the_loudest(top_db: float, first: int, last: int) -> None:
    np.testing.assert_array_equal(trim_silence(spectrogram(), top_db), spectrogram()[:, first : last + 1])


def test_logmel_front_end_drops_leading_and_trailing_silence(tmp_path: Path) -> None:
    rate, hop = 8000, 80
    tone = np.sin(2 * np.pi * 500 * np.arange(int(0.3 * rate)) / rate)
    silence = np.zeros(int(0.2 * rate))
    sf.write(tmp_path / "x.wav", np.concatenate([silence, tone, silence]).astype(np.float32), rate)
    untrimmed = LogMel(rate, trim_db=0).load(tmp_path / "x.wav")
    trimmed = LogMel(rate).load(tmp_path / "x.wav")
    assert untrimmed.shape == (32, 1 + int(0.7 * rate) // hop)
    assert 30 <= trimmed.shape[1] <= 30 + 512 // hop  # the tone's 30 frames, smeared by at most one window
    with pytest.raises(ConfigError, match="trim-db"):
        LogMel(rate, trim_db=-1)
