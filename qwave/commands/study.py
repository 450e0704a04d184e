"""``qwave study NAME``: quantization studies (ptq-int8, qat-vs-ptq, bit-sweep, moe-curiosity); each writes
results.json, table.md and plot.png under OUTPUT_DIR/TAG. ``qwave study moe-curiosity --help`` shows its own
options (a YAML config and key=value overrides, like qwave bench)."""

from __future__ import annotations

import argparse
from pathlib import Path

from qwave.atomic import check_writable
from qwave.bench.options import DEVICE_OPTION, MODEL_OPTIONS, TRAIN_OPTIONS, add_config_options, bench_config, validated
from qwave.data.source import add_table_arguments, table_spec
from qwave.studies import StudyConfig, bit_sweep, ptq_int8, qat_vs_ptq

EPILOG = """examples:
  qwave study ptq-int8 --data esc50_specs.csv.gz --label class_id --tag esc50_ptq_int8
  qwave study qat-vs-ptq --bits 8 --data esc50_specs.csv.gz --label class_id --seeds 0 1 2
  qwave study bit-sweep --bits 32 16 8 4 2 1 --data fsdd_logmel.csv.gz --epochs 30
  qwave study moe-curiosity --config docs/studies/moe_curiosity_fsdd.yaml
"""

OPTIONS = (*MODEL_OPTIONS, *TRAIN_OPTIONS, DEVICE_OPTION,  # defaults: qwave bench's (BenchConfig)
           ("--output-dir", "output_dir", "folder receiving TAG/", None))

MOE_EPILOG = """The config is the MoECuriosityConfig dataclass (qwave/studies/moe_curiosity.py): defaults, then the
--config YAML, then key=value overrides. Keys: tag, singles, moe_arms, alphas, measures, and bench.* (every key
of qwave bench: bench.data.path, bench.data.label, bench.seeds, bench.threads, bench.moe.pool, ...).

examples:
  qwave study moe-curiosity --config docs/studies/moe_curiosity_fsdd.yaml
  qwave study moe-curiosity --config docs/studies/moe_curiosity_esc50.yaml bench.data.path=other.csv tag=other
  qwave study moe-curiosity bench.data.path=table.parquet "alphas=[1.0]" "measures=[max_softmax]" bench.seeds=[0]
"""


def run_moe_curiosity(argv: list[str]) -> int:
    """``qwave study moe-curiosity [--config FILE] [key=value ...]``."""
    from qwave.studies.moe_curiosity import load_config, moe_curiosity

    parser = argparse.ArgumentParser(prog="qwave study moe-curiosity", epilog=MOE_EPILOG,
                                     description="Curiosity routing against every single format and the plain MoE.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML file of study settings (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. bench.data.path=table.csv")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    results = moe_curiosity(cfg)
    print((cfg.out / "table.md").read_text(encoding="utf-8"))
    print(f"wrote {cfg.out}/results.json, table.md, plot.png ({results['wall_seconds']['total']:.0f} s)")
    return 0


def run(argv: list[str]) -> int:
    if argv and argv[0] == "moe-curiosity":
        return run_moe_curiosity(argv[1:])
    parser = argparse.ArgumentParser(prog="qwave study", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=["ptq-int8", "qat-vs-ptq", "bit-sweep", "moe-curiosity"])
    add_table_arguments(parser)
    parser.add_argument("--bits", nargs="+", default=None,
                        help="qat-vs-ptq: one format (default 8); bit-sweep: widths (default 32 16 8 4 2 1)")
    parser.add_argument("--tag", default=None, help="output folder name (default: the study name)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--folds", type=int, nargs="+", default=None, help="only these folds (default: all)")
    add_config_options(parser, OPTIONS)
    parser.add_argument("--threads", type=int, default=None, help="torch and numba threads (default: theirs)")
    args = parser.parse_args(argv)
    check_writable(Path(args.output_dir) / (args.tag or args.name), "--output-dir", directory=True)
    spec = table_spec(args)
    bench = validated(bench_config(args, OPTIONS, seeds=args.seeds, threads=args.threads, data__path=spec.path,
                                   data__label=spec.label, data__fold=spec.fold, data__group=spec.group,
                                   data__id=spec.id), OPTIONS)
    cfg = StudyConfig(bench=bench, tag=args.tag or args.name, folds=args.folds)
    if args.name == "ptq-int8":
        ptq_int8(cfg)
    elif args.name == "qat-vs-ptq":
        if args.bits and len(args.bits) != 1:
            parser.error("qat-vs-ptq takes one --bits value (e.g. --bits 8)")
        qat_vs_ptq(cfg, (args.bits or ["8"])[0])
    else:
        bit_sweep(cfg, [int(b) for b in args.bits] if args.bits else None)
    print((cfg.out / "table.md").read_text(encoding="utf-8"))
    print(f"wrote {cfg.out}/results.json, table.md, plot.png")
    return 0
