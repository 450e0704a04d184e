"""``qwave size``: stored and resident bytes per model and format, measured on packed tensors (no training), or
of saved artifacts given as paths."""

from __future__ import annotations

import argparse
from pathlib import Path

from qwave import atomic
from qwave.errors import ConfigError, FormatError
from qwave.formats import QuantPlan
from qwave.size import (
    RESIDENT_LIMIT,
    SizeSpec,
    artifact_report,
    prepare_kernels,
    report,
    resident_bytes,
    resident_fields,
    size_table,
)
from qwave.tables import model_label, text_table, write_csv

EPILOG = """examples:
  qwave size --formats fp32,16,8,4,2,1,bitnet,qesc            # reference MLP 1536 -> 640 -> 320 -> 50
  qwave size --formats 4 --group-size 64 --keep-last-fp --per-layer
  qwave size --formats fp32,1 --layer-formats 1,1,8 --output sizes.csv --plot sizes.png
  qwave size outputs/run/fold1/artifact                        # a saved artifact: stored vs file bytes
KB and MB are decimal (1000 and 1000000 bytes); bits/weight = all stored bytes x 8 / linear weights.
resident_bytes: what the model holds in memory once every packed layer has prepared its kernel (as after the first
forward); resident_flag marks a model holding more than 1.1x its stored bytes.
"""

COLUMNS = ("model", "format", "bits_per_weight", "params", "stored_bytes", "active_bytes", "kb", "mb",
           "reduction_vs_fp32", "resident_bytes", "resident_vs_stored", "resident_flag")


def _positive_int(option: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{option} must be a positive integer; got {text!r}")
        return value

    return parse


def _int_list(option: str):
    def parse(text: str) -> tuple[int, ...]:
        return tuple(_positive_int(option)(part) for part in text.split(",") if part.strip())

    return parse


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qwave size", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", type=Path, help="saved artifact directories to report instead")
    p.add_argument("--in-dim", type=_positive_int("--in-dim"), default=1536, help="embedding dimension (1536)")
    p.add_argument("--num-classes", type=_positive_int("--num-classes"), default=50, help="classes (50)")
    p.add_argument("--hidden", type=_int_list("--hidden"), default=(640, 320), help="hidden sizes (640,320)")
    p.add_argument("--formats", type=_name_list, default=["fp32", "16", "bf16", "8", "4", "2", "1", "bitnet", "qesc"])
    p.add_argument("--models", type=_name_list, default=["mlp"], help="model families (mlp; others when registered)")
    p.add_argument("--group-size", type=_positive_int("--group-size"), default=None, help="per-group scales")
    p.add_argument("--keep-last-fp", action="store_true", help="keep the last Linear in fp32")
    p.add_argument("--layer-formats", type=_name_list, default=None, help="one format per Linear: adds a mixed row")
    p.add_argument("--per-layer", action="store_true", help="print the per-layer breakdown of each row")
    p.add_argument("--debug", action="store_true", help="print the per-layer and per-tensor breakdown")
    p.add_argument("--output", type=Path, default=None, help="write the table as CSV")
    p.add_argument("--plot", type=Path, default=None, help="bar chart of size and reduction (PNG)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    return p


def _plot(rows: list[dict], path: Path) -> None:
    from qwave.plot import plt, save_figure

    labels = [f"{r['model']}: {model_label(r['format'])}" for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8, len(rows) * 0.9), 4))
    left.bar(labels, [r["stored_bytes"] / 1e6 for r in rows])
    left.set_ylabel("stored MB")
    right.bar(labels, [r["reduction_vs_fp32"] for r in rows])
    right.set_ylabel("reduction vs FP32 (x)")
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def _artifact_rows(paths: list[Path]) -> list[dict]:
    from qwave.artifact import load

    rows = []
    for path in paths:
        sizes = artifact_report(path)
        model = load(path)
        measured = report(model).stored_bytes
        if measured != sizes.stored_bytes:
            raise ConfigError(f"{path}: loaded model holds {measured} bytes but the file's tensors "
                              f"{sizes.stored_bytes}")
        prepare_kernels(model)
        rows.append({"artifact": str(path), "bits_per_weight": sizes.bits_per_weight, "weights": sizes.weight_count,
                     "stored_bytes": sizes.stored_bytes, "header_bytes": sizes.header_bytes,
                     "file_bytes": sizes.file_bytes, "manifest_bytes": sizes.manifest_bytes,
                     "kb": sizes.stored_bytes / 1e3, "mb": sizes.stored_bytes / 1e6,
                     **resident_fields(resident_bytes(model), sizes.stored_bytes)})
    return rows


def run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    for option, path in (("--output", args.output), ("--plot", args.plot)):
        if path is not None:
            atomic.check_writable(path, option)
    if args.paths:
        rows = _artifact_rows(args.paths)
        columns = tuple(rows[0]) if rows else ()
    else:
        spec = SizeSpec(in_dim=args.in_dim, num_classes=args.num_classes, hidden=args.hidden, seed=args.seed)
        if args.layer_formats and len(args.layer_formats) != len(spec.hidden) + 1:
            raise ConfigError(f"--layer-formats has {len(args.layer_formats)} entries; the MLP has "
                              f"{len(spec.hidden) + 1} Linear layers")
        options = {"group_size": args.group_size, "keep_last_fp": args.keep_last_fp}
        try:
            plans = [QuantPlan.parse(f, **options) for f in args.formats]
            plans += [QuantPlan.parse(None, layer_formats=args.layer_formats, **options)] if args.layer_formats else []
        except FormatError as err:
            raise ConfigError(f"--formats/--layer-formats: {err}") from None
        rows = size_table(spec, plans, models=args.models, per_layer=args.per_layer or args.debug)
        columns = COLUMNS
    print(text_table([{**r, "format": model_label(r["format"])} if "format" in r else r for r in rows], columns))
    flagged = [r.get("artifact") or f"{r['model']}: {model_label(r['format'])}" for r in rows if r.get("resident_flag")]
    if flagged:
        print(f"resident over {RESIDENT_LIMIT}x stored: {', '.join(flagged)} (a kernel layout wider than the stored "
              "codes, or a float copy of the weights)")
    for row in rows if (args.per_layer or args.debug) else ():
        print(f"\n{row['model']} {model_label(row['format'])}: per layer")
        print(text_table(row["layers"], ("layer", "kind", "format", "weights", "bytes")))
        if args.debug:
            print(text_table(row["tensors"], ("name", "dtype", "numel", "bytes", "shared_with")))
    if args.output:
        write_csv(args.output, rows, columns)
    if args.plot and not args.paths:
        _plot(rows, args.plot)
    return 0
