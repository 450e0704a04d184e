"""``qwave doctor``: what a bug report needs, and a self-check of every format's fast kernel against its reference.

Prints versions (qwave, Python, torch, numpy, numba, optional backends), the CPU model and the flags that matter
for the kernels, thread counts, the CUDA device when present, and per registered format which kernel runs and
whether it reproduces the format's reference ``matmul`` on a tiny odd-shaped input (and, where the kernel has a
whole-chain entry point, whether the fused path's chain call gives the kernel's output bit for bit). Running it
compiles every kernel this CPU uses into numba's cache. Exit code 1 when a self-check fails.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys

import numpy as np
import torch

from qwave import kernels

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
    import os

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


def report() -> dict:
    """Everything ``qwave doctor`` prints, as data."""
    from qwave.formats import registered_formats

    versions = {"qwave": _version("qwave"), "python": sys.version.split()[0], "torch": torch.__version__,
                "numpy": _version("numpy")}
    versions.update({m: _version(m) for m in OPTIONAL})
    cuda = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        cuda = {"device": props.name, "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}
    devices = ["cpu"] + (["cuda"] if cuda else [])
    checks = [self_check(name, device) for device in devices for name in registered_formats()]
    return {"versions": versions, "cpu": cpu_info(), "cuda": cuda, "kernels": kernels.status(), "self_checks": checks}


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="qwave doctor", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    data = report()
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
