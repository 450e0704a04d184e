"""``qwave quantize``: post-training quantization of an FP32 artifact into one packed artifact per format, each
gated by its top-1 agreement with the FP32 model on the calibration rows. Every target (format name and output
folder) is checked, and every model quantized, before the first artifact is written. The quantization options are
the benchmark's (``BenchConfig.model``: their defaults, and the same PTQ as a ``ptq<format>`` model of qwave bench)."""

from __future__ import annotations

import argparse
import copy
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qwave import artifact
from qwave.atomic import check_writable
from qwave.bench.config import ModelConfig
from qwave.bench.options import add_config_options, bench_config, validated
from qwave.commands.compare import feature_names
from qwave.data import load_table
from qwave.data.source import add_table_arguments, table_file, table_spec
from qwave.errors import ArtifactError, ConfigError, DataError, FormatError
from qwave.formats import QuantPlan
from qwave.nn import PackedLinear, ptq
from qwave.nn.recurrent import PackedRecurrent, pack_recurrent

log = logging.getLogger(__name__)

FLOAT_FORMATS = ("fp32", "fp16", "bf16")
OPTIONS = (
    ("--keep-last-fp", "model.keep_last_fp", "keep the last Linear in fp32", None),
    ("--group-size", "model.group_size", "integer formats: scales per group of inputs", None),
    ("--weight-only", "model.weight_only", "integer and ternary formats keep float activations", None),
    ("--min-agreement", "model.ptq_min_agreement", "PTQ gate: least top-1 agreement with the FP32 model", None),
    ("--strict", "model.ptq_strict", "fail instead of warn below --min-agreement", None),
)
EPILOG = """examples:
  qwave quantize models/fp32 --formats 8,4,2,1,bitnet,qesc --calib esc50.csv.gz --label class_id --out models/
  qwave quantize models/fp32 --layer-formats 1,1,8 --calib esc50.csv.gz --out models/   # mixed precision
  qwave quantize models/fp32 --formats 1 --calib t.csv --out models/ --min-agreement 0.95 --strict
"""


def float_model(model: nn.Module, source: Path) -> nn.Module:
    """A trainable float copy of a loaded FP32 artifact: each float PackedLinear back to ``nn.Linear``."""
    model = copy.deepcopy(model)
    for path, module in list(model.named_modules()):
        if isinstance(module, PackedRecurrent):
            raise ArtifactError(f"{source}: its recurrent layer is already packed; quantize the FP32 artifact")
        if not isinstance(module, PackedLinear):
            continue
        if module.fmt.name not in FLOAT_FORMATS:
            raise ArtifactError(f"{source}: layer {path!r} is already quantized ({module.fmt.name}); "
                                "quantize the FP32 artifact it was made from")
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(module.fmt.dequantize(module.fmt.unpack(module.packed, module.shape)))
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, linear)
    return model


def quantize_one(model: nn.Module, plan: QuantPlan, calib: np.ndarray | None, labels: np.ndarray | None,
                 m: ModelConfig) -> nn.Module:
    """PTQ of the float ``model`` with the gate settings of ``m``, as the benchmark's PTQ; a GRU/LSTM is packed in
    the plan's first format too and the agreement gate then covers it."""
    recurrent = any(type(m) in (nn.GRU, nn.LSTM) for m in model.modules())
    packed = ptq(model, plan, None if recurrent else calib, calib_labels=None if recurrent else labels,
                 min_agreement=m.ptq_min_agreement, strict=m.ptq_strict)
    if recurrent:
        report = packed.ptq_report
        packed = pack_recurrent(packed, plan.default.build())
        if calib is not None:
            with torch.no_grad():
                ref = model.eval()(torch.as_tensor(calib)).argmax(-1)
                got = packed(torch.as_tensor(calib)).argmax(-1)
            report.update(rows=len(calib), agreement=float((ref == got).float().mean()), unit="frames",
                          min_agreement=m.ptq_min_agreement)
            report["passed"] = report["agreement"] >= m.ptq_min_agreement
            if not report["passed"]:
                message = (f"PTQ to {plan.default.name} keeps only {report['agreement']:.1%} frame agreement with "
                           f"the float model on {len(calib)} calibration rows, below min_agreement="
                           f"{m.ptq_min_agreement}; train this format with QAT instead")
                if m.ptq_strict:
                    raise FormatError(message)
                log.warning(message)
        packed.ptq_report = report
    return packed


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qwave quantize", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path, help="FP32 artifact directory (from qwave train)")
    parser.add_argument("--formats", default=None, help="comma-separated formats, e.g. 8,4,2,1,bitnet,qesc")
    parser.add_argument("--layer-formats", default=None, help="one format per Linear layer, e.g. 1,1,8 (mixed)")
    parser.add_argument("--out", type=Path, required=True, help="directory receiving one artifact per format")
    add_table_arguments(parser, data_required=False)
    parser.add_argument("--calib", default=None, type=table_file,
                        help="calibration table (same columns options as --data)")
    add_config_options(parser, OPTIONS)
    args = parser.parse_args(argv)
    if not (args.formats or "").replace(",", "").strip() and not (args.layer_formats or "").replace(",", "").strip():
        raise ConfigError(f"--formats {args.formats!r} names no format; give --formats (e.g. 8,4,1) or "
                          "--layer-formats (e.g. 1,1,8)")
    m = validated(bench_config(args, OPTIONS), OPTIONS).model
    check_writable(args.out, "--out", directory=True)
    options = {"keep_last_fp": m.keep_last_fp, "group_size": m.group_size, "weight_only": m.weight_only}
    plans: list[QuantPlan] = []
    try:
        for name in filter(None, (args.formats or "").split(",")):
            plans.append(QuantPlan.parse(name, **options))
        if args.layer_formats:
            plans.append(QuantPlan.parse(None, layer_formats=[f.strip() for f in args.layer_formats.split(",")],
                                         **options))
    except FormatError as err:
        raise ConfigError(f"--formats/--layer-formats: {err}") from None
    targets = [("mixed_" + "_".join(p.formats) if p.per_layer else p.formats[0], p) for p in plans]
    for out_name, _ in targets:
        artifact.check_target(args.out / out_name, "--out")

    source = artifact.load(args.artifact)
    model = float_model(source, args.artifact)
    calib, labels, note = _calibration_rows(args, source)
    print(f"quantizing {args.artifact} ({note})")
    packed_models = [(out_name, quantize_one(model, plan, calib, labels, m)) for out_name, plan in targets]
    for out_name, packed in packed_models:
        report = packed.ptq_report
        extra = {"source": str(args.artifact), "method": "ptq", "format": out_name, "ptq_report": report,
                 "test_fold": (source.manifest.get("extra") or {}).get("test_fold"), "calibration": note}
        target = artifact.save(packed, args.out / out_name, classes=source.classes,
                               config=source.manifest.get("config"), extra=extra,
                               features=source.manifest.get("features"))
        gate = "" if "agreement" not in report else f"  agreement {report['agreement']:.2%}" + (
            "" if report.get("passed", True) else "  BELOW THE GATE: prefer QAT")
        print(f"  {out_name:16s} -> {target}{gate}")
    return 0


def _calibration_rows(args: argparse.Namespace, source: nn.Module) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Rows of ``--calib`` (labels mapped onto the model's classes), without the source's held-out fold."""
    if args.calib is None:
        return None, None, "no calibration rows"
    args.data = args.calib
    spec = table_spec(args)
    spec.model_features = feature_names(source, args.artifact)
    ds = load_table(spec)
    in_dim = getattr(source, "in_dim", None)
    if in_dim is not None and ds.n_features != in_dim:
        raise DataError(f"{args.calib}: the table has {ds.n_features} feature columns but {args.artifact} takes "
                        f"{in_dim} input features")
    keep = np.ones(len(ds.y), dtype=bool)
    test_fold = (source.manifest.get("extra") or {}).get("test_fold")
    note = f"calibration: {args.calib}"
    if test_fold is not None and ds.fold is not None:
        keep = ds.fold.astype(str) != str(test_fold)
        note += f", fold {test_fold} (held out by training) excluded"
    labels = None
    classes = list(source.classes or [])
    if classes and set(ds.classes) <= set(classes):
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[ds.classes[c]] for c in ds.y[keep]])
    return ds.X[keep], labels, note + f", {int(keep.sum())} rows"
