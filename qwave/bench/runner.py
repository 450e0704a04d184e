"""Cross-validation runner: models x seeds x folds, each fold trained on its training folds only.

Per fold: carve an inner validation split from the training folds (grouped by the table's group column when it
has one), fit the input quantizer and the normaliser on the fit rows, train with
early stopping on the inner split, deploy (quantize + pack), save the artifact, load it back and evaluate the
*loaded* artifact on the held-out fold. The reported fold is never seen by training or model selection.
Each fold's metrics.json carries the fingerprint of the configuration that made it (``qwave.bench.provenance``):
resume skips only folds with the planned fingerprint, summaries count only the plan's jobs, and one run writes a
tag at a time.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from qwave import artifact, atomic, kernels
from qwave.bench import fold_files, provenance
from qwave.bench.config import BenchConfig, validate
from qwave.bench.energy import EnergyMeter
from qwave.bench.measure import JobMemory, Timing, layer_kernels, timed_inference, warn_fallbacks
from qwave.bench.models import BuildContext, FoldData, ModelKind, resolve_kind
from qwave.bench.overview import write_overview
from qwave.bench.progress import BenchProgress
from qwave.data import Dataset, Fold, TableSpec, fit_normalizer, inner_split, load_table, make_folds
from qwave.data.input_quant import InputQuantizer, fit_input_quantizer
from qwave.data.source import table_path
from qwave.eval.metrics import classification_metrics
from qwave.eval.timing import set_threads
from qwave.size import ArtifactSize, artifact_report, resident_bytes, resident_fields
from qwave.tables import model_label
from qwave.train import TrainResult, predict_logits, resolve_device, train_model

log = logging.getLogger(__name__)

AGREEMENT_MIN = 0.995


@dataclass
class FoldJob:
    """One unit of work: a model kind on one fold with one seed, written to ``out_dir``."""

    kind: ModelKind
    fold: Fold
    seed: int
    out_dir: Path
    fingerprint: dict = field(default_factory=dict)  # provenance.fingerprint of what determines the result


def load_dataset(cfg: BenchConfig) -> Dataset:
    """The configured table (the bundled ESC-50 table when ``data.path`` is unset, see ``table_path``)."""
    d = cfg.data
    return load_table(TableSpec(path=table_path(d.path), label=d.label, fold=d.fold, group=d.group, id=d.id,
                                features=list(d.features) if d.features else None, drop=list(d.drop)))


def fold_dir(root: Path, model: str, fold: int, seed: int) -> Path:
    """``<root>/<model>/fold_<k>`` for seed 0; ``fold_<k>_seed_<s>`` for other seeds, so sweeps never collide."""
    return root / model / (f"fold_{fold}_seed_{seed}" if seed else f"fold_{fold}")


def agreement(reference: torch.Tensor, deployed: torch.Tensor) -> dict:
    """Top-1 agreement and largest absolute logit difference between two models' logits."""
    same = (reference.argmax(1) == deployed.argmax(1)).float().mean().item() if len(reference) else 1.0
    diff = (reference - deployed).abs().max().item() if len(reference) else 0.0
    return {"top1_agreement": same, "max_abs_logit_diff": diff}


def check_agreement(stats: dict, where: str) -> None:
    """The deployed artifact must reproduce the model it was made from (up to float summation order)."""
    if stats["top1_agreement"] < AGREEMENT_MIN:
        raise RuntimeError(
            f"{where}: the loaded artifact disagrees with the model it was saved from "
            f"(top-1 agreement {stats['top1_agreement']:.4f} < {AGREEMENT_MIN}); this is a qwave bug"
        )


@dataclass
class ModelFit:
    """One model built, trained, deployed, saved, reloaded and run on the test rows: the training result, the
    deployed model, its artifact (sizes, kernels, resident bytes), the reloaded model's outputs and the global
    torch RNG state training left (``rng_after_training``: where a chain of fits, the MoE's probes, continues)."""

    trained: TrainResult
    deployed: nn.Module
    loaded: nn.Module
    sizes: ArtifactSize
    timing: Timing
    proba: np.ndarray
    agreement: dict
    layers: list
    resident: int
    energy: dict
    rng_after_training: torch.Tensor


@dataclass
class FoldFit(ModelFit):
    """One fitted fold: the model's fit (``ModelFit``), its build context, the fit and inner-validation rows, every
    row after the input quantizer, the quantizer, and the fold's memory use."""

    ctx: BuildContext
    fit: np.ndarray
    val: np.ndarray
    X: np.ndarray
    quantizer: InputQuantizer
    memory: dict
    cuda_peak_mb: float | None


def fit_model(kind: ModelKind, ctx: BuildContext, X_test: np.ndarray, device: torch.device, target: Path | None = None,
              classes: list[str] | None = None, features: list[str] | None = None, on_epoch=None, label: str = ""
              ) -> ModelFit:
    """Build the kind's model from the current RNG state, train it on the context's rows, deploy it (quantize +
    pack), save the artifact (to ``target``, or a temporary folder), reload it and run the reloaded artifact on
    ``X_test`` (timed, sized, checked against the model it was made from)."""
    label = label or kind.name
    cfg = ctx.cfg
    meter = EnergyMeter(cfg.energy)
    model = kind.build(ctx)
    with meter:
        trained = train_model(model, ctx.X_fit, ctx.y_fit, ctx.X_val, ctx.y_val, ctx.num_classes, cfg.train, ctx.seed,
                              device, on_epoch=on_epoch)
    rng = torch.get_rng_state()
    model.cpu().eval()
    deployed = kind.deploy(model, ctx)
    X_test = torch.as_tensor(X_test)
    reference_logits = predict_logits(kind.simulate(model, ctx), X_test)
    with tempfile.TemporaryDirectory() as tmp:
        target = target or Path(tmp) / "artifact"
        artifact.save(deployed, target, classes=classes, config=OmegaConf.to_container(OmegaConf.structured(cfg)),
                      features=features)
        sizes = artifact_report(target)
        loaded = artifact.load(target)
    timing = timed_inference(loaded, X_test)
    layers = layer_kernels(loaded)
    warn_fallbacks(layers, label)
    agree = agreement(reference_logits, timing.logits)
    check_agreement(agree, label)
    return ModelFit(trained, deployed, loaded, sizes, timing, torch.softmax(timing.logits, 1).numpy(), agree, layers,
                    resident_bytes(loaded), meter.result(), rng)


def fit_fold(ds: Dataset, kind: ModelKind, train_rows: np.ndarray, test_rows: np.ndarray, cfg: BenchConfig, seed: int,
             device: torch.device, target: Path | None = None, on_epoch=None, label: str = "") -> FoldFit:
    """Fit one fold, the one way every caller trains a model: carve the inner split from ``train_rows``, fit the
    input quantizer and the normaliser on the fit rows, seed, and fit the kind's model (``fit_model``) with
    ``test_rows`` as its test rows."""
    fit, val = inner_split(ds, train_rows, cfg.cv.val_fraction, seed)
    quantizer = fit_input_quantizer(ds.X[fit], cfg.data.input_quant)  # fit rows only, like the normaliser
    X = quantizer.quantize(ds.X)
    normalize = fit_normalizer(X[fit], cfg.data.normalize)
    ctx = BuildContext(ds.n_features, ds.n_classes, normalize, cfg, seed, X[fit], ds.y[fit], X[val], ds.y[val])
    torch.manual_seed(seed)
    np.random.seed(seed)
    memory = JobMemory.begin()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = fit_model(kind, ctx, X[test_rows], device, target, ds.classes, ds.feature_names, on_epoch, label)
    memory_used = memory.end()
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return FoldFit(**vars(result), ctx=ctx, fit=fit, val=val, X=X, quantizer=quantizer, memory=memory_used,
                   cuda_peak_mb=cuda_peak)


def run_fold(ds: Dataset, job: FoldJob, cfg: BenchConfig, device: torch.device, progress: BenchProgress) -> dict:
    """Fit one fold (``fit_fold``), write its outputs and return its metrics record."""
    target = job.out_dir / "artifact" if cfg.save_artifacts else None
    result = fit_fold(ds, job.kind, job.fold.train, job.fold.test, cfg, job.seed, device, target, progress.epoch,
                      f"{job.kind.name} fold {job.fold.k}")
    timing, sizes, y_test = result.timing, result.sizes, ds.y[job.fold.test]
    record = {
        "model": job.kind.name,
        "label": model_label(job.kind.name, cfg.model.weight_only),
        "method": job.kind.method,
        "fold": int(job.fold.k),
        "seed": job.seed,
        "n_fit": len(result.fit),
        "n_val": len(result.val),
        "n_test": len(job.fold.test),
        "fingerprint": job.fingerprint,
        **classification_metrics(y_test, result.proba, ds.classes),
        "train": {k: v for k, v in asdict(result.trained).items() if k != "history"},
        "history": result.trained.history,
        "inference_seconds": timing.seconds,
        "inference_ms_per_sample": 1e3 * timing.seconds / max(len(y_test), 1),
        "inference_repeats": timing.repeats,
        "fp32_twin_ms_per_sample": 1e3 * timing.fp32_seconds / max(len(y_test), 1),
        "speed_vs_fp32": timing.speed_vs_fp32,
        "first_call_seconds": timing.first_call_seconds,
        "layer_kernels": result.layers,
        "kernel_status": kernels.status(),
        **result.memory,
        "cuda_peak_mb": result.cuda_peak_mb,
        "stored_bytes": sizes.stored_bytes,
        **resident_fields(result.resident, sizes.stored_bytes),  # resident_bytes, resident_vs_stored, resident_flag
        "artifact_file_bytes": sizes.file_bytes,
        "artifact_agreement": result.agreement,
        "energy": result.energy,
        "input_quant": {
            "mode": cfg.data.input_quant,
            "bytes_per_embedding": result.quantizer.bytes_per_embedding,
            "float32_bytes_per_embedding": 4 * ds.n_features,
            "shared_bytes": result.quantizer.shared_bytes,
            "test_clipped_fraction": result.quantizer.clipped_fraction(ds.X[job.fold.test]),
        },
    }
    if getattr(result.deployed, "ptq_report", None) is not None:
        record["ptq_report"] = result.deployed.ptq_report
    if job.kind.evaluate is not None:
        test = job.fold.test
        fold_data = FoldData(result.X[test], y_test, ds.ids[test], ds.classes, result.ctx)
        record.update(job.kind.evaluate(result.loaded, fold_data, job.out_dir))
    fold_files.write_fold(job.out_dir, record, ds.ids[job.fold.test], y_test, result.proba, ds.classes, cfg.plots)
    return record


def plan(cfg: BenchConfig, ds: Dataset) -> list[FoldJob]:
    """Every (model, seed, fold) job of the run (``cfg`` validated), each with its fingerprint."""
    kinds = [resolve_kind(name) for name in cfg.models]
    seeds = cfg.seed_list()
    folds = make_folds(ds, cfg.cv.folds, cfg.cv.n_folds, seed=cfg.seed)
    root = Path(cfg.output_dir) / cfg.tag
    data_file = provenance.file_identity(ds)
    return [
        FoldJob(kind, fold, seed, fold_dir(root, kind.name, fold.k, seed),
                provenance.fingerprint(provenance.job_config(cfg, ds, data_file, kind, fold, seed)))
        for kind in kinds
        for seed in seeds
        for fold in folds
    ]


def run_benchmark(cfg: BenchConfig, sweep_plan: Path | None = None) -> list[dict]:
    """Run (or resume) every job, write per-model and per-tag summaries of exactly these jobs, and return the
    summary rows.

    ``sweep_plan``: this run is one job of a Hydra multirun; it shares the tag with the other jobs and writes its
    plan there for the gather at the end of the sweep.
    """
    validate(cfg)
    if cfg.threads:
        set_threads(cfg.threads)  # numba's too: its OpenMP pool, started by the first packed kernel, resets torch's
    root = Path(cfg.output_dir) / cfg.tag
    atomic.check_writable(root, f"output_dir={cfg.output_dir} (tag {cfg.tag}):", directory=True)
    with provenance.tag_lock(root, shared=sweep_plan is not None):
        device = resolve_device(cfg.device)
        ds = load_dataset(cfg)
        jobs = plan(cfg, ds)
        with BenchProgress(len(jobs), cfg.train.epochs, quiet=cfg.quiet) as progress:
            for job in jobs:
                label = f"{job.kind.name} fold {job.fold.k} seed {job.seed}"
                progress.start(label)
                if not (cfg.resume and provenance.resumable(job.out_dir, job.fingerprint, label)):
                    with provenance.job_lock(job.out_dir):
                        run_fold(ds, job, cfg, device, progress)
                progress.advance()
        entries = provenance.plan_entries(jobs)
        if sweep_plan is not None:
            atomic.write_json(sweep_plan, {"root": str(root), "jobs": entries})
        rows = provenance.summarize_plan(root, entries)
        write_overview(root, rows, ds.source)
        return rows
