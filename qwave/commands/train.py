"""``qwave train``: train one deployable artifact (an MLP, FP32, QAT or PTQ in any format) on the rows of a table.

One fold of the benchmark: the same configuration (``BenchConfig``, its defaults and ``key=value`` overrides) and
the same fold pipeline (``qwave.bench.runner.fit_fold``), so ``qwave train --test-fold K`` writes the model
``qwave bench`` trains and reports for fold K with the same seed."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import numpy as np

from qwave import artifact
from qwave.bench.models import resolve_kind
from qwave.bench.options import DEVICE_OPTION, MODEL_OPTIONS, TRAIN_OPTIONS, add_config_options, bench_config, validated
from qwave.bench.runner import fit_fold
from qwave.data import load_table
from qwave.data.source import add_table_arguments, table_spec
from qwave.errors import ConfigError, DataError
from qwave.eval.metrics import classification_metrics
from qwave.train import resolve_device

EPILOG = """examples:
  qwave train --data esc50_specs.csv.gz --label class_id --format fp32 --out models/fp32 --test-fold 1
  qwave train --data bundled:fsdd --format 8 --out models/qat8 --epochs 40   # QAT int8
  qwave train --data bundled:fsdd --format 4 --out models/int4 train.weight_decay=0 model.group_size=32
"""

OPTIONS = (*MODEL_OPTIONS, ("--keep-last-fp", "model.keep_last_fp", "keep the last layer in fp32", None),
           *TRAIN_OPTIONS, ("--seed", "seed", "seed of the inner split, the weights and the batches", None),
           DEVICE_OPTION)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qwave train", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_table_arguments(parser)
    parser.add_argument("--format", default="fp32",
                        help="a model name of qwave bench: fp32, a format to train with QAT (8, 4, bitnet, ...), "
                             "ptq<format>, or formats per layer (1-1-8)")
    parser.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    parser.add_argument("--test-fold", default=None, help="hold this fold out (recorded; used by compare --split test)")
    add_config_options(parser, OPTIONS, overrides=True)
    args = parser.parse_args(argv)
    artifact.check_target(args.out, "--out")
    spec = table_spec(args)
    cfg = bench_config(args, OPTIONS, models=[str(args.format)], data__path=spec.path, data__label=spec.label,
                       data__fold=spec.fold, data__group=spec.group, data__id=spec.id)
    validated(cfg, OPTIONS)
    kind = resolve_kind(args.format)

    ds = load_table(spec)
    train_idx, test_idx = np.arange(len(ds.y)), np.array([], dtype=np.int64)
    if args.test_fold is not None:
        if ds.fold is None:
            raise DataError(f"{args.data}: --test-fold needs a fold column and the table has none "
                            "(name it with --fold-column)")
        test = ds.fold.astype(str) == str(args.test_fold)
        if not test.any() or test.all():
            raise ConfigError(f"--test-fold {args.test_fold}: folds in {args.data} are {sorted(set(ds.fold.tolist()))}")
        train_idx, test_idx = np.flatnonzero(~test), np.flatnonzero(test)
    result = fit_fold(ds, kind, train_idx, test_idx, cfg, cfg.seed, resolve_device(cfg.device))
    trained = result.trained
    extra = {"train": {k: v for k, v in asdict(trained).items() if k != "history"}, "history": trained.history,
             "test_fold": None if args.test_fold is None else str(args.test_fold), "n_fit": len(result.fit),
             "n_val": len(result.val), "n_test": len(test_idx), "format": str(args.format), "data": args.data}
    line = (f"trained {args.format} in {trained.train_seconds:.1f} s ({trained.epochs_run} epochs, best epoch "
            f"{trained.best_epoch}, inner-val macro-F1 {trained.best_val_macro_f1:.4f})")
    if len(test_idx):
        metrics = classification_metrics(ds.y[test_idx], result.proba, ds.classes)
        extra["test"] = {k: metrics[k] for k in ("accuracy", "macro_f1", "weighted_f1", "n")}
        line += f"; fold {args.test_fold}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}"
    if getattr(result.deployed, "ptq_report", None) is not None:
        extra["ptq_report"] = result.deployed.ptq_report
    artifact.save(result.deployed, args.out, classes=ds.classes, config=result.loaded.manifest["config"], extra=extra,
                  features=ds.feature_names)
    print(f"{line}\nwrote {args.out}")
    return 0
