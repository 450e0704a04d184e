"""Where a table comes from: the tables bundled with qwave (``bundled:<name>``) and the table options every command
that reads a table shares (``--data``, ``--label`` and the column roles, as in the benchmark's ``data.*`` keys)."""

from __future__ import annotations

import argparse
from importlib import resources

from qwave.data.table import AUTO, TableSpec
from qwave.errors import ConfigError

BUNDLED_TABLES = {
    "esc50": "esc50_efficientnet_lite0.parquet",  # the default: ESC-50 folds 1-3, EfficientNet-Lite0, 50 classes
    "fsdd": "fsdd_speech_embedding.parquet",  # FSDD, Google speech_embedding pooled (leave-one-speaker-out)
    "fsdd-mfcc": "fsdd_logmel.parquet",  # FSDD, hand-made MFCC-segment features
}
BUNDLED_PREFIX = "bundled:"


def bundled_table(name: str = "esc50") -> str:
    """Path of a real embedding table shipped inside the package (see ``qwave/datasets/README.md``)."""
    if name not in BUNDLED_TABLES:
        raise ConfigError(f"{BUNDLED_PREFIX}{name}: no such bundled table; choose one of "
                          f"{', '.join(BUNDLED_PREFIX + n for n in BUNDLED_TABLES)}")
    return str(resources.files("qwave") / "datasets" / BUNDLED_TABLES[name])


def table_file(path: str) -> str:
    """A table argument as a file: ``bundled:<name>`` -> that bundled table, anything else unchanged."""
    if path.startswith(BUNDLED_PREFIX):
        return bundled_table(path[len(BUNDLED_PREFIX):])
    return path


def table_path(path: str | None) -> str:
    """``data.path`` as a file: unset -> the default bundled table; ``bundled:<name>`` -> that bundled table."""
    return bundled_table() if path is None else table_file(path)


def add_table_arguments(parser: argparse.ArgumentParser, data_required: bool = True) -> None:
    """The table options shared by train, quantize, compare and study (column roles as in the benchmark)."""
    names = ", ".join(BUNDLED_PREFIX + n for n in BUNDLED_TABLES)
    parser.add_argument("--data", required=data_required, type=table_file,
                        help=f"embedding table (.csv, .csv.gz, .parquet, .npz) or a bundled one ({names})")
    parser.add_argument("--label", default="label", help="label column (default: label)")
    parser.add_argument("--fold-column", default=AUTO, help="fold column (default: fold, when present)")
    parser.add_argument("--group-column", default=AUTO,
                        help="recording/group column kept within one split (default: group, when present)")
    parser.add_argument("--id-column", default=AUTO, help="sample id column (default: name, when present)")


def table_spec(args: argparse.Namespace) -> TableSpec:
    """The TableSpec of the options; the default fold, group and id columns are used only when the table has them."""
    return TableSpec(path=args.data, label=args.label, fold=args.fold_column, group=args.group_column,
                     id=args.id_column)
