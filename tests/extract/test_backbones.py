"""Backbones: built-in statistics against closed forms; pretrained ones load only from local files made here."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from qwave.errors import ConfigError
from qwave.extract.backbones import (
    BackboneOptions,
    ImageStats,
    LogMelStats,
    MfccSegments,
    images_to_tensor,
    load_backbone,
)


def test_logmel_stats_of_a_constant_spectrogram_follow_the_closed_form() -> None:
    n_mels, n_mfcc, c = 8, 4, -3.0
    got = LogMelStats(n_mfcc=n_mfcc).embed([np.full((n_mels, 30), c, np.float32)])[0]
    assert got.shape == (8 * n_mels + 2 * n_mfcc,)
    mean, std, low, high = got[:n_mels], got[n_mels:2 * n_mels], got[2 * n_mels:3 * n_mels], got[3 * n_mels:4 * n_mels]
    np.testing.assert_allclose([mean, low, high], c, rtol=1e-6)
    np.testing.assert_allclose(std, 0.0, atol=1e-6)
    np.testing.assert_allclose(got[4 * n_mels:8 * n_mels], 0.0, atol=1e-6)  # delta of a constant is zero
    cepstrum_mean = got[8 * n_mels:8 * n_mels + n_mfcc]  # orthonormal DCT of a constant: c * sqrt(n), then zeros
    np.testing.assert_allclose(cepstrum_mean, [c * np.sqrt(n_mels), 0, 0, 0], atol=1e-5)


def test_logmel_stats_delta_of_a_linear_ramp_is_its_slope() -> None:
    slope, frames, n_mels = 0.25, 200, 4
    ramp = np.tile(slope * np.arange(frames, dtype=np.float32), (n_mels, 1))
    got = LogMelStats(n_mfcc=2).embed([ramp])[0]
    delta_mean, delta_min = got[4 * n_mels:5 * n_mels], got[6 * n_mels:7 * n_mels]
    # interior frames have delta = slope exactly; the 4 repeated edge frames on each side have less
    assert np.all(delta_mean < slope) and np.all(delta_mean > slope * (1 - 8 / frames))
    assert np.all(delta_min >= 0) and np.all(got[7 * n_mels:8 * n_mels] == pytest.approx(slope, rel=1e-5))


def test_mfcc_segments_follow_a_step_in_time() -> None:
    n_mels, frames = 8, 60
    log_mel = np.full((n_mels, frames), -2.0, np.float32)
    log_mel[:, frames // 2 :] = 4.0  # the first three of six spans at -2, the last three at 4
    got = MfccSegments(n_mfcc=3, segments=6).embed([log_mel])[0]
    assert got.shape == ((2 + 6) * 3,)
    root = np.sqrt(n_mels)  # orthonormal DCT of a constant c over the bands: c * sqrt(n), then zeros
    np.testing.assert_allclose(got[:3], [1.0 * root, 0, 0], atol=1e-5)  # mean over the clip
    np.testing.assert_allclose(got[3:6], [3.0 * root, 0, 0], atol=1e-5)  # std over the clip
    spans = got[6:].reshape(6, 3)
    np.testing.assert_allclose(spans[:, 0], [-2 * root] * 3 + [4 * root] * 3, rtol=1e-5)
    np.testing.assert_allclose(spans[:, 1:], 0.0, atol=1e-5)


def test_image_stats_size_and_band_means_of_a_picture_constant_over_time() -> None:
    bands, coarse = 4, 2
    rows = np.linspace(0, 1, 16, dtype=np.float32)
    picture = np.tile(rows[:, None], (1, 10))
    got = ImageStats(bands=bands, coarse=coarse).embed([picture])[0]
    assert got.shape == (bands * 9 + coarse * coarse,)
    np.testing.assert_allclose(got[:bands], rows.reshape(bands, 4).mean(axis=1), rtol=1e-6)  # band means
    np.testing.assert_allclose(got[bands:2 * bands], 0.0, atol=1e-7)  # no change over time: std 0
    np.testing.assert_allclose(got[-4:], [rows[:8].mean(), rows[:8].mean(), rows[8:].mean(), rows[8:].mean()],
                               rtol=1e-6)


def test_images_to_tensor_scales_flips_so_high_frequencies_are_on_top_and_normalises() -> None:
    spectrogram = np.tile(np.arange(8, dtype=np.float32)[:, None], (1, 8))  # row 0 = lowest frequency
    image = images_to_tensor([spectrogram], size=8)
    assert image.shape == (1, 3, 8, 8)
    red_top = (1.0 - 0.485) / 0.229  # highest frequency scaled to 1, ImageNet red channel
    assert image[0, 0, 0, 0].item() == pytest.approx(red_top, rel=1e-5)
    assert image[0, 0, -1, 0].item() == pytest.approx((0.0 - 0.485) / 0.229, rel=1e-5)


def tiny_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten())


def test_exported_program_backbone_loads_a_local_pt2_file_and_matches_the_module(tmp_path: Path) -> None:
    module = tiny_cnn().eval()
    program = torch.export.export(module, (torch.zeros(2, 3, 16, 16),), dynamic_shapes=({0: torch.export.Dim("b")},))
    torch.export.save(program, tmp_path / "tiny.pt2")
    backbone = load_backbone(f"torch:{tmp_path / 'tiny.pt2'}", BackboneOptions(device="cpu", input_size=16))
    batch = [np.random.default_rng(i).normal(size=(20, 30)).astype(np.float32) for i in range(3)]
    with torch.no_grad():
        expected = module(images_to_tensor(batch, 16)).numpy()
    assert backbone.name == "torch:tiny.pt2" and backbone.dim == 5
    np.testing.assert_allclose(backbone.embed(batch), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_backbone_loads_a_local_file_and_matches_the_module(tmp_path: Path) -> None:
    module = tiny_cnn().eval()
    torch.jit.save(torch.jit.script(module), tmp_path / "tiny.pt")
    backbone = load_backbone(f"torchscript:{tmp_path / 'tiny.pt'}", BackboneOptions(device="cpu", input_size=16))
    batch = [np.random.default_rng(i).normal(size=(20, 30)).astype(np.float32) for i in range(3)]
    got = backbone.embed(batch)
    with torch.no_grad():
        expected = module(images_to_tensor(batch, 16)).numpy()
    assert backbone.dim == 5 and got.shape == (3, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got, backbone.embed(batch))  # deterministic


class TinyNet(torch.nn.Module):
    """Stands in for a torchvision architecture: features, pooling, and a ``fc`` classification head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = tiny_cnn()
        self.fc = torch.nn.Linear(5, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def test_torchvision_backbone_loads_local_weights_and_drops_the_head(tmp_path: Path, monkeypatch) -> None:
    fake = types.ModuleType("torchvision")
    fake.models = types.SimpleNamespace(tinynet=lambda weights=None: TinyNet())
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    trained = TinyNet()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)  # weights that differ from a fresh instance, so loading them is visible
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "tinynet.pth")
    backbone = load_backbone("torchvision:tinynet", BackboneOptions(weights=str(tmp_path / "tinynet.pth"),
                                                                    device="cpu", input_size=16))
    batch = [np.random.default_rng(0).normal(size=(12, 12)).astype(np.float32)]
    with torch.no_grad():
        expected = trained.body(images_to_tensor(batch, 16)).numpy()
    assert backbone.dim == 5
    np.testing.assert_allclose(backbone.embed(batch), expected, rtol=1e-5, atol=1e-6)
    torch.save(tiny_cnn().state_dict(), tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="other.pth does not fit backbone torchvision:tinynet"):
        load_backbone("torchvision:tinynet", BackboneOptions(weights=str(tmp_path / "other.pth")))


@pytest.mark.parametrize("spec, message", [
    ("torchscript:/nonexistent/model.pt", "/nonexistent/model.pt .* does not exist .*never downloads"),
    ("torchvision:efficientnet_b3", "needs --weights PATH"),
    ("timm:resnet18", "needs --weights PATH"),
    ("hf:", "needs a local model folder"),
    ("clip", "backbone 'clip' is unknown"),
])
def test_missing_weights_and_unknown_backbones_are_config_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_backbone(spec)


@pytest.mark.parametrize("library, spec", [("torchvision", "torchvision:resnet18"), ("timm", "timm:resnet18"),
                                           ("transformers", "hf:{folder}")])
def test_a_missing_model_library_is_a_clear_error_not_a_download(tmp_path: Path, library: str, spec: str) -> None:
    if importlib.util.find_spec(library) is not None:
        pytest.skip(f"{library} is installed here")
    (tmp_path / "w.pth").write_bytes(b"")
    options = BackboneOptions(weights=str(tmp_path / "w.pth"))
    with pytest.raises(ConfigError, match=f"{library} is not installed"):
        load_backbone(spec.format(folder=tmp_path), options)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name, kind", [("junk.pt", "TorchScript model"), ("junk.pt2", "torch.export program")])
def test_a_file_that_is_not_a_saved_model_is_a_config_error(tmp_path: Path, name: str, kind: str) -> None:
    (tmp_path / name).write_bytes(b"junk")
    with pytest.raises(ConfigError, match=f"{name} is not a {kind}"):
        load_backbone(f"torch:{tmp_path / name}")
