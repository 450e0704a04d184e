"""``qwave doctor``: what a bug report needs, and a self-check of every format's fast kernel against its reference.

Prints versions (qwave, Python, torch, numpy, numba, optional backends), the CPU model and the flags that matter
for the kernels, thread counts, the CUDA device when present, and per registered format which kernel runs and
whether it reproduces the format's reference ``matmul`` on a tiny odd-shaped input (and, where the kernel has a
whole-chain entry point, whether the fused path's chain call gives the kernel's output bit for bit). Running it
compiles every kernel this CPU uses into numba's cache: numba compiles one function at a time per process, so with
several cores the formats whose kernels share no compiled code are checked first in helper processes (``--jobs``),
which fill the cache while this process checks the rest; then every check runs here, loading what they compiled.
Exit code 1 when a self-check fails.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys

import numpy as np
import torch

from qwave import kernels
from qwave.errors import ConfigError

OPTIONAL = ("numba", "llvmlite", "onnxruntime", "onnx", "torchao", "triton", "safetensors", "hydra", "matplotlib")
FLAGS = ("avx2", "fma", "popcnt", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avxvnni",
         "avx512vpopcntdq", "neon", "asimd")
SHAPE, BATCH = (13, 77), 3  # in_features 77: not a multiple of 8, 32 or 64


def _version(module: str) -> str | None:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "installed"))
    except Exception:
        return None


def cpu_info() -> dict:
    """CPU model, the kernel-relevant flags (from /proc/cpuinfo, else LLVM's host features) and thread counts."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model", "hardware") and model in ("", platform.machine()):
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    if not flags:
        try:
            from llvmlite import binding as llvm

            flags = {f[1:] for f in llvm.get_host_cpu_features().flatten().split(",") if f.startswith("+")}
        except ImportError:
            pass
    flags = {f.replace("_", "") for f in flags}
    return {
        "model": model,
        "machine": platform.machine(),
        "flags": {name: name.replace("_", "") in flags for name in FLAGS},
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def _run_chain(kernel: kernels.Kernel, state, x: torch.Tensor) -> torch.Tensor | None:
    """The kernel's whole-chain entry point (the fused path's) on one layer, or None where it has none. It also
    compiles that entry point, so a later fused model loads it from the cache."""
    run = None if kernel.chain is None or x.device.type != "cpu" else kernel.chain(
        [(state, np.empty(0, np.float32), kernels.NO_ACTIVATION)])
    return None if run is None else torch.from_numpy(run(x.numpy()))


def self_check(name: str, device: str = "cpu") -> dict:
    """Run the format's fast kernel (if any) and its reference on a tiny odd-shaped input; report agreement."""
    from qwave.formats import get_format

    fmt = get_format(name)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(SHAPE, generator=gen)
    x = torch.randn(BATCH, SHAPE[1], generator=gen)
    result = {"format": name, "device": device, "kernel": kernels.FALLBACK, "ok": True, "max_abs_diff": 0.0}
    try:
        kernel = kernels.kernel_for(fmt, device)
    except Exception as err:  # a kernel module that fails to import or compile
        return {**result, "ok": False, "error": f"kernel failed to load: {err}"}
    if kernel is None:
        return result
    result["kernel"] = kernel.name
    try:
        packed = {k: v.to(device) for k, v in fmt.pack(fmt.quantize(w)).items()}
        xd = x.to(device)
        want = fmt.matmul(xd, packed, SHAPE).cpu()
        state = kernel.prepare(fmt, packed, SHAPE)
        got = kernel.run(state, xd).cpu()
        restored = None if kernel.unprepare is None else kernel.unprepare(fmt, state)
        chained = _run_chain(kernel, state, xd)
    except Exception as err:
        return {**result, "ok": False, "error": f"kernel failed to run: {err}"}
    diff = float((got - want).abs().max())
    exact = fmt.activations == "int8" or fmt.name == "fp32"  # integer recipes; fp32 runs PyTorch's own GEMM
    ok = torch.equal(got, want) if exact else torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    if chained is not None and not torch.equal(chained, got):
        return {**result, "ok": False, "max_abs_diff": diff, "error": "the fused chain call differs from the kernel"}
    # The layer keeps only the kernel state when the kernel inverts it: the inverse must give the stored bits back.
    inverse = None if restored is None else restored.keys() == packed.keys() and all(
        restored[k].dtype == t.dtype and torch.equal(restored[k].cpu(), t.cpu()) for k, t in packed.items())
    return {**result, "ok": bool(ok) and inverse is not False, "max_abs_diff": diff, "exact": exact,
            "inverse_exact": inverse}


def kernel_families(names: list[str]) -> list[list[str]]:
    """The formats grouped by the module their CPU kernel runs from (formats of one module share compiled
    functions, so one process should compile them), largest group first; formats without a fast kernel apart."""
    from qwave.formats import get_format

    groups: dict[str, list[str]] = {}
    for name in names:
        kernel = kernels.kernel_for(get_format(name), "cpu")
        groups.setdefault("reference" if kernel is None else kernel.run.__module__, []).append(name)
    return sorted(groups.values(), key=len, reverse=True)


def compile_elsewhere(families: list[list[str]], jobs: int) -> list[subprocess.Popen]:
    """Start up to ``jobs - 1`` helper processes that self-check (and so compile into the shared numba cache) all
    families but the first, which this process checks meanwhile. None when the kernels are off or the cache cannot
    be shared (an unwritable folder: each process would compile for itself)."""
    status = kernels.status()
    rest = families[1:]
    if jobs < 2 or not rest or not status["fast_kernels"] or not status["cache_writable"]:
        return []
    shares = [rest[i::jobs - 1] for i in range(min(jobs - 1, len(rest)))]
    code = "import sys; from qwave.commands.doctor import self_check; [self_check(n) for n in sys.argv[1:]]"
    return [subprocess.Popen([sys.executable, "-c", code, *(n for family in share for n in family)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for share in shares]


def cpu_checks(names: list[str], jobs: int) -> list[dict]:
    """``self_check`` of every format on the CPU, in ``names``' order, compiling on up to ``jobs`` processes."""
    families = kernel_families(names)
    helpers = compile_elsewhere(families, jobs)
    checks = {name: self_check(name) for name in (families[0] if helpers else [])}
    for helper in helpers:
        helper.wait()  # a helper that failed leaves its kernels to compile here; its result is not used
    return [checks[name] if name in checks else self_check(name) for name in names]


def default_jobs() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def report(jobs: int = 1) -> dict:
    """Everything ``qwave doctor`` prints, as data (``jobs``: processes that may compile kernels at once)."""
    from qwave.formats import registered_formats

    versions = {"qwave": _version("qwave"), "python": sys.version.split()[0], "torch": torch.__version__,
                "numpy": _version("numpy")}
    versions.update({m: _version(m) for m in OPTIONAL})
    cuda = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        cuda = {"device": props.name, "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}
    devices = ["cpu"] + (["cuda"] if cuda else [])
    checks = cpu_checks(registered_formats(), jobs)
    checks += [self_check(name, device) for device in devices[1:] for name in registered_formats()]
    return {"versions": versions, "cpu": cpu_info(), "cuda": cuda, "kernels": kernels.status(), "self_checks": checks}


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="qwave doctor", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--jobs", type=int, default=default_jobs(),
                   help="processes that compile kernels at once (default: this machine's cores)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1; got {args.jobs}")
    data = report(args.jobs)
    failed = [c for c in data["self_checks"] if not c["ok"]]
    if args.json:
        print(json.dumps(data, indent=2))
        return 1 if failed else 0
    print("versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items() if v))
    missing = [k for k, v in data["versions"].items() if v is None]
    if missing:
        print("not installed: " + ", ".join(missing))
    cpu = data["cpu"]
    print(f"cpu: {cpu['model']} ({cpu['machine']}), {cpu['logical_cpus']} logical CPUs, torch threads "
          f"{cpu['torch_threads']}")
    print("flags: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in cpu["flags"].items()))
    gpu = data["cuda"]
    print("cuda: " + (f"{gpu['device']} (capability {gpu['capability']})" if gpu else "none"))
    status = data["kernels"]
    print(f"fast kernels: {'on' if status['fast_kernels'] else 'OFF'} ({status['reason']})")
    if status["cache_dir"]:
        unwritable = "" if status["cache_writable"] else " (NOT writable: kernels compile again in every process)"
        print(f"kernel cache: {status['cache_dir']}{unwritable}")
    for c in data["self_checks"]:
        verdict = "ok" if c["ok"] else "FAILED"
        note = c.get("error", f"max |diff| {c['max_abs_diff']:.2e}")
        if c.get("inverse_exact") is not None:
            note += ", layout inverse " + ("exact" if c["inverse_exact"] else "WRONG")
        warn = "  (WARNING: no fast kernel, reference recipe runs)" if c["kernel"] == kernels.FALLBACK else ""
        print(f"  {c['device']:<5} {c['format']:<8} {c['kernel']:<26} self-check {verdict}: {note}{warn}")
    if failed:
        print(f"{len(failed)} self-check(s) failed", file=sys.stderr)
    return 1 if failed else 0
