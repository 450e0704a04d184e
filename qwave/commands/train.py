"""``qwave train``: train one deployable artifact (an MLP, FP32 or QAT in any format) on the rows of a table."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from qwave import artifact
from qwave.commands.compare import add_table_arguments, table_spec
from qwave.data import fit_normalizer, inner_split, load_table
from qwave.errors import ConfigError, DataError
from qwave.eval.metrics import classification_metrics
from qwave.nn import pack_model, quantize_model
from qwave.nn.mlp import build_mlp
from qwave.train import TrainConfig, predict_logits, resolve_device, train_model

EPILOG = """examples:
  qwave train --data esc50_specs.csv.gz --label class_id --format fp32 --out models/fp32 --test-fold 1
  qwave train --data fsdd_logmel.csv.gz --format 8 --out models/qat8 --epochs 40   # QAT int8
"""


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qwave train", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_table_arguments(parser)
    parser.add_argument("--format", default="fp32", help="fp32, or a format to train with QAT (8, 4, bitnet, ...)")
    parser.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    parser.add_argument("--test-fold", default=None, help="hold this fold out (recorded; used by compare --split test)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[640, 320])
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--normalize", default="standard", choices=["raw", "standard", "l2", "min_max"])
    parser.add_argument("--keep-last-fp", action="store_true", help="keep the last layer in fp32")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--patience", type=int, default=15)
    parser.add_argument("--val-fraction", type=float, default=0.15, help="inner validation split for early stopping")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    artifact.check_target(args.out, "--out")

    ds = load_table(table_spec(args))
    train_idx, test_idx = np.arange(len(ds.y)), np.array([], dtype=np.int64)
    if args.test_fold is not None:
        if ds.fold is None:
            raise DataError(f"{args.data}: --test-fold needs a fold column and the table has none "
                            "(name it with --fold-column)")
        test = ds.fold.astype(str) == str(args.test_fold)
        if not test.any() or test.all():
            raise ConfigError(f"--test-fold {args.test_fold}: folds in {args.data} are {sorted(set(ds.fold.tolist()))}")
        train_idx, test_idx = np.flatnonzero(~test), np.flatnonzero(test)
    fit, val = inner_split(ds, train_idx, args.val_fraction, args.seed)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience)
    torch.manual_seed(args.seed)
    model = build_mlp(ds.n_features, ds.n_classes, args.hidden, args.dropout,
                      normalize=fit_normalizer(ds.X[fit], args.normalize), formats=[args.format])
    if str(args.format).lower() != "fp32" or args.keep_last_fp:
        model = quantize_model(model, args.format, keep_last_fp=args.keep_last_fp)
    result = train_model(model, ds.X[fit], ds.y[fit], ds.X[val], ds.y[val], ds.n_classes, cfg, args.seed,
                         resolve_device(args.device))
    packed = pack_model(model.cpu())
    extra = {"train": {k: v for k, v in asdict(result).items() if k != "history"}, "history": result.history,
             "test_fold": None if args.test_fold is None else str(args.test_fold), "n_fit": len(fit),
             "n_val": len(val), "n_test": len(test_idx), "format": str(args.format), "data": args.data}
    line = (f"trained {args.format} in {result.train_seconds:.1f} s ({result.epochs_run} epochs, best epoch "
            f"{result.best_epoch}, inner-val macro-F1 {result.best_val_macro_f1:.4f})")
    if len(test_idx):
        proba = torch.softmax(predict_logits(packed, torch.as_tensor(ds.X[test_idx])), 1).numpy()
        metrics = classification_metrics(ds.y[test_idx], proba, ds.classes)
        extra["test"] = {k: metrics[k] for k in ("accuracy", "macro_f1", "weighted_f1", "n")}
        line += f"; fold {args.test_fold}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}"
    config = {"data": vars(table_spec(args)), "train": asdict(cfg), "model": model_config(args), "seed": args.seed}
    artifact.save(packed, args.out, classes=ds.classes, config=config, extra=extra)
    print(f"{line}\nwrote {args.out}")
    return 0


def model_config(args: argparse.Namespace) -> dict:
    """The model options of the command line, as recorded in the manifest."""
    return {"hidden": list(args.hidden), "dropout": args.dropout, "normalize": args.normalize,
            "format": str(args.format), "keep_last_fp": args.keep_last_fp}
