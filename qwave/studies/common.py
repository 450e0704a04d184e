"""What every study shares: its configuration, training one MLP on one fold, evaluating a saved artifact, outputs."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qwave import artifact
from qwave.atomic import write_json, write_text
from qwave.bench.config import BenchConfig, CVConfig, DataConfig, ModelConfig
from qwave.data import Dataset, Fold, TableSpec, fit_normalizer, inner_split, load_table, make_folds
from qwave.errors import ConfigError
from qwave.eval.metrics import aggregate_over_folds
from qwave.eval.timing import set_threads
from qwave.nn import pack_model, quantize_model
from qwave.nn.mlp import build_mlp
from qwave.plot import save_figure
from qwave.size import artifact_report
from qwave.train import TrainConfig, predict_logits, resolve_device, train_model

log = logging.getLogger(__name__)


@dataclass
class StudyConfig:
    """Data, model, training budget and seeds shared by every arm of a study (so arms differ only in format);
    defaults are the benchmark's (``BenchConfig``)."""

    data: TableSpec
    tag: str = "study"
    output_dir: str = "outputs"
    normalize: str = DataConfig.normalize
    hidden: list[int] = field(default_factory=lambda: list(ModelConfig().hidden))
    dropout: float = ModelConfig.dropout
    train: TrainConfig = field(default_factory=TrainConfig)
    seeds: list[int] = field(default_factory=lambda: [0])
    folds: list[int] | None = None  # None: every fold of the table
    n_folds: int = CVConfig.n_folds
    val_fraction: float = CVConfig.val_fraction
    device: str = BenchConfig.device
    threads: int | None = None

    @property
    def out(self) -> Path:
        return Path(self.output_dir) / self.tag


@dataclass
class FoldSplit:
    """One fold's row indices: ``fit`` (training), ``val`` (early stopping), ``test`` (reported)."""

    k: int
    fit: np.ndarray
    val: np.ndarray
    test: np.ndarray


def load(cfg: StudyConfig) -> Dataset:
    """The study's table; fixes torch's and numba's thread counts when configured."""
    if cfg.threads:
        set_threads(cfg.threads)
    return load_table(cfg.data)


def splits(ds: Dataset, cfg: StudyConfig, seed: int) -> Iterator[FoldSplit]:
    """The configured folds (official when the table has a fold column), each with its seeded inner split."""
    folds: list[Fold] = make_folds(ds, "auto", cfg.n_folds, seed=0)
    if cfg.folds:
        unknown = sorted(set(cfg.folds) - {f.k for f in folds})
        if unknown:
            raise ConfigError(f"--folds {unknown} not in the table's folds {[f.k for f in folds]}")
        folds = [f for f in folds if f.k in cfg.folds]
    for fold in folds:
        fit, val = inner_split(ds, fold.train, cfg.val_fraction, seed)
        yield FoldSplit(fold.k, fit, val, fold.test)


def train_fold(
    ds: Dataset, split: FoldSplit, cfg: StudyConfig, seed: int, fmt: str = "fp32"
) -> tuple[nn.Module, float]:
    """Train a fresh seeded MLP (FP32, or QAT in ``fmt``; activation suited to ``fmt``, normaliser fitted on the
    fit rows) on the fit rows; returns the trained module and its training seconds."""
    torch.manual_seed(seed)
    model = build_mlp(ds.n_features, ds.n_classes, cfg.hidden, cfg.dropout,
                      normalize=fit_normalizer(ds.X[split.fit], cfg.normalize), formats=[fmt])
    if fmt != "fp32":
        model = quantize_model(model, fmt)
    result = train_model(model, ds.X[split.fit], ds.y[split.fit], ds.X[split.val], ds.y[split.val], ds.n_classes,
                         cfg.train, seed, resolve_device(cfg.device))
    return model.cpu().eval(), result.train_seconds


def scores(model: nn.Module, X: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy and macro-F1 of ``model`` on rows ``X`` with labels ``y``."""
    from sklearn.metrics import f1_score

    pred = predict_logits(model, torch.as_tensor(X)).argmax(1).numpy()
    return {"accuracy": float((pred == y).mean()), "macro_f1": float(f1_score(y, pred, average="macro",
                                                                               zero_division=0))}


def saved(model: nn.Module, ds: Dataset, directory: Path | None = None) -> tuple[nn.Module, dict]:
    """Save a packed model (QuantLinear/Linear are packed first), reload it; returns it and its sizes on disk."""
    packed = model if not any(isinstance(m, nn.Linear) for m in model.modules()) else pack_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        target = directory or Path(tmp) / "artifact"
        artifact.save(packed, target, classes=ds.classes)
        rep = artifact_report(target)
        loaded = artifact.load(target)
    return loaded, {"file_bytes": rep.file_bytes, "stored_bytes": rep.stored_bytes,
                    "bits_per_weight": rep.bits_per_weight}


def summarise(records: list[dict], keys: tuple[str, ...]) -> dict:
    """Mean, std, 95% CI over folds (seeds averaged within each fold first) of each key of the records."""
    return {key: aggregate_over_folds([r["fold"] for r in records], [r[key] for r in records]) for key in keys}


def fmt_ci(stats: dict, digits: int = 4) -> str:
    """``mean ± ci95`` (or just the mean for one run)."""
    if stats["mean"] is None:
        return "n/a"
    ci = "" if stats["ci95"] is None else f" ± {stats['ci95']:.{digits}f}"
    return f"{stats['mean']:.{digits}f}{ci}"


def write_outputs(cfg: StudyConfig, name: str, results: dict, table: str, figure) -> Path:
    """``results.json`` (with the config), ``table.md`` and ``plot.png`` under ``<output_dir>/<tag>/``."""
    out = cfg.out
    config = asdict(cfg)
    write_json(out / "results.json", {"study": name, "config": config, **results})
    write_text(out / "table.md", f"### {name} ({cfg.data.path})\n\n{table}")
    save_figure(figure, out / "plot.png", dpi=120, bbox_inches="tight")
    return out
