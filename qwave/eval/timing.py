"""How qwave runs and times a model, one set of rules for ``qwave speed``, ``qwave compare`` and the benchmark's
speed column: batched logits without gradients (``predict_logits``), a fixed thread count (``set_threads``),
untimed warm-up calls, then timed calls interleaved round-robin (every method once per round, the order rotating by
one each round, so a shared machine's load moves all of them alike) or one block per method (peers whose threads
spin after a call), and the medians and percentiles of the per-call seconds (``latency_stats``, ``time_pair``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from qwave.errors import ConfigError

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def predict_logits(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor, batch_size: int = 4096
) -> torch.Tensor:
    """Logits of ``model`` (a module, put in eval mode, or a compiled forward such as a ``FusedMLP``) over ``X`` in
    batches of ``batch_size`` rows, without gradients, on the device of ``X`` (``X`` itself when it has no rows)."""
    if isinstance(model, nn.Module):
        model.eval()
    with torch.no_grad():
        return torch.cat([model(X[i : i + batch_size]) for i in range(0, len(X), batch_size)]) if len(X) else X


def set_threads(threads: int) -> None:
    """Use ``threads`` threads in torch and in numba's parallel kernels (when numba is present)."""
    if threads < 1:
        raise ConfigError(f"--threads must be at least 1; got {threads}")
    torch.set_num_threads(threads)
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass


def time_calls(
    fns: dict[str, Callable[[], object]], *, warmup: int = 3, repeats: int = 30, min_seconds: float = 0.0,
    max_seconds: float = 5.0, clock: str | Callable[[], float] = "wall", interleaved: bool = True,
) -> dict[str, np.ndarray]:
    """Seconds per call of every ``fns[name]()``. Interleaved: ``warmup`` untimed calls of each, then rounds in
    which every method runs once (the order rotating by one each round); else each method in a block of its own
    (its warm-up, then its timed calls: for methods whose idle threads keep spinning after a call, ONNX Runtime's
    default session, which would take the cores from the method timed next). At least ``repeats`` rounds (more
    while under ``min_seconds``), stopping early once ``max_seconds`` of wall time are spent (after at least 3).

    ``clock="cpu"`` times each call by the process's CPU time: on a machine shared with other jobs a
    single-threaded call then counts only the time it ran, not the time it waited for a core (with several threads
    it also counts the thread pool's spin-waits); a callable is read as the clock itself."""
    if not callable(clock) and clock not in CLOCKS:
        raise ConfigError(f"clock must be one of {', '.join(CLOCKS)}; got {clock!r}")
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0; got repeats={repeats}, warmup={warmup}")
    tick = clock if callable(clock) else CLOCKS[clock]
    times: dict[str, list[float]] = {name: [] for name in fns}
    for names in [list(fns)] if interleaved else [[name] for name in fns]:
        for name in names:
            for _ in range(warmup):
                fns[name]()
        start, rounds = time.perf_counter(), 0
        while True:
            for name in names[rounds % len(names):] + names[: rounds % len(names)]:
                t0 = tick()
                fns[name]()
                times[name].append(tick() - t0)
            rounds += 1
            spent = time.perf_counter() - start
            if (rounds >= 3 and spent >= max_seconds) or (rounds >= repeats and spent >= min_seconds):
                break
    return {name: np.asarray(t) for name, t in times.items()}


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles (milliseconds per call) and throughput of one method at one batch size."""

    batch: int
    repeats: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    samples_per_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def latency_stats(times: np.ndarray, batch: int) -> LatencyStats:
    """Percentiles of per-call ``times`` (seconds) and the throughput ``batch / median``."""
    ms = np.asarray(times, dtype=np.float64) * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return LatencyStats(batch=int(batch), repeats=int(ms.size), p50_ms=float(p50), p95_ms=float(p95),
                        p99_ms=float(p99), mean_ms=float(ms.mean()),
                        samples_per_s=float(batch / (p50 / 1e3)) if p50 > 0 else float("inf"))


def time_pair(
    models: dict[str, nn.Module], X: torch.Tensor, *, warmup: int = 3, repeats: int = 20, batch_size: int = 256,
    clock: str | Callable[[], float] = "wall",
) -> dict[str, dict]:
    """Seconds per sample of each model over all of ``X`` (``predict_logits`` in batches of ``batch_size``),
    interleaved (``time_calls``, exactly ``repeats`` rounds): the median over the rounds, p10 and p90 too, so every
    model sees the same machine state. CUDA work is synchronised inside each timed call."""
    sync: Callable[[], None] = torch.cuda.synchronize if X.is_cuda else (lambda: None)
    calls = {name: (lambda m=model: (predict_logits(m, X, batch_size), sync())) for name, model in models.items()}
    sync()
    times = time_calls(calls, warmup=warmup, repeats=repeats, max_seconds=float("inf"), clock=clock)
    n = max(len(X), 1)
    return {
        name: {
            "seconds_per_sample": float(np.median(t)) / n,
            "p10_seconds_per_sample": float(np.percentile(t, 10)) / n,
            "p90_seconds_per_sample": float(np.percentile(t, 90)) / n,
            "repeats": repeats, "warmup": warmup, "batch_size": batch_size, "samples": len(X),
        }
        for name, t in times.items()
    }
