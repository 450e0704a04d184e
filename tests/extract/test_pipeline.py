"""The extraction run end to end on small synthetic folders: table, sidecar, determinism, bad files, resume, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from qwave.cli import main
from qwave.data import TableSpec, load_table
from qwave.errors import DataError
from qwave.extract import ExtractConfig, extract_table
from qwave.extract.audio import normalize_level, read_audio
from qwave.extract.backbones import LogMelStats, MfccSegments
from qwave.extract.frontends import log_mel_spectrogram, trim_silence

matplotlib.use("Agg")
RATE, N_MELS, N_MFCC = 8000, 16, 8
SPEAKERS = ("bob", "amy", "cid")
# Float32 features of the same audio by another code path (one file against a batch, another batch size): FFT and
# BLAS pick their kernels by CPU and matrix shape, so they agree to rounding, not bit for bit on every CPU.
FEATURE_TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture
def fsdd_dir(tmp_path: Path) -> Path:
    """3 speakers x 2 digits x 2 takes of tones whose pitch depends on the digit and loudness on the speaker."""
    root = tmp_path / "recordings"
    root.mkdir()
    t = np.arange(int(0.3 * RATE)) / RATE
    for s, speaker in enumerate(SPEAKERS):
        for digit in (1, 2):
            for take in (0, 1):
                wave = (0.1 + 0.2 * s) * np.sin(2 * np.pi * (300 * digit + 20 * take) * t)
                sf.write(root / f"{digit}_{speaker}_{take}.wav", wave.astype(np.float32), RATE)
    return root


def config(root: Path, out: Path, **changes) -> ExtractConfig:
    settings = {"layout": "fsdd", "backbone": "logmel-stats", "n_mels": N_MELS, "n_mfcc": N_MFCC, "batch_size": 4,
                **changes}
    return ExtractConfig(input_dir=root, out=out, **settings)


def features(frame: pd.DataFrame) -> np.ndarray:
    return frame[[c for c in frame.columns if c.isdigit()]].to_numpy()


def test_fsdd_table_has_metadata_provenance_and_the_reference_features(fsdd_dir: Path, tmp_path: Path) -> None:
    result = extract_table(config(fsdd_dir, tmp_path / "t.parquet"))
    table = pd.read_parquet(tmp_path / "t.parquet")
    assert list(table.columns[:9]) == ["fold", "name", "speaker", "take", "label", "category", "group", "path",
                                       "backbone"]
    assert table.shape == (12, 9 + 8 * N_MELS + 2 * N_MFCC)
    assert table[[str(i) for i in range(3)]].dtypes.eq(np.float32).all()
    assert dict(zip(table["speaker"], table["fold"], strict=True)) == {"amy": 1, "bob": 2, "cid": 3}
    row = table.set_index("name").loc["2_cid_1.wav"]
    wave = normalize_level(read_audio(fsdd_dir / "2_cid_1.wav")[0], "peak")
    expected = LogMelStats(N_MFCC).embed_one(log_mel_spectrogram(wave, RATE, 512, 80, N_MELS))
    np.testing.assert_allclose(row[[str(i) for i in range(len(expected))]].to_numpy(np.float32), expected,
                               **FEATURE_TOL)
    assert result.table.equals(table)


def test_sidecar_records_backbone_frontend_rate_version_and_folds(fsdd_dir: Path, tmp_path: Path) -> None:
    extract_table(config(fsdd_dir, tmp_path / "t.parquet"))
    sidecar = json.loads((tmp_path / "t.parquet.json").read_text())
    assert sidecar["backbone"]["name"] == "logmel-stats" and sidecar["backbone"]["dim"] == 8 * N_MELS + 2 * N_MFCC
    assert sidecar["frontend"] == {"sample_rate": RATE, "n_mels": N_MELS, "n_fft": 512, "hop": 80, "fmin": 0.0,
                                   "fmax": None, "duration": None, "crop": "center", "level": "peak",
                                   "trim_db": 20.0, "name": "logmel"}
    assert sidecar["sample_rate"] == RATE and sidecar["qwave_version"]
    assert sidecar["rows_per_fold"] == {"1": 4, "2": 4, "3": 4} and sidecar["skipped"] == []
    assert not (tmp_path / "t.parquet.parts").exists()


def test_defaults_trim_silence_and_embed_32_band_mfcc_segments(fsdd_dir: Path, tmp_path: Path) -> None:
    silence = np.zeros(int(0.25 * RATE), np.float32)
    tone = np.sin(2 * np.pi * 700 * np.arange(int(0.3 * RATE)) / RATE).astype(np.float32)
    sf.write(fsdd_dir / "3_dan_0.wav", np.concatenate([silence, tone, silence]), RATE)
    result = extract_table(ExtractConfig(input_dir=fsdd_dir, out=tmp_path / "t.parquet", layout="fsdd"))
    assert result.sidecar["backbone"]["name"] == "mfcc-segments" and result.sidecar["backbone"]["dim"] == 8 * 20
    assert result.sidecar["frontend"]["n_mels"] == 32 and result.sidecar["frontend"]["trim_db"] == 20.0
    wave = normalize_level(read_audio(fsdd_dir / "3_dan_0.wav")[0], "peak")
    log_mel = log_mel_spectrogram(wave, RATE, 512, 80, 32)
    voiced = trim_silence(log_mel, 20.0)
    assert voiced.shape[1] < log_mel.shape[1] - 40  # 0.5 s of the 0.8 s are silence
    row = result.table.set_index("name").loc["3_dan_0.wav", [str(i) for i in range(160)]].to_numpy(np.float32)
    np.testing.assert_allclose(row, MfccSegments(20, 6).embed_one(voiced), **FEATURE_TOL)


def test_two_runs_give_identical_features_and_csv_loads_as_a_qwave_table(fsdd_dir: Path, tmp_path: Path) -> None:
    extract_table(config(fsdd_dir, tmp_path / "a.parquet"))
    extract_table(config(fsdd_dir, tmp_path / "b.csv", batch_size=5))
    a, b = pd.read_parquet(tmp_path / "a.parquet"), pd.read_csv(tmp_path / "b.csv")
    np.testing.assert_allclose(features(a), features(b).astype(np.float32), **FEATURE_TOL)
    dataset = load_table(TableSpec(str(tmp_path / "b.csv"), label="label", fold="fold", id="name"))
    assert dataset.n_features == 8 * N_MELS + 2 * N_MFCC and sorted(set(dataset.fold)) == [1, 2, 3]


def test_a_bad_file_is_an_error_naming_it_unless_skip_bad(fsdd_dir: Path, tmp_path: Path) -> None:
    (fsdd_dir / "1_dan_0.wav").write_bytes(b"RIFF but not really a wave file")
    with pytest.raises(DataError, match="1_dan_0.wav cannot be read.*--skip-bad"):
        extract_table(config(fsdd_dir, tmp_path / "t.parquet"))
    assert not (tmp_path / "t.parquet").exists()
    result = extract_table(config(fsdd_dir, tmp_path / "t.parquet", skip_bad=True, resume=True))
    assert len(result.table) == 12 and "1_dan_0.wav" not in set(result.table["name"])
    assert [s["path"] for s in result.skipped] == ["1_dan_0.wav"]
    sidecar = json.loads((tmp_path / "t.parquet.json").read_text())
    assert sidecar["skipped"][0]["path"] == "1_dan_0.wav" and "cannot be read" in sidecar["skipped"][0]["reason"]


def test_an_interrupted_run_resumes_without_reembedding_finished_files(fsdd_dir: Path, tmp_path: Path) -> None:
    fresh = extract_table(config(fsdd_dir, tmp_path / "fresh.parquet")).table

    def stop_after_first_batch(done: int, total: int) -> None:
        raise KeyboardInterrupt

    out = tmp_path / "t.parquet"
    with pytest.raises(KeyboardInterrupt):
        extract_table(config(fsdd_dir, out, chunk_files=1), stop_after_first_batch)
    assert not out.exists() and (tmp_path / "t.parquet.parts").is_dir()
    with pytest.raises(DataError, match="partial extraction exists .* --resume"):
        extract_table(config(fsdd_dir, out, chunk_files=1))
    with pytest.raises(DataError, match=r"different settings .*changed: frontend"):
        extract_table(config(fsdd_dir, out, chunk_files=1, n_mels=8, resume=True))
    first = sorted(fsdd_dir.glob("*.wav"))[0]  # embedded before the stop: corrupt it to prove it is not read again
    first.write_bytes(b"garbage")
    resumed = extract_table(config(fsdd_dir, out, chunk_files=1, resume=True)).table
    pd.testing.assert_frame_equal(resumed, fresh)


def test_esc50_pictures_give_official_folds_super_categories_and_image_stats(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    root = tmp_path / "specs"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("1-100-A-0.wav.png", "2-200-A-15.wav.png", "3-300-B-49.wav.png"):
        plt.imsave(root / name, rng.random((24, 40)), cmap="magma", vmin=0, vmax=1, origin="lower")
    table = extract_table(ExtractConfig(input_dir=root, out=tmp_path / "e.parquet", layout="esc50")).table
    assert table["name"].tolist() == ["1-100-A-0.wav", "2-200-A-15.wav", "3-300-B-49.wav"]
    assert table["fold"].tolist() == [1, 2, 3] and table["class_id"].tolist() == [0, 1, 4]
    assert table["backbone"].eq("image-stats").all() and features(table).shape == (3, 32 * 9 + 16 * 16)
    assert np.isfinite(features(table)).all()  # 24-row pictures still fill 32 bands


def test_cli_writes_the_default_output_and_reports_errors_in_one_line(fsdd_dir: Path, tmp_path: Path,
                                                                     monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["extract", str(fsdd_dir), "--layout", "fsdd", "--n-mels", "8", "--quiet"]) == 0
    assert len(pd.read_parquet(tmp_path / "fsdd_logmel.parquet")) == 12
    sidecar = json.loads((tmp_path / "fsdd_logmel.parquet.json").read_text())
    assert sidecar["command"].startswith("qwave extract ") and "--n-mels 8" in sidecar["command"]
    assert main(["extract", str(tmp_path / "nowhere"), "--out", "x.parquet"]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    assert main(["extract", str(fsdd_dir), "--out", "x.txt"]) == 2


def test_parallel_workers_give_the_single_process_table_and_resume_after_a_failure(fsdd_dir: Path,
                                                                                   tmp_path: Path) -> None:
    for speaker in ("dan", "eve", "fay"):  # a larger folder: 24 files, 12 batches of 2
        for digit in (1, 2):
            for take in (0, 1):
                sf.write(fsdd_dir / f"{digit}_{speaker}_{take}.wav", (0.3 * np.sin(np.arange(2400) * digit * 0.2
                                                                                   + take)).astype(np.float32), RATE)
    single = extract_table(config(fsdd_dir, tmp_path / "single.parquet", batch_size=2)).table
    last = sorted(fsdd_dir.glob("*.wav"))[-1]
    good = last.read_bytes()
    last.write_bytes(b"not a wave file")
    out = tmp_path / "parallel.parquet"
    with pytest.raises(DataError, match=f"{last.name} cannot be read"):
        extract_table(config(fsdd_dir, out, batch_size=2, chunk_files=2, workers=2))
    parts = sorted((tmp_path / "parallel.parquet.parts").glob("part-*.parquet"))
    assert parts and not out.exists()  # the batches embedded before the failure are kept for --resume
    last.write_bytes(good)
    resumed = extract_table(config(fsdd_dir, out, batch_size=2, chunk_files=2, workers=2, resume=True)).table
    assert resumed["path"].tolist() == single["path"].tolist()
    pd.testing.assert_frame_equal(resumed.drop(columns=[c for c in resumed if c.isdigit()]),
                                  single.drop(columns=[c for c in single if c.isdigit()]))
    # worker processes run with fewer threads; numpy's FFT and reductions agree to float32 rounding
    np.testing.assert_allclose(features(resumed), features(single), rtol=1e-5, atol=1e-5)
