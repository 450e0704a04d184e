"""The ``qwave`` command: a thin dispatcher to one module per subcommand in ``qwave.commands``."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings

from qwave.errors import QwaveError

SUBCOMMANDS: dict[str, str] = {
    "bench": "cross-validated benchmark of models x folds x seeds (Hydra overrides, -m for sweeps)",
    "gather": "merge the summaries of several runs or a multirun into one table",
    "size": "stored and active bytes per model and format, from packed tensors (no training needed)",
    "speed": "latency and throughput of packed kernels against FP32 and peer int8 backends",
    "train": "train one deployable artifact on a table",
    "export": "a saved artifact -> ONNX file or dependency-free C99 sources (same logits)",
    "predict": "run a saved artifact on a table or .npy rows -> predictions.csv (ids, classes, probabilities)",
    "quantize": "turn an FP32 artifact into packed PTQ artifacts",
    "compare": "compare a quantized artifact with its original (logits, predictions, speed, size)",
    "compare-all": "compare every artifact under a directory with the original, one table",
    "study": "quantization studies: ptq-int8, qat-vs-ptq, bit-sweep, moe-curiosity",
    "extract": "audio or spectrogram images -> embedding table",
    "doctor": "versions, CPU flags, backends and kernel self-checks for a bug report",
}

EXAMPLES = """examples:
  qwave bench                                   # FP32 vs packed formats on the bundled ESC-50 table
  qwave predict outputs/default/8/fold_1/artifact --data table.parquet --out predictions.csv
  qwave bench data.path=esc50.csv data.label=class_id data.fold=folder models=[fp32] cv.folds=official tag=my_run
  qwave bench -m seed=0,1,2 models=[fp32],[4]   # Hydra multirun sweep, then: qwave gather outputs/multirun
  qwave size --formats fp32,16,8,4,2,1,bitnet,qesc
  qwave export models/int8 --to c --out int8_c   # deploy without qwave: ONNX (--to onnx) or C99
  qwave <command> --help                        # each command's own options and examples
"""


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name.ljust(width)}  {text}" for name, text in SUBCOMMANDS.items()]
    return "usage: qwave <command> [options]\n\ncommands:\n" + "\n".join(lines) + "\n\n" + EXAMPLES


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qwave`` script; returns the process exit code.

    A reader that closes the pipe early (``qwave --help | head -1``) ends the output quietly, with the exit code a
    shell gives a writer stopped by SIGPIPE (141), instead of a BrokenPipeError traceback. Ctrl-C at any point
    (importing the command's libraries included) is one line and exit code 130.
    """
    try:
        code = _main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more reaches the closed pipe
        return 141
    except KeyboardInterrupt:
        print("qwave: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"qwave: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    held: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as held:
            module = importlib.import_module(f"qwave.commands.{name.replace('-', '_')}")
            code = int(module.run(rest) or 0)
        _show(held)
        return code
    except BrokenPipeError:
        raise
    except (QwaveError, OSError) as err:  # OSError: a file that could not be written after all (disk full, ...)
        print(f"qwave {name}: error: {err}", file=sys.stderr)  # the one line is the whole story: no warnings
        return 2
    except KeyboardInterrupt:
        print(f"qwave {name}: interrupted", file=sys.stderr)
        return 130


def _show(held: list[warnings.WarningMessage]) -> None:
    """Print the warnings a successful command raised (each distinct one once), after its output."""
    seen = set()
    for w in held:
        key = (str(w.message), w.category, w.filename, w.lineno)
        if key not in seen:
            seen.add(key)
            print(warnings.formatwarning(w.message, w.category, w.filename, w.lineno).rstrip(), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
