"""The extraction run: layout -> files -> front end -> backbone (batched) -> resumable table + sidecar."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from qwave import __version__
from qwave.errors import ConfigError, DataError
from qwave.extract.audio import AUDIO_SUFFIXES
from qwave.extract.backbones import BackboneOptions, load_backbone, resolve_device
from qwave.extract.frontends import FRONTENDS, LogMel, LogMelImage, SpectrogramImage, Waveform
from qwave.extract.image import IMAGE_SUFFIXES
from qwave.extract.layouts import Item, read_layout
from qwave.extract.writer import PartsWriter, check_output_path

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = {"logmel": "mfcc-segments", "image": "image-stats", "logmel-image": "efficientnet-lite0"}
PICTURE_BACKBONES = ("efficientnet-lite0",)  # they draw a [0, 1] intensity through a colour map
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
    n_mels: int | None = None
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
    workers: int = 1
    pool: str = "stats"
    windows: int = 16
    pad_seconds: float = 0.5
    top_db: float = 80.0
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
    if config.backbone and (config.backbone.startswith("hf:") or config.backbone == "speech-embedding"):
        return "waveform"
    if config.backbone == "image-stats":
        return "image"
    images = not _has_files(config.input_dir, AUDIO_SUFFIXES) and _has_files(config.input_dir, IMAGE_SUFFIXES)
    if config.backbone == "efficientnet-lite0":
        return "image" if images else "logmel-image"
    return "image" if images else "logmel"


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
    if name == "logmel-image":
        return LogMelImage(rate, config.n_mels or 128, config.n_fft, config.hop, config.fmin, config.fmax,
                           config.duration, config.crop, config.level, config.top_db)
    return LogMel(rate, config.n_mels or 32, config.n_fft, config.hop, config.fmin, config.fmax, config.duration,
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
    if config.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {config.workers}.")
    if not config.input_dir.is_dir():
        raise DataError(f"input folder {config.input_dir} does not exist or is not a folder.")


def backbone_options(config: ExtractConfig) -> BackboneOptions:
    """The backbone settings of an extraction config."""
    return BackboneOptions(weights=config.weights, device=config.device, seed=config.seed,
                           input_size=config.input_size, n_mfcc=config.n_mfcc, segments=config.segments,
                           pool=config.pool, windows=config.windows, pad_seconds=config.pad_seconds,
                           colormap=config.colormap)


def embed_batch(frontend, backbone, batch: list[tuple[Item, str]], skip_bad: bool,
                dtype: str) -> tuple[pd.DataFrame | None, list[tuple[str, str]]]:
    """Rows of one batch of files and the files skipped as bad; a bad file is an error unless ``skip_bad``."""
    kept, arrays, skipped = [], [], []
    for item, rel in batch:
        try:
            arrays.append(frontend.load(item.path))
        except DataError as err:
            if not skip_bad:
                raise DataError(f"{err} Use --skip-bad to skip bad files.") from None
            skipped.append((rel, str(err)))
            continue
        kept.append((item, rel))
    rows = _rows(kept, backbone.embed(arrays), backbone.name, dtype) if kept else None
    return rows, skipped


_WORKER: dict = {}


def _start_worker(frontend, spec: str, options: BackboneOptions, threads: int, skip_bad: bool, dtype: str) -> None:
    """Initialiser of a worker process: its own threads, front end and backbone, built once."""
    torch.set_num_threads(threads)
    _WORKER.update(frontend=frontend, backbone=load_backbone(spec, options), skip_bad=skip_bad, dtype=dtype)


def _worker_batch(batch: list[tuple[Item, str]]) -> tuple[pd.DataFrame | None, list[tuple[str, str]]]:
    return embed_batch(_WORKER["frontend"], _WORKER["backbone"], batch, _WORKER["skip_bad"], _WORKER["dtype"])


def _embedded_batches(config: ExtractConfig, frontend, backbone, spec: str, batches: list) -> Iterator:
    """(rows, skipped) of each batch, in order: in this process, or spread over ``config.workers`` processes.

    Workers are spawned (not forked, so no thread pool state is inherited) and share the cores evenly.
    """
    if config.workers <= 1 or len(batches) <= 1:
        for batch in batches:
            yield embed_batch(frontend, backbone, batch, config.skip_bad, config.dtype)
        return
    threads = max(1, torch.get_num_threads() // config.workers)
    init = (frontend, spec, backbone_options(config), threads, config.skip_bad, config.dtype)
    with ProcessPoolExecutor(config.workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_start_worker, initargs=init) as pool:
        futures = [pool.submit(_worker_batch, batch) for batch in batches]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def extract_table(config: ExtractConfig, on_progress: Callable[[int, int], None] | None = None) -> ExtractResult:
    """Run one extraction; ``on_progress(done, total)`` is called after each batch."""
    _check(config)
    frontend_name = _choose_frontend_name(config)
    out = config.out or default_output(config, frontend_name)
    check_output_path(out)
    backbone_spec = config.backbone or DEFAULT_BACKBONE.get(frontend_name)
    if backbone_spec is None:
        raise ConfigError(f"--frontend {frontend_name} needs an explicit --backbone (e.g. hf:<local folder>).")
    backbone = load_backbone(backbone_spec, backbone_options(config))
    if (backbone.input_kind == "waveform") != (frontend_name == "waveform"):
        raise ConfigError(f"backbone {backbone_spec} takes {backbone.input_kind} input, which --frontend "
                          f"{frontend_name} does not give.")
    if backbone_spec in PICTURE_BACKBONES and frontend_name not in ("image", "logmel-image"):
        raise ConfigError(f"backbone {backbone_spec} draws spectrogram pictures; use --frontend image (PNG files) "
                          f"or --frontend logmel-image (audio), not {frontend_name}.")
    frontend = build_frontend(config, frontend_name, getattr(backbone, "sample_rate", None))
    layout = read_layout(config.layout, config.input_dir, frontend.suffixes, config.skip_bad, config.metadata)

    settings = {"layout": layout.name, "input_dir": str(config.input_dir.resolve()), "backbone": backbone_spec,
                "weights": config.weights, "frontend": frontend.params(), "seed": config.seed,
                "input_size": config.input_size, "n_mfcc": config.n_mfcc, "segments": config.segments,
                "dtype": config.dtype, **_pretrained_settings(config, backbone_spec)}
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
    batches = [todo[i : i + config.batch_size] for i in range(0, len(todo), config.batch_size)]
    try:
        for batch, (rows, skipped) in zip(batches, _embedded_batches(config, frontend, backbone, backbone_spec,
                                                                     batches), strict=False):
            for rel, reason in skipped:
                log.warning("skipped %s: %s", rel, reason)
                writer.skip(rel, reason)
            if rows is not None:
                writer.add(rows)
            finished += len(batch)
            if on_progress:
                on_progress(finished, total)
    finally:
        writer.flush()

    table = writer.merge(relative)
    sidecar = {
        "qwave_version": __version__, "layout": layout.name, "input_dir": str(config.input_dir),
        "backbone": {"spec": backbone_spec, "name": backbone.name, "dim": backbone.dim, "weights": config.weights,
                     "device": str(resolve_device(config.device)), "input_size": config.input_size,
                     "seed": config.seed, **_pretrained_settings(config, backbone_spec)},
        "frontend": frontend.params(), "sample_rate": getattr(frontend, "sample_rate", None),
        "feature_dtype": config.dtype, "files": total, "rows": len(table),
        "rows_per_fold": ({str(k): int(v) for k, v in table["fold"].value_counts().sort_index().items()}
                          if "fold" in table else None),
        "classes": {str(k): v for k, v in layout.classes.items()}, "skipped": writer.skipped,
        **config.extra_sidecar,
    }
    writer.commit(table, sidecar)
    return ExtractResult(table, out, writer.skipped, sidecar)


def _pretrained_settings(config: ExtractConfig, spec: str) -> dict:
    """The options a pretrained backbone reads (recorded in the sidecar and checked on resume)."""
    if spec == "speech-embedding":
        return {"pool": config.pool, "windows": config.windows, "pad_seconds": config.pad_seconds}
    if spec == "efficientnet-lite0":
        return {"colormap": config.colormap}
    return {}


def _rows(batch: list, features: np.ndarray, backbone_name: str, dtype: str) -> pd.DataFrame:
    """Metadata columns (layout order), provenance (``path``, ``backbone``), then features ``0``..``d-1``."""
    meta = pd.DataFrame([item.meta for item, _ in batch])
    meta["path"] = [rel for _, rel in batch]
    meta["backbone"] = backbone_name
    feats = pd.DataFrame(features.astype(dtype), columns=[str(i) for i in range(features.shape[1])])
    return pd.concat([meta, feats], axis=1)
