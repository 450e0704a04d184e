"""Fast matmuls over packed weights, behind one small registry that ``PackedLinear`` consults.

A ``Kernel`` serves one or more formats on one device type: ``prepare`` turns the packed tensors into its own
layout once (kept on the layer, never saved; ``cached_bytes`` says what that copy costs in memory), ``run`` does
the matmul. A kernel whose layout is a permutation of the stored bits also gives ``unprepare``, the exact inverse
of ``prepare``: ``PackedLinear`` then drops its packed buffers and re-derives them when it saves, so the weights
are held once. ``kernel_for`` returns the registered kernel for a format and device, or ``None``, in which case the
format's pure-PyTorch reference ``matmul`` runs and the layer's audit says so.

``FAST_KERNELS`` is false when numba is missing, the CPU lacks AVX2, or ``QWAVE_DISABLE_FAST_KERNELS`` is set to
a true value; ``status()`` says which and why, and where numba caches the compiled
kernels (``cache_dir``, chosen by ``qwave.kernels.cache``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qwave.kernels.cache import configure as configure_cache
from qwave.kernels.cache import writable

FALLBACK = "torch-reference"

# The hidden activation a kernel's epilogue applies after the bias (``Kernel.run_np``'s ``act``).
NO_ACTIVATION, RELU, HARDTANH = 0, 1, 2


def _disabled() -> bool:
    return os.environ.get("QWAVE_DISABLE_FAST_KERNELS", "").strip().lower() in ("1", "true", "yes", "on")


def _probe() -> tuple[bool, str]:
    if _disabled():
        return False, "disabled by QWAVE_DISABLE_FAST_KERNELS"
    try:
        CACHE["dir"] = configure_cache()
        from qwave.kernels._simd import HAS_AVX2
    except ImportError as err:  # numba or llvmlite missing
        return False, f"numba unavailable ({err})"
    if not HAS_AVX2:
        return False, "CPU lacks AVX2"
    return True, "numba + AVX2"


CACHE: dict[str, Path] = {}  # where numba keeps the compiled kernels (``qwave.kernels.cache``)
FAST_KERNELS, REASON = _probe()


@dataclass(frozen=True)
class Kernel:
    """One fast implementation of ``x @ W.T`` for packed weights of the listed formats on one device type."""

    name: str
    formats: tuple[str, ...]
    device: str  # "cpu" or "cuda"
    prepare: Callable[[Any, dict[str, torch.Tensor], tuple[int, int]], Any]  # (fmt, packed, shape) -> state
    run: Callable[[Any, torch.Tensor], torch.Tensor]  # (state, x [batch, in] float32) -> [batch, out] float32
    cached_bytes: Callable[[Any], int] = lambda state: 0
    supports: Callable[[Any], bool] = lambda fmt: True  # e.g. only some format options
    # The exact inverse of ``prepare``, (fmt, state) -> the packed tensors bit for bit, when the layout is a
    # permutation of the stored bits (the layer then keeps only the state); None when it is not invertible.
    unprepare: Callable[[Any, Any], dict[str, torch.Tensor]] | None = None
    # Optional NumPy entry point for the fused whole-model path: (state, x float32 [batch, in], bias float32
    # [out] or empty, act) -> float32 [batch, out], with the bias and the activation ``act`` (NO_ACTIVATION, RELU
    # or HARDTANH) applied inside the kernel's epilogue.
    run_np: Callable[[Any, Any, Any, int], Any] | None = None
    # Optional whole-chain entry point: [(state, bias, act)] of consecutive layers whose kernels all share this very
    # function -> a callable x float32 [batch, in] -> float32 [batch, out] running them in one compiled call (bit
    # for bit ``run_np`` layer after layer), or None when it cannot.
    chain: Callable[[list[tuple[Any, Any, int]]], Callable[[Any], Any] | None] | None = None


_KERNELS: list[Kernel] = []
_enabled = {"fast": FAST_KERNELS}


def register_kernel(kernel: Kernel) -> Kernel:
    """Add a kernel; a later registration for the same format and device takes precedence."""
    _KERNELS.insert(0, kernel)
    return kernel


def set_fast_kernels(enabled: bool) -> bool:
    """Switch the fast kernels on or off at run time (tests, audits); returns the previous setting."""
    previous = _enabled["fast"]
    _enabled["fast"] = bool(enabled) and FAST_KERNELS
    return previous


def kernel_for(fmt: Any, device: torch.device | str = "cpu") -> Kernel | None:
    """The fast kernel for ``fmt`` on ``device``, or ``None`` when only the reference recipe applies."""
    if not _enabled["fast"]:
        return None
    _load_builtin()
    kind = torch.device(device).type
    for kernel in _KERNELS:
        if fmt.name in kernel.formats and kernel.device == kind and kernel.supports(fmt):
            return kernel
    return None


_loaded = {"builtin": False}


def _load_builtin() -> None:
    """Import the built-in kernel modules once (they register themselves)."""
    if _loaded["builtin"]:
        return
    _loaded["builtin"] = True
    import importlib

    for module in BUILTIN:
        importlib.import_module(module)


BUILTIN: tuple[str, ...] = (
    "qwave.kernels.weight_only",
    "qwave.kernels.half",
    "qwave.kernels.int8",
    "qwave.kernels.lowbit",
    "qwave.kernels.popcount",
    "qwave.kernels.cuda",
)


# Features that an AVX2-only x86 CPU (AMD Zen 3: AVX2, FMA, F16C, BMI2, no AVX-512, no VNNI) lacks.
_NOT_AVX2 = ("avx512", "avx10", "amx", "avxvnni", "avxifma", "avxneconvert", "gfni", "evex512")


def avx2_environment() -> dict[str, str]:
    """Environment for a process that runs this machine's CPU as an AVX2-only one: numba compiles for Zen 3 with
    the host's features minus every AVX-512 / VNNI / AMX one (so the kernels pick, and test, their AVX2 variants),
    and torch, MKL and oneDNN are capped to AVX2. Set it before the process starts (numba and torch read it once)."""
    from llvmlite import binding as llvm

    features = llvm.get_host_cpu_features().flatten().split(",")
    forced = ",".join("-" + f[1:] if f.startswith("+") and f[1:].startswith(_NOT_AVX2) else f for f in features)
    return {"NUMBA_CPU_NAME": "znver3", "NUMBA_CPU_FEATURES": forced, "ATEN_CPU_CAPABILITY": "avx2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def status() -> dict:
    """Which kernel family runs, and why (for ``qwave doctor`` and benchmark records)."""
    reason = REASON if _enabled["fast"] or not FAST_KERNELS else "switched off by set_fast_kernels(False)"
    cache = CACHE.get("dir")
    return {"fast_kernels": _enabled["fast"], "available": FAST_KERNELS, "reason": reason,
            "cache_dir": None if cache is None else str(cache), "cache_writable": cache is not None and writable(cache)}
