"""What the older studies share: their configuration (a benchmark's), their arms run through the benchmark's fold
pipeline (``qwave.bench.runner.fit_fold``), scores of a fitted fold, outputs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from qwave.atomic import write_json, write_text
from qwave.bench.config import BenchConfig, validate
from qwave.bench.models import resolve_kind
from qwave.bench.runner import FoldFit, fit_fold, load_dataset
from qwave.data import Dataset, Fold, make_folds
from qwave.errors import ConfigError
from qwave.eval.metrics import aggregate_over_folds, classification_metrics
from qwave.eval.timing import predict_logits, set_threads
from qwave.plot import save_figure
from qwave.train import resolve_device


@dataclass
class StudyConfig:
    """A study: the benchmark settings every arm shares (``bench``: table, model, training, seeds, device,
    threads, output folder), so arms differ only in their model name; ``folds`` picks some of the table's folds
    (None: all)."""

    bench: BenchConfig = field(default_factory=BenchConfig)
    tag: str = "study"
    folds: list[int] | None = None

    @property
    def out(self) -> Path:
        return Path(self.bench.output_dir) / self.tag


@dataclass
class ArmFit:
    """One arm fitted on one fold with one seed, and the table it was fitted on."""

    arm: str
    fold: Fold
    seed: int
    fit: FoldFit
    ds: Dataset

    def scores(self, rows: str = "test") -> dict:
        """Accuracy and macro-F1 of the saved-and-reloaded artifact on the fold's ``test`` or ``fit`` rows."""
        if rows == "test":
            y, proba = self.ds.y[self.fold.test], self.fit.proba
        else:
            logits = predict_logits(self.fit.loaded, torch.as_tensor(self.fit.X[self.fit.fit]))
            y, proba = self.ds.y[self.fit.fit], torch.softmax(logits, 1).numpy()
        metrics = classification_metrics(y, proba, self.ds.classes)
        return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}

    def sizes(self) -> dict:
        """The artifact's sizes on disk."""
        s = self.fit.sizes
        return {"file_bytes": s.file_bytes, "stored_bytes": s.stored_bytes, "bits_per_weight": s.bits_per_weight}


def run_arms(cfg: StudyConfig, arms: dict[str, str], artifacts: Path | None = None) -> Iterator[ArmFit]:
    """Fit every arm (arm name -> a ``qwave bench`` model name: ``fp32``, ``int4``, ``ptqint8``, ...) on every
    configured fold and seed (seeds outermost), each by the benchmark's fold pipeline, so an arm is the benchmark's
    run of that model on that fold and seed. ``artifacts``: keep each artifact under
    ``<artifacts>/fold_<k>_seed_<s>/<arm>`` (default: a temporary folder)."""
    bench = cfg.bench
    bench.models = list(arms.values())
    validate(bench)
    if bench.threads:
        set_threads(bench.threads)  # numba's too, as run_benchmark does
    device = resolve_device(bench.device)
    ds = load_dataset(bench)
    folds = make_folds(ds, bench.cv.folds, bench.cv.n_folds, seed=bench.seed)
    if cfg.folds:
        unknown = sorted(set(cfg.folds) - {f.k for f in folds})
        if unknown:
            raise ConfigError(f"--folds {unknown} not in the table's folds {[f.k for f in folds]}")
        folds = [f for f in folds if f.k in cfg.folds]
    kinds = {arm: resolve_kind(model) for arm, model in arms.items()}
    for seed in bench.seed_list():
        for fold in folds:
            for arm, kind in kinds.items():
                target = None if artifacts is None else artifacts / f"fold_{fold.k}_seed_{seed}" / arm
                fit = fit_fold(ds, kind, fold.train, fold.test, bench, seed, device, target,
                               label=f"{arm} fold {fold.k} seed {seed}")
                yield ArmFit(arm, fold, seed, fit, ds)


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
    write_json(out / "results.json", {"study": name, "config": asdict(cfg), **results})
    write_text(out / "table.md", f"### {name} ({cfg.bench.data.path})\n\n{table}")
    save_figure(figure, out / "plot.png", dpi=120, bbox_inches="tight")
    return out

