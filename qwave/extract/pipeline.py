"""The extraction run: layout -> files -> front end -> backbone (batched) -> resumable table + sidecar."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from qwave import __version__
from qwave.errors import ConfigError, DataError
from qwave.extract.audio import AUDIO_SUFFIXES
from qwave.extract.backbones import BackboneOptions, load_backbone, resolve_device
from qwave.extract.frontends import FRONTENDS, LogMel, SpectrogramImage, Waveform
from qwave.extract.image import IMAGE_SUFFIXES
from qwave.extract.layouts import read_layout
from qwave.extract.writer import PartsWriter, check_output_path

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = {"logmel": "mfcc-segments", "image": "image-stats"}
FEATURE_DTYPES = ("float32", "float16")


@dataclass
class ExtractConfig:
    """Every setting of one extraction; recorded in the sidecar and checked again on ``resume``."""

    input_dir: Path
    out: Path | None = None
    layout: str = "folders"
    frontend: str | None = None
    backbone: str | None = None
    weights: str | None = None
    device: str | None = None
    sample_rate: int | None = None
    n_mels: int = 32
    n_fft: int | None = None
    hop: int | None = None
    fmin: float = 0.0
    fmax: float | None = None
    duration: float | None = None
    crop: str = "center"
    level: str = "peak"
    trim_db: float = 20.0
    n_mfcc: int = 20
    segments: int = 6
    colormap: str = "magma"
    crop_axes: bool = True
    input_size: int = 224
    batch_size: int = 32
    chunk_files: int = 512
    dtype: str = "float32"
    seed: int = 0
    metadata: Path | None = None
    skip_bad: bool = False
    resume: bool = False
    extra_sidecar: dict = field(default_factory=dict)


@dataclass
class ExtractResult:
    """What a run produced: the table, its path, and the files skipped as bad."""

    table: pd.DataFrame
    out: Path
    skipped: list[dict]
    sidecar: dict


def _has_files(root: Path, suffixes: tuple[str, ...]) -> bool:
    return root.is_dir() and any(p.name.lower().endswith(suffixes) for p in root.rglob("*") if p.is_file())


def _choose_frontend_name(config: ExtractConfig) -> str:
    if config.frontend:
        if config.frontend not in FRONTENDS:
            raise ConfigError(f"--frontend {config.frontend!r} is unknown; choose one of {', '.join(FRONTENDS)}.")
        return config.frontend
    if config.backbone and config.backbone.startswith("hf:"):
        return "waveform"
    if config.backbone == "image-stats":
        return "image"
    if not _has_files(config.input_dir, AUDIO_SUFFIXES) and _has_files(config.input_dir, IMAGE_SUFFIXES):
        return "image"
    return "logmel"


def _first_sample_rate(root: Path) -> int:
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name.lower().endswith(AUDIO_SUFFIXES):
            try:
                return int(sf.info(str(path)).samplerate)
            except (sf.LibsndfileError, RuntimeError):
                continue
    raise DataError(f"no readable audio file in {root} to take the sample rate from; pass --sample-rate.")


def build_frontend(config: ExtractConfig, name: str, backbone_rate: int | None = None):
    """The front end named ``name`` with the config's parameters (sample rate resolved from the data if unset)."""
    if name == "image":
        return SpectrogramImage(colormap=config.colormap, crop_axes=config.crop_axes)
    rate = config.sample_rate or backbone_rate or _first_sample_rate(config.input_dir)
    if name == "waveform":
        return Waveform(rate, config.duration, config.crop, config.level)
    return LogMel(rate, config.n_mels, config.n_fft, config.hop, config.fmin, config.fmax, config.duration,
                  config.crop, config.level, config.trim_db)


def default_output(config: ExtractConfig, frontend_name: str) -> Path:
    """``<layout>_<frontend>.parquet`` (``<input folder>_<frontend>.parquet`` for folders) in the current folder."""
    stem = config.input_dir.resolve().name if config.layout == "folders" else config.layout
    return Path(f"{stem}_{frontend_name}.parquet")


def _check(config: ExtractConfig) -> None:
    if config.dtype not in FEATURE_DTYPES:
        raise ConfigError(f"--dtype {config.dtype!r} is not one of {', '.join(FEATURE_DTYPES)}.")
    if config.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {config.batch_size}.")
    if not config.input_dir.is_dir():
        raise DataError(f"input folder {config.input_dir} does not exist or is not a folder.")


def extract_table(config: ExtractConfig, on_progress: Callable[[int, int], None] | None = None) -> ExtractResult:
    """Run one extraction; ``on_progress(done, total)`` is called after each batch."""
    _check(config)
    frontend_name = _choose_frontend_name(config)
    out = config.out or default_output(config, frontend_name)
    check_output_path(out)
    backbone_spec = config.backbone or DEFAULT_BACKBONE.get(frontend_name)
    if backbone_spec is None:
        raise ConfigError(f"--frontend {frontend_name} needs an explicit --backbone (e.g. hf:<local folder>).")
    options = BackboneOptions(weights=config.weights, device=config.device, seed=config.seed,
                              input_size=config.input_size, n_mfcc=config.n_mfcc,
                              segments=config.segments)
    backbone = load_backbone(backbone_spec, options)
    if (backbone.input_kind == "waveform") != (frontend_name == "waveform"):
        raise ConfigError(f"backbone {backbone_spec} takes {backbone.input_kind} input, which --frontend "
                          f"{frontend_name} does not give.")
    frontend = build_frontend(config, frontend_name, getattr(backbone, "sample_rate", None))
    layout = read_layout(config.layout, config.input_dir, frontend.suffixes, config.skip_bad, config.metadata)

    settings = {"layout": layout.name, "input_dir": str(config.input_dir.resolve()), "backbone": backbone_spec,
                "weights": config.weights, "frontend": frontend.params(), "seed": config.seed,
                "input_size": config.input_size, "n_mfcc": config.n_mfcc, "segments": config.segments,
                "dtype": config.dtype}
    writer = PartsWriter(out, settings, config.resume, config.chunk_files)
    done = writer.done()
    for path, reason in layout.skipped:
        if path not in done:
            log.warning("skipped %s: %s", path, reason)
            writer.skip(path, reason)

    relative = [item.path.relative_to(config.input_dir).as_posix() for item in layout.items]
    todo = [(item, rel) for item, rel in zip(layout.items, relative, strict=True) if rel not in done]
    total, finished = len(layout.items), len(layout.items) - len(todo)
    if finished:
        log.info("resuming: %d of %d files already done", finished, total)
    for start in range(0, len(todo), config.batch_size):
        batch, arrays = [], []
        for item, rel in todo[start : start + config.batch_size]:
            try:
                arrays.append(frontend.load(item.path))
            except DataError as err:
                if not config.skip_bad:
                    writer.flush()
                    raise DataError(f"{err} Use --skip-bad to skip bad files.") from err
                log.warning("skipped %s: %s", rel, err)
                writer.skip(rel, str(err))
                continue
            batch.append((item, rel))
        if batch:
            writer.add(_rows(batch, backbone.embed(arrays), backbone.name, config.dtype))
        finished += len(todo[start : start + config.batch_size])
        if on_progress:
            on_progress(finished, total)

    table = writer.merge(relative)
    sidecar = {
        "qwave_version": __version__, "layout": layout.name, "input_dir": str(config.input_dir),
        "backbone": {"spec": backbone_spec, "name": backbone.name, "dim": backbone.dim, "weights": config.weights,
                     "device": str(resolve_device(config.device)), "input_size": config.input_size,
                     "seed": config.seed},
        "frontend": frontend.params(), "sample_rate": getattr(frontend, "sample_rate", None),
        "feature_dtype": config.dtype, "files": total, "rows": len(table),
        "rows_per_fold": ({str(k): int(v) for k, v in table["fold"].value_counts().sort_index().items()}
                          if "fold" in table else None),
        "classes": {str(k): v for k, v in layout.classes.items()}, "skipped": writer.skipped,
        **config.extra_sidecar,
    }
    writer.commit(table, sidecar)
    return ExtractResult(table, out, writer.skipped, sidecar)


def _rows(batch: list, features: np.ndarray, backbone_name: str, dtype: str) -> pd.DataFrame:
    """Metadata columns (layout order), provenance (``path``, ``backbone``), then features ``0``..``d-1``."""
    meta = pd.DataFrame([item.meta for item, _ in batch])
    meta["path"] = [rel for _, rel in batch]
    meta["backbone"] = backbone_name
    feats = pd.DataFrame(features.astype(dtype), columns=[str(i) for i in range(features.shape[1])])
    return pd.concat([meta, feats], axis=1)
