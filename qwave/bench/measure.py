"""What one benchmark job measures besides accuracy: warm inference time, its own peak memory, the kernels that ran.

- **Time**: the first forward of a loaded artifact prepares the kernels' weight layouts (and compiles them on first
  use in the process), so it is timed apart (``first_call_seconds``). Then the deployed path (the fused
  whole-model kernels where the model fuses, as ``qwave.load`` runs it) and the model's FP32 twin (the same network
  with float ``nn.Linear`` layers, ``eval.speed.float_twin``) forward the whole test fold in turn, interleaved
  round-robin after a warm-up, ``ROUNDS`` rounds and ``MIN_SECONDS`` at least (fewer rounds, never under 3, when
  they take over ``MAX_SECONDS``, e.g. a large fold on a crowded machine): ``ms/sample`` is the model's
  median, ``speed_vs_fp32`` the twin's median over it, measured in the same process under the same load (as
  ``qwave speed`` sets each method against FP32 eager), not across jobs run at different times.
- **Memory**: a job's peak resident memory, not the process's peak so far. On Linux the kernel's peak-RSS
  counter (``VmHWM``) is reset at the start of the job (``/proc/self/clear_refs`` <- 5) and read at its end, and
  the resident memory at the start is recorded too, so ``peak_rss_delta_mb`` is what the job added. Where that
  reset is impossible the process-wide ``ru_maxrss`` is reported and ``memory_method`` says so.
- **Kernels**: per packed layer, its format and the implementation its last forward ran; a layer that fell back
  to the PyTorch reference recipe is logged once per (format, reason) per process, as a warning.
"""

from __future__ import annotations

import logging
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qwave import kernels
from qwave.eval.speed import float_twin
from qwave.eval.timing import predict_logits, time_calls
from qwave.nn.fused import FUSED_SUFFIX, deployed

log = logging.getLogger(__name__)

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
_warned: set[tuple[str, str]] = set()
# warm rounds (model, FP32 twin) per job: ROUNDS and MIN_SECONDS at least, unless MAX_SECONDS pass first (>= 3 rounds)
ROUNDS, MIN_SECONDS, MAX_SECONDS = 30, 0.5, 5.0


@dataclass
class Timing:
    """Logits of the timed model, how long its first and its warm forwards took, and its FP32 twin's."""

    logits: torch.Tensor
    first_call_seconds: float
    seconds: float  # median of the warm repeats
    repeats: int
    fp32_seconds: float  # the FP32 twin's median, timed interleaved with the model's

    @property
    def speed_vs_fp32(self) -> float:
        return self.fp32_seconds / self.seconds if self.seconds > 0 else float("inf")


def timed_inference(model: nn.Module, X: torch.Tensor, rounds: int = ROUNDS, min_seconds: float = MIN_SECONDS,
                    max_seconds: float = MAX_SECONDS, clock: str = "wall") -> Timing:
    """The path a deployed model runs (``nn.fused.deployed``: fused when the model fuses, as ``qwave.load``'s
    classifier does): one first forward (timed apart with the compile step: kernel preparation), then warm forwards
    of it and of its FP32 twin interleaved (see the module docstring): the medians of each. ``clock="cpu"``: the
    warm forwards are timed by process CPU time (``eval.timing.time_calls``; one thread on a crowded machine)."""
    start = time.perf_counter()
    forward = deployed(model)
    logits = predict_logits(forward, X)
    first = time.perf_counter() - start
    twin = float_twin(model)
    times = time_calls({"model": lambda: predict_logits(forward, X), "fp32": lambda: predict_logits(twin, X)},
                       warmup=2, repeats=rounds, min_seconds=min_seconds, max_seconds=max_seconds, clock=clock)
    return Timing(logits, first, float(statistics.median(times["model"])), len(times["model"]),
                  float(statistics.median(times["fp32"])))


def _status_kb(field: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class JobMemory:
    """The peak resident memory of one job (see the module docstring): ``begin()`` at its start, ``end()`` after."""

    reset: bool
    start_kb: int | None

    @classmethod
    def begin(cls) -> JobMemory:
        try:
            CLEAR_REFS.write_text("5")
            reset = _status_kb("VmHWM") is not None
        except OSError:
            reset = False
        return cls(reset, _status_kb("VmRSS"))

    def end(self) -> dict:
        """``peak_rss_mb`` (the job's own peak), ``peak_rss_delta_mb`` (above the RSS at its start), the method."""
        peak_kb = _status_kb("VmHWM") if self.reset else None
        if peak_kb is not None:  # the kernel updates VmHWM lazily: it can lag the RSS read at the start or now
            peak_kb = max(peak_kb, self.start_kb or 0, _status_kb("VmRSS") or 0)
        if peak_kb is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            return {"peak_rss_mb": peak, "peak_rss_delta_mb": None,
                    "memory_method": "ru_maxrss: process-wide peak so far (the per-job reset is unavailable)"}
        return {"peak_rss_mb": peak_kb / 1024, "peak_rss_delta_mb": (peak_kb - (self.start_kb or 0)) / 1024,
                "memory_method": "VmHWM reset at job start (/proc/self/clear_refs)"}


def layer_kernels(model: nn.Module) -> dict[str, dict]:
    """Per packed layer (after a forward): its format, the kernel that ran and whether it ran in the fused
    whole-model path (``fused``); ``fallback`` marks the reference recipe."""
    from qwave.nn.packed_linear import PackedLinear

    layers = {}
    for path, m in model.named_modules():
        if isinstance(m, PackedLinear):
            name = str(m.last_kernel)
            fused = name.endswith(FUSED_SUFFIX)
            kernel = name.removesuffix(FUSED_SUFFIX)
            layers[path] = {"format": m.fmt.name, "kernel": kernel, "fused": fused,
                            "fallback": kernel == kernels.FALLBACK}
    return layers


def warn_fallbacks(layers: dict[str, dict], where: str) -> list[str]:
    """Log once per process per (format, reason) when a layer ran the slow reference recipe; returns the paths."""
    fallen = [path for path, layer in layers.items() if layer["fallback"]]
    reason = kernels.status()["reason"]
    for fmt in sorted({layers[path]["format"] for path in fallen}):
        if (fmt, reason) not in _warned:
            _warned.add((fmt, reason))
            paths = ", ".join(p for p in fallen if layers[p]["format"] == fmt)
            log.warning("%s: %s layers (%s) ran the PyTorch reference recipe, not a fast kernel (%s); their "
                        "timings are not the packed kernels'", where, fmt, paths, reason)
    return fallen
