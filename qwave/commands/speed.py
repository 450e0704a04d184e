"""``qwave speed``: latency and throughput of packed models against FP32 eager and peer int8 backends, one run.

Every method runs side by side in one process with the same thread count, inputs and timing rules, interleaved
round-robin (one call of each per round; medians over the rounds). Methods:
FP32 PyTorch eager, torch ``quantize_dynamic`` int8, each qwave format (packed per-layer path and the fused
whole-model path), torchao int8 and ONNX Runtime FP32/int8 when installed. ONNX Runtime appears twice: as users
run it (``-default``: its default session, whose idle threads spin after each run, so it is timed in a block of its
own before the interleaved rounds, which warm every method up again after it) and with spinning off (``-nospin``,
interleaved with the others). A per-layer audit table names the kernel each packed layer actually ran and warns
about any fallback to the PyTorch reference recipe.

``--isa avx2`` runs the same measurement in a child process that treats this CPU as an AVX2-only one (numba
compiles for Zen 3 without AVX-512 / VNNI, so the kernels take their AVX2 variants; torch, MKL and oneDNN are
capped to AVX2; ONNX Runtime and fbgemm pick their kernels from the CPU and cannot be capped).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from qwave import kernels
from qwave.atomic import check_writable, write_text
from qwave.errors import ConfigError
from qwave.eval import speed, timing
from qwave.tables import model_label, text_table, write_csv

log = logging.getLogger(__name__)
DEFAULT_FORMATS = "int8,binary,qesc,int4,int2,ternary,fp16,bf16"
FORCED_ISA = "QWAVE_SPEED_FORCED_ISA"  # set in the child process of --isa avx2
DEFAULT_SESSION, NO_SPIN = "-default", "-nospin"  # ONNX Runtime as users run it / with its threads' spinning off
INTERLEAVED, OWN_BLOCK = "interleaved", "own block"  # how a method was timed (the ``timing`` column)


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="qwave speed", description=__doc__.splitlines()[0])
    p.add_argument("--formats", default=DEFAULT_FORMATS, help=f"qwave formats of the reference MLP ({DEFAULT_FORMATS})")
    p.add_argument("--artifact", action="append", default=[], help="saved artifact directory (repeatable)")
    p.add_argument("--no-reference", action="store_true", help="skip the reference MLP (time only --artifact)")
    p.add_argument("--batch-sizes", default="1,32,256,4096")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: time calls by process CPU time (a loaded machine; meaningful with --threads 1)")
    p.add_argument("--isa", choices=("native", "avx2"), default="native",
                   help="avx2: time the AVX2 kernel variants and AVX2-capped baselines on this CPU (see above)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=50, help="timed calls per method and batch (at least)")
    p.add_argument("--max-seconds", type=float, default=3.0, help="time budget per method and batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-fused", action="store_true", help="skip the fused whole-model rows")
    p.add_argument("--exported", action="store_true",
                   help="also time each --artifact's ONNX export (ONNX Runtime) and C export (cc, ctypes)")
    p.add_argument("--output-dir", type=Path, default=None, help="write speed.csv, speed.json (and speed.png)")
    p.add_argument("--plot", action="store_true", help="draw p50 latency vs batch size (needs --output-dir)")
    args = p.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise ConfigError(f"--batch-sizes must be comma-separated integers; got {args.batch_sizes!r}") from None
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        raise ConfigError(f"--batch-sizes must be positive integers; got {args.batch_sizes}")
    if args.plot and args.output_dir is None:
        raise ConfigError("--plot needs --output-dir to write the picture")
    if args.output_dir is not None:
        check_writable(args.output_dir, "--output-dir", directory=True)
    return args


def _peer_methods(model: nn.Module, in_dim: int, notes: list[str]) -> tuple[dict[str, Callable], dict[str, Callable]]:
    """(interleaved, own-block) peers: torch dynamic int8 always; torchao and ONNX Runtime only when installed."""
    methods: dict[str, Callable] = {}
    own_block: dict[str, Callable] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dyn = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    methods["torch-dynamic-int8"] = dyn
    try:
        import copy

        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        ao_model = copy.deepcopy(model)
        quantize_(ao_model, Int8DynamicActivationInt8WeightConfig())
        methods["torchao-int8"] = ao_model
    except ImportError:
        notes.append("torchao not installed: torchao-int8 skipped (pip install 'qwave[torchao]')")
    except Exception as err:  # a torchao version without this config or CPU support
        notes.append(f"torchao int8 unavailable here: {err}")
    try:
        onnx = _onnx_methods(model, in_dim)
        methods.update({name: fn for name, fn in onnx.items() if name.endswith(NO_SPIN)})
        own_block.update({name: fn for name, fn in onnx.items() if not name.endswith(NO_SPIN)})
    except ImportError:
        notes.append("onnxruntime/onnx not installed: ONNX Runtime rows skipped (pip install 'qwave[onnx]')")
    except Exception as err:
        notes.append(f"ONNX Runtime rows failed: {err}")
    return methods, own_block


def _onnx_methods(model: nn.Module, in_dim: int) -> dict[str, Callable]:
    """ONNX Runtime FP32 and dynamic int8 (``quantize_dynamic``, QInt8 weights) of ``model``, each in a default
    session (``-default``: as users run it; only the thread count is set, to this run's) and in one with the idle
    threads' spinning off (``-nospin``)."""
    import tempfile

    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    methods = {}
    with tempfile.TemporaryDirectory(prefix="qwave-onnx-") as tmp:  # the sessions hold the models once created
        fp32_path, int8_path = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        torch.onnx.export(model, (torch.zeros(1, in_dim),), str(fp32_path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
        default, nospin = ort.SessionOptions(), ort.SessionOptions()
        default.intra_op_num_threads = nospin.intra_op_num_threads = torch.get_num_threads()
        # ONNX Runtime's idle threads spin after each run by default, taking the cores from whichever method is
        # timed next (in the round-robin that is always the same one: qwave-int8 ran up to 5x slower behind it).
        nospin.add_session_config_entry("session.intra_op.allow_spinning", "0")
        for kind, path in (("fp32", fp32_path), ("int8", int8_path)):
            for suffix, options in ((DEFAULT_SESSION, default), (NO_SPIN, nospin)):
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                methods[f"onnxruntime-{kind}{suffix}"] = lambda x, s=session: s.run(None, {"x": x.numpy()})[0]
    return methods


def _models(args: argparse.Namespace, notes: list[str]) -> list[tuple[str, nn.Module, dict[str, nn.Module], int]]:
    """(model label, float model or None, packed models by format, input width) for every model to time."""
    models = []
    if not args.no_reference:
        ref = speed.reference_mlp(args.seed)
        formats = [f.strip() for f in args.formats.split(",") if f.strip()]
        packed = {f: speed.deployed_reference(args.seed, f) for f in formats}
        models.append(("reference-mlp", ref, packed, speed.REFERENCE_DIMS[0]))
    for folder in args.artifact:
        from qwave import artifact

        model = artifact.load(folder)
        in_dim = int(getattr(model, "in_dim", 0)) or next(
            m.in_features for m in model.modules() if hasattr(m, "in_features")
        )
        models.append((Path(folder).name, None, {"artifact": model.eval()}, in_dim))
    if not models:
        raise ConfigError("nothing to time: drop --no-reference or give --artifact DIR")
    return models


def _run_forced_avx2(argv: list[str]) -> int:
    """The same command in a child process whose numba target and torch/MKL/oneDNN are AVX2-only."""
    env = {**os.environ, **kernels.avx2_environment(), FORCED_ISA: "avx2"}
    code = "import sys; from qwave.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.call([sys.executable, "-c", code, "speed", *argv], env=env)


def run(argv: list[str]) -> int:
    args = _parse(argv)
    if args.isa == "avx2" and os.environ.get(FORCED_ISA) != "avx2":
        return _run_forced_avx2(argv)
    timing.set_threads(args.threads)
    notes: list[str] = []
    if args.isa == "avx2":
        notes.append("--isa avx2: numba target znver3 without AVX-512/VNNI; torch, MKL, oneDNN capped to AVX2; "
                     "ONNX Runtime and torch's fbgemm int8 are NOT capped (they pick kernels from the CPU)")
    if not kernels.status()["fast_kernels"]:
        notes.append(f"WARNING: fast kernels are off ({kernels.status()['reason']}): packed rows run the reference")
    rows: list[dict] = []
    audits: list[dict] = []
    memory: list[dict] = []
    from qwave.nn.fused import compile_model

    exported = {Path(folder).name: folder for folder in args.artifact} if args.exported else {}
    for label, ref, packed, in_dim in _models(args, notes):
        methods: dict[str, Callable] = {}
        own_block: dict[str, Callable] = {}  # timed one block each, before the interleaved rounds
        activations: dict[str, str] = {}  # hidden activation per method; FP32 and peers: the ReLU reference
        if ref is not None:
            methods["fp32-eager"] = ref
            peers, own_block = _peer_methods(ref, in_dim, notes)
            methods.update(peers)
        for fmt, model in packed.items():
            methods[f"qwave-{fmt}"] = model
            activations[f"qwave-{fmt}"] = activations[f"qwave-{fmt}-fused"] = speed.hidden_activation(model)
            fused = None if args.no_fused else compile_model(model)
            if fused is not None:
                methods[f"qwave-{fmt}-fused"] = fused
        if ref is None and label in exported:
            from qwave.export.speed import exported_methods

            found, export_notes = exported_methods(exported[label], args.threads)
            methods.update(found)
            activations.update({name: speed.hidden_activation(packed["artifact"]) for name in found})
            notes += export_notes
        for batch in args.batch_sizes:
            x = torch.randn(batch, in_dim, generator=torch.Generator().manual_seed(args.seed))
            with torch.inference_mode():
                blocks = {name: (lambda fn=fn, x=x: fn(x)) for name, fn in own_block.items()}
                times = timing.time_calls(blocks, warmup=args.warmup, repeats=args.repeats,
                                          max_seconds=args.max_seconds, clock=args.clock, interleaved=False)
                calls = {name: (lambda fn=fn, x=x: fn(x)) for name, fn in methods.items()}
                times.update(timing.time_calls(calls, warmup=args.warmup, repeats=args.repeats,
                                               max_seconds=args.max_seconds * len(calls), clock=args.clock))
            for name in sorted([*methods, *own_block], key=_row_order(list(methods))):
                rows.append({"model": label, "method": name, "label": _label(name),
                             "activation": activations.get(name, "relu"),
                             "timing": OWN_BLOCK if name in own_block else INTERLEAVED,
                             **timing.latency_stats(times[name], batch).as_dict()})
        probe = torch.randn(min(args.batch_sizes[-1], 256), in_dim)
        for fmt, model in packed.items():
            method = {"model": label, "method": f"qwave-{fmt}", "label": _label(f"qwave-{fmt}")}
            audits += [{**method, **layer.as_dict()} for layer in speed.layer_audit(model, probe)]
            memory.append({**method, **speed.memory_row(model)})
    _add_ratios(rows)
    print(_table(rows, args))
    print(_audit_table(audits))
    print(_memory_table(memory))
    for note in notes:
        print(note)
    if args.output_dir is not None:
        _write(args, rows, audits, notes, memory)
    return 0


def _row_order(interleaved: list[str]) -> Callable[[str], int]:
    """Sort key keeping the interleaved methods' order, each ONNX Runtime default-session row just before its
    no-spin twin."""
    position = {name: 2 * i + 1 for i, name in enumerate(interleaved)}
    return lambda name: position.get(name, position.get(name.removesuffix(DEFAULT_SESSION) + NO_SPIN, 0) - 1)


def _add_ratios(rows: list[dict]) -> None:
    """Throughput relative to FP32 eager of the same model and batch (missing for artifact-only models)."""
    base = {(r["model"], r["batch"]): r["samples_per_s"] for r in rows if r["method"] == "fp32-eager"}
    for r in rows:
        ref = base.get((r["model"], r["batch"]))
        r["x_fp32"] = None if ref is None else r["samples_per_s"] / ref


def _label(method: str) -> str:
    """A method as people name it: a qwave format by ``tables.model_label`` (``qwave int4 (W4A8) fused``), peers
    as they are; the CSV and JSON keep ``method`` (``qwave-int4-fused``) beside it."""
    fmt = method.removeprefix("qwave-").removesuffix("-fused")
    if fmt == method:
        return method
    return f"qwave {model_label(fmt)}" + (" fused" if method.endswith("-fused") else "")


def _table(rows: list[dict], args: argparse.Namespace) -> str:
    status = kernels.status()
    head = (f"qwave speed: threads={args.threads}, isa={args.isa}, clock={args.clock}, "
            f"fast kernels={status['fast_kernels']} "
            f"({status['reason']}); p50 ms (throughput x FP32 eager), methods interleaved round-robin except those "
            f"timed in an own block (ONNX Runtime's default session, whose idle threads spin: the interleaved "
            f"methods warm up again after it)\n"
            f"each qwave format is timed as it deploys, with the hidden activation it trains with (activation_for: "
            f"hardtanh before a binarising or ternarising layer); FP32 and peers: the ReLU model of the same weights")
    lines: dict[tuple[str, str], dict] = {}
    for r in rows:
        line = lines.setdefault((r["model"], r["method"]), {"model": r["model"], "method": r["label"],
                                                            "act": r["activation"], "timing": r["timing"]})
        ratio = "" if r["x_fp32"] is None else f" ({r['x_fp32']:.2f}x)"
        line[f"batch {r['batch']}"] = f"{r['p50_ms']:.3f}{ratio}"
    columns = ("model", "method", "act", "timing", *(f"batch {b}" for b in args.batch_sizes))
    return head + "\n" + text_table(list(lines.values()), columns)


def _audit_table(audits: list[dict]) -> str:
    rows = [{**a, "method": a["label"], "time": f"{a['time_share']:.0%}",
             "note": "WARNING: fallback to the PyTorch reference (no fast kernel)" if a["fallback"] else ""}
            for a in audits]
    columns = ("method", "path", "format", "kernel", "stored_bytes", "cached_bytes", "time", "note")
    return "\nper-layer kernel audit\n" + text_table(rows, columns)


def _memory_table(memory: list[dict]) -> str:
    """Stored and resident weight bytes per packed model after its forwards (over 1.1x stored is flagged)."""
    rows = [{**m, "method": m["label"], "resident/stored": f"{m['resident_vs_stored']:.3f}x",
             "note": f"FLAG: resident {m['resident_flag']} stored" if m["resident_flag"] else ""} for m in memory]
    columns = ("model", "method", "stored_bytes", "resident_bytes", "resident/stored", "note")
    return ("\nresident memory (weights held after the first forward; the fused rows share the layers' kernel "
            "state)\n" + text_table(rows, columns))


def _write(args: argparse.Namespace, rows: list[dict], audits: list[dict], notes: list[str],
           memory: list[dict]) -> None:
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "speed.csv", rows, list(rows[0]))
    from qwave.commands.doctor import cpu_info

    meta = {"threads": args.threads, "isa": args.isa, "clock": args.clock, "kernels": kernels.status(),
            "notes": notes, "cpu": cpu_info()}
    result = {"meta": meta, "results": rows, "audit": audits, "memory": memory}
    write_text(out / "speed.json", json.dumps(result, indent=2))
    if args.plot:
        from qwave.plot import plt, save_figure

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for model, method in dict.fromkeys((r["model"], r["method"]) for r in rows):
            pts = sorted((r["batch"], r["p50_ms"]) for r in rows if (r["model"], r["method"]) == (model, method))
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"{model}: {_label(method)}")
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="p50 latency (ms)")
        ax.legend(fontsize=6)
        fig.tight_layout()
        save_figure(fig, out / "speed.png", dpi=120)
    log.info("wrote %s", out)
