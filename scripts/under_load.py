"""Steadiness under load: batch-1 tail latency and batch-256 throughput of every format beside other work.

Usage: ``python scripts/under_load.py [--threads 2] [--formats int8,...] [--rounds 2] [--output results.json]``.

The deployed reference MLP (1536-640-320-50, fused path, each format with the hidden activation it trains with) and
FP32 eager are timed, interleaved round-robin, at batch 1 and batch 256 in three conditions, in turn, ``--rounds``
times: **quiet** (nothing started by this script; the machine's load average is printed), **busy** (another
process spinning on one core), **ort** (a default ONNX Runtime session, spinning threads and all, running the
reference MLP's FP32 ONNX model at batch 64 back to back in a thread of this process, as a backbone in the same
process does). Per format: batch-1 p50 and p99 in each condition and p99 over the quiet p50 (target <= 3x), batch-256
throughput over the quiet one (target >= 0.45x); medians over the rounds. Where the slow batch-1 calls' time went
(``split_slow_calls``, Linux): for each call above 3x the quiet p50, the share of its wall time this thread ran, waited
on a run queue for a core (``/proc/thread-self/schedstat``), or neither (blocked: waiting for the GIL or a lock). A
benchmark, not a test: the figures go to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from qwave.eval import speed, timing
from qwave.nn.fused import deployed

FORMATS = "int8,int4,int2,ternary,binary,qesc,fp16,bf16"
CONDITIONS = ("quiet", "busy", "ort")
SCHEDSTAT = "/proc/thread-self/schedstat"  # this thread's ns on a CPU, ns waiting on a run queue, time slices


@contextmanager
def busy_core() -> Iterator[None]:
    """Another process keeping one core busy for the duration."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


@contextmanager
def ort_in_process(model: torch.nn.Module, in_dim: int) -> Iterator[None]:
    """A default ONNX Runtime session running ``model`` at batch 64 back to back in a thread of this process."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="qwave-load-") as folder:
        path = str(Path(folder) / "m.onnx")
        torch.onnx.export(model, (torch.zeros(1, in_dim),), path, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((64, in_dim)).astype(np.float32)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            session.run(None, {"x": x})

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()


def measure(methods: dict[str, Callable], in_dim: int, seconds: float) -> dict[str, dict]:
    """Batch-1 latency percentiles and batch-256 throughput of every method, interleaved round-robin."""
    gen = torch.Generator().manual_seed(0)
    result: dict[str, dict] = {name: {} for name in methods}
    with torch.inference_mode():
        for batch, repeats in ((1, 400), (256, 30)):
            x = torch.randn(batch, in_dim, generator=gen)
            calls = {name: (lambda fn=fn, x=x: fn(x)) for name, fn in methods.items()}
            times = timing.time_calls(calls, warmup=5, repeats=repeats, max_seconds=seconds)
            for name, t in times.items():
                stats = timing.latency_stats(t, batch)
                result[name][batch] = {"p50_ms": stats.p50_ms, "p99_ms": stats.p99_ms,
                                       "samples_per_s": stats.samples_per_s, "calls": stats.repeats}
    return result


def split_slow_calls(methods: dict[str, Callable], in_dim: int, calls: int, quiet_p50_ms: dict[str, float]
                     ) -> dict[str, dict]:
    """Batch-1 calls of every method, interleaved; for those slower than 3x ``quiet_p50_ms``: their count and the
    shares of their summed wall time spent running (this thread's CPU time), waiting for a core (its run-queue
    delay) and blocked (the rest: the GIL, a lock). Empty where ``SCHEDSTAT`` cannot be read."""
    try:
        fd = os.open(SCHEDSTAT, os.O_RDONLY)
    except OSError:
        return {}
    x = torch.randn(1, in_dim, generator=torch.Generator().manual_seed(1))
    slow = {name: np.zeros(4) for name in methods}  # calls, wall, running, waiting (seconds)
    try:
        with torch.inference_mode():
            for _ in range(calls):
                for name, fn in methods.items():
                    # the schedstat reads inside the outer window: a wait is booked when the thread gets a core
                    # back, so one that began before the call can be booked by the read after it
                    outer, before = time.perf_counter(), os.pread(fd, 128, 0).split()
                    t0, c0 = time.perf_counter(), time.thread_time()
                    fn(x)
                    call, cpu = time.perf_counter() - t0, time.thread_time() - c0
                    after = os.pread(fd, 128, 0).split()
                    wall = time.perf_counter() - outer
                    if call * 1e3 > 3 * quiet_p50_ms[name]:
                        slow[name] += (1, wall, cpu, (int(after[1]) - int(before[1])) * 1e-9)
    finally:
        os.close(fd)
    return {name: {"slow_calls": int(c), "running": r / w if w else 0.0, "waiting_for_core": q / w if w else 0.0,
                   "blocked": max(0.0, 1 - (r + q) / w) if w else 0.0}
            for name, (c, w, r, q) in slow.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--formats", default=FORMATS)
    p.add_argument("--rounds", type=int, default=2, help="times the three conditions are run in turn")
    p.add_argument("--seconds", type=float, default=20.0, help="most seconds per condition and batch size")
    p.add_argument("--split-calls", type=int, default=300,
                   help="batch-1 calls per method whose slow ones are split into running / waiting / blocked")
    p.add_argument("--output", type=Path, default=None, help="write every figure as JSON")
    args = p.parse_args()
    timing.set_threads(args.threads)
    in_dim = speed.REFERENCE_DIMS[0]
    reference = speed.reference_mlp(0)
    methods: dict[str, Callable] = {"fp32-eager": reference}
    for fmt in (f.strip() for f in args.formats.split(",") if f.strip()):
        methods[f"qwave-{fmt}"] = deployed(speed.deployed_reference(0, fmt))
    conditions = {"quiet": nullcontext, "busy": busy_core, "ort": lambda: ort_in_process(reference, in_dim)}
    runs: dict[str, list[dict]] = {c: [] for c in CONDITIONS}
    splits: dict[str, list[dict]] = {c: [] for c in CONDITIONS[1:]}
    for r in range(args.rounds):
        for condition in CONDITIONS:
            load = os.getloadavg()[0]
            with conditions[condition]():
                runs[condition].append(measure(methods, in_dim, args.seconds))
                if condition != "quiet":
                    quiet = {name: runs["quiet"][-1][name][1]["p50_ms"] for name in methods}
                    splits[condition].append(split_slow_calls(methods, in_dim, args.split_calls, quiet))
            print(f"round {r + 1} {condition}: done (load average at start {load:.2f})", file=sys.stderr, flush=True)

    def median(condition: str, name: str, batch: int, key: str) -> float:
        return float(np.median([run[name][batch][key] for run in runs[condition]]))

    rows = []
    for name in methods:
        quiet_p50, quiet_tput = median("quiet", name, 1, "p50_ms"), median("quiet", name, 256, "samples_per_s")
        row = {"method": name, "quiet_p50_ms": quiet_p50, "quiet_p99_ms": median("quiet", name, 1, "p99_ms")}
        for condition in ("busy", "ort"):
            p99 = median(condition, name, 1, "p99_ms")
            row[f"{condition}_p50_ms"] = median(condition, name, 1, "p50_ms")
            row[f"{condition}_p99_ms"] = p99
            row[f"{condition}_p99_vs_quiet_p50"] = p99 / quiet_p50
            row[f"{condition}_b256_vs_quiet"] = median(condition, name, 256, "samples_per_s") / quiet_tput
        rows.append(row)
    print(f"threads={args.threads}, rounds={args.rounds}; batch 1: p50 / p99 ms; batch 256: throughput x quiet")
    print("| method | quiet b1 p50 / p99 | busy core b1 p50 / p99 (p99 x quiet p50) | ORT in process b1 p50 / p99 "
          "(p99 x quiet p50) | b256 busy core | b256 ORT in process |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['quiet_p50_ms']:.3f} / {r['quiet_p99_ms']:.3f} | {r['busy_p50_ms']:.3f} / "
              f"{r['busy_p99_ms']:.3f} ({r['busy_p99_vs_quiet_p50']:.1f}x) | {r['ort_p50_ms']:.3f} / "
              f"{r['ort_p99_ms']:.3f} ({r['ort_p99_vs_quiet_p50']:.1f}x) | {r['busy_b256_vs_quiet']:.2f}x | "
              f"{r['ort_b256_vs_quiet']:.2f}x |")
    print("\nbatch-1 calls above 3x the quiet p50, summed over the rounds: their wall time running / waiting for a "
          "core / blocked (GIL, locks)")
    print("| method | condition | slow calls | running | waiting for a core | blocked |")
    print("|---|---|---|---|---|---|")
    for condition, per_round in splits.items():
        for name in methods:
            parts = [run[name] for run in per_round if name in run]
            count = sum(p["slow_calls"] for p in parts)
            if not count:
                print(f"| {name} | {condition} | 0 of {args.split_calls * len(parts)} | | | |")
                continue
            weights = [p["slow_calls"] / count for p in parts]
            share = {k: sum(w * p[k] for w, p in zip(weights, parts, strict=True))
                     for k in ("running", "waiting_for_core", "blocked")}
            print(f"| {name} | {condition} | {count} of {args.split_calls * len(parts)} | {share['running']:.0%} | "
                  f"{share['waiting_for_core']:.0%} | {share['blocked']:.0%} |")
    if args.output is not None:
        args.output.write_text(json.dumps({"threads": args.threads, "rows": rows, "runs": runs, "splits": splits},
                                          indent=1))


if __name__ == "__main__":
    main()
