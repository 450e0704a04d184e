"""Latency and throughput measurement shared by ``qwave speed`` and ``qwave compare``.

``time_round_robin`` times several methods after a warm-up, interleaved (each runs once per round, in a rotating
order, so a shared machine's load moves all of them alike); ``time_blocks`` times methods one block each (peers
whose threads spin after a call); ``latency_stats`` turns per-call seconds into
p50/p95/p99 latency and
samples/s; ``set_threads`` fixes torch's and numba's thread counts; ``layer_audit`` says, per packed layer, which
kernel actually ran (``PackedLinear.last_kernel``), its bytes and its share of the model's time, flagging any
layer that fell back to the PyTorch reference recipe.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from qwave import kernels
from qwave.errors import ConfigError

REFERENCE_DIMS = (1536, (640, 320), 50)  # in_dim, hidden, classes of the reference MLP


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


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_round_robin(
    fns: dict[str, Callable[[], object]], *, warmup: int = 3, repeats: int = 30, min_seconds: float = 0.0,
    max_seconds: float = 5.0, clock: str = "wall",
) -> dict[str, np.ndarray]:
    """Seconds per call of every ``fns[name]()``: ``warmup`` untimed calls each, then rounds in which every method
    runs once (the order rotates by one each round), at least ``repeats`` rounds (more while under ``min_seconds``
    in total), stopping early once ``max_seconds`` (wall time) is spent (at least 3 rounds).

    ``clock="cpu"`` times each call by the process's CPU time instead of the wall clock: on a machine shared with
    other jobs a single-threaded call then counts only the time it ran, not the time it waited for a core (with
    several threads it also counts the thread pool's spin-waits)."""
    if clock not in CLOCKS:
        raise ConfigError(f"clock must be one of {', '.join(CLOCKS)}; got {clock!r}")
    tick = CLOCKS[clock]
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0; got repeats={repeats}, warmup={warmup}")
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    rounds = 0
    while True:
        for name in names[rounds % len(names):] + names[: rounds % len(names)]:
            t0 = tick()
            fns[name]()
            times[name].append(tick() - t0)
        rounds += 1
        spent = time.perf_counter() - start
        if rounds >= 3 and spent >= max_seconds:
            break
        if rounds >= repeats and spent >= min_seconds:
            break
    return {name: np.asarray(t) for name, t in times.items()}


def time_blocks(
    fns: dict[str, Callable[[], object]], *, warmup: int = 3, repeats: int = 30, max_seconds: float = 5.0,
    clock: str = "wall",
) -> dict[str, np.ndarray]:
    """Seconds per call of every ``fns[name]()``, each method in a block of its own: ``warmup`` untimed calls, then
    at least ``repeats`` timed calls (stopping once ``max_seconds`` of wall time are spent, after at least 3). For
    methods whose idle threads keep spinning after a call (ONNX Runtime's default session): interleaved, they would
    take the cores from the method timed next; whatever is timed after a block must warm up again first."""
    if clock not in CLOCKS:
        raise ConfigError(f"clock must be one of {', '.join(CLOCKS)}; got {clock!r}")
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0; got repeats={repeats}, warmup={warmup}")
    tick, times = CLOCKS[clock], {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        spent, start = [], time.perf_counter()
        while len(spent) < repeats and (len(spent) < 3 or time.perf_counter() - start < max_seconds):
            t0 = tick()
            fn()
            spent.append(tick() - t0)
        times[name] = np.asarray(spent)
    return times


def latency_stats(times: np.ndarray, batch: int) -> LatencyStats:
    """Percentiles of per-call ``times`` (seconds) and the throughput ``batch / median``."""
    ms = np.asarray(times, dtype=np.float64) * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return LatencyStats(
        batch=int(batch),
        repeats=int(ms.size),
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        mean_ms=float(ms.mean()),
        samples_per_s=float(batch / (p50 / 1e3)) if p50 > 0 else float("inf"),
    )


def reference_mlp(seed: int = 0, activation: str = "relu") -> nn.Module:
    """The reference MLP 1536 -> 640 -> 320 -> 50 with seeded random weights (the same for every ``activation``),
    in eval mode."""
    from qwave.nn.mlp import build_mlp

    torch.manual_seed(seed)
    in_dim, hidden, classes = REFERENCE_DIMS
    return build_mlp(in_dim, classes, hidden=hidden, dropout=0.0, activation=activation).eval()


def deployed_reference(seed: int, fmt: str) -> nn.Module:
    """The packed reference MLP as format ``fmt`` deploys it: with the hidden activation that format trains with
    (``activation_for``: hardtanh before a binarising or ternarising layer, else ReLU)."""
    from qwave.nn.mlp import activation_for

    return packed_reference(reference_mlp(seed, activation_for([fmt])), fmt)


def hidden_activation(model: nn.Module) -> str:
    """``relu``, ``hardtanh``, ``mixed`` or ``none``: the hidden activation modules of ``model``."""
    found = {name for m in model.modules() for name, kind in (("relu", nn.ReLU), ("hardtanh", nn.Hardtanh))
             if isinstance(m, kind)}
    return found.pop() if len(found) == 1 else ("mixed" if found else "none")


def packed_reference(model: nn.Module, fmt: str) -> nn.Module:
    """A packed copy of a float model in format ``fmt`` (every Linear layer), ready for inference."""
    from qwave.nn.surgery import pack_model, quantize_model

    return pack_model(quantize_model(copy.deepcopy(model), fmt))


def float_twin(model: nn.Module) -> nn.Module:
    """An FP32 eager copy of ``model`` in eval mode: every ``PackedLinear`` replaced by an ``nn.Linear`` holding its
    dequantized weights (the float network the packed one stands for), the baseline a model's speed is set against
    (``qwave bench`` times the two interleaved). A model without packed layers is copied as it is."""
    from qwave.nn.packed_linear import PackedLinear

    twin = copy.deepcopy(model).eval()
    for path, layer in [(p, m) for p, m in twin.named_modules() if isinstance(m, PackedLinear)]:
        weight = layer.fmt.dequantize(layer.fmt.unpack(layer.packed, layer.shape)).float()
        linear = nn.utils.skip_init(nn.Linear, layer.in_features, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight.reshape(layer.out_features, layer.in_features))
            if layer.bias is not None:
                linear.bias.copy_(layer.bias.float())
        parent, _, name = path.rpartition(".")
        if not name:
            return linear.eval()
        setattr(twin.get_submodule(parent), name, linear)
    return twin


def memory_row(model: nn.Module) -> dict:
    """Stored bytes (what the model saves) and resident bytes (what it holds now: call it after a forward), their
    ratio and the over-1.1x flag (``qwave.size.resident_fields``)."""
    from qwave.size import report, resident_bytes, resident_fields

    stored = report(model).stored_bytes
    return {"stored_bytes": stored, **resident_fields(resident_bytes(model), stored)}


@dataclass(frozen=True)
class LayerAudit:
    """What one packed layer stores and which implementation ran its last forward."""

    path: str
    format: str
    kernel: str
    stored_bytes: int
    cached_bytes: int
    time_share: float  # fraction of the summed layer times
    fallback: bool  # ran the PyTorch reference recipe instead of a fast kernel

    def as_dict(self) -> dict:
        return asdict(self)


def layer_audit(model: nn.Module, x: torch.Tensor, repeats: int = 5) -> list[LayerAudit]:
    """Run ``model(x)`` ``repeats`` times with timing hooks on every ``PackedLinear`` and report each layer."""
    from qwave.nn.packed_linear import PackedLinear

    layers = [(path, m) for path, m in model.named_modules() if isinstance(m, PackedLinear)]
    spent = {path: 0.0 for path, _ in layers}
    starts: dict[str, float] = {}
    handles = []
    for path, module in layers:
        start = lambda m, a, p=path: starts.__setitem__(p, time.perf_counter())  # noqa: E731
        handles.append(module.register_forward_pre_hook(start))
        handles.append(
            module.register_forward_hook(
                lambda m, a, o, p=path: spent.__setitem__(p, spent[p] + time.perf_counter() - starts[p])
            )
        )
    try:
        with torch.inference_mode():
            for _ in range(max(1, repeats)):
                model(x)
    finally:
        for handle in handles:
            handle.remove()
    total = sum(spent.values()) or 1.0
    return [
        LayerAudit(
            path=path,
            format=module.fmt.name,
            kernel=str(module.last_kernel),
            stored_bytes=module.stored_bytes,
            cached_bytes=module.kernel_cached_bytes,
            time_share=spent[path] / total,
            fallback=module.last_kernel == kernels.FALLBACK,
        )
        for path, module in layers
    ]
