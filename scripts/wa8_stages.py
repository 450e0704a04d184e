"""Where a W·A8 call's time goes, layer by layer: activation quantization, the integer GEMM with its fused epilogue,
and the FP32 ``torch.nn.functional.linear`` of the same layer for comparison (timers per stage, for machines
without ``perf``).

Usage: ``python scripts/wa8_stages.py [--formats int8,int4,ternary] [--batch 256] [--calls 100]``. Reference MLP
1536 -> 640 -> 320 -> 50 (random weights, seed 0), the threads numba and torch are given (``NUMBA_NUM_THREADS``,
``torch.set_num_threads`` from ``--threads``); run it under ``qwave.kernels.avx2_environment()`` to time the AVX2
variants. Median of ``--calls`` calls after 10 warm-up calls, wall clock or (``--clock cpu``, one thread only) the
calling thread's CPU time, which a loaded machine's preemptions do not inflate.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from qwave.kernels import wa8
from qwave.kernels.act8 import quantize_rows
from qwave.nn import MLPClassifier, pack_model, quantize_model
from qwave.nn.fused import compile_model

CLOCK = {"wall": time.perf_counter, "cpu": time.thread_time}
clock = CLOCK["wall"]


def median_us(fn, calls: int) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(calls):
        start = clock()
        fn()
        times.append(clock() - start)
    return float(np.median(times)) * 1e6


def layer_stages(linear: torch.nn.Linear, layer, h: np.ndarray, calls: int) -> tuple[float, float, float]:
    """Median microseconds of the FP32 layer, the activation quantization and the whole fused W·A8 layer."""
    w, xt = layer.state, torch.from_numpy(h)
    parallel = h.shape[0] * w.out_features * w.in_features >= wa8.PARALLEL_MACS
    fp32 = median_us(lambda: torch.nn.functional.linear(xt, linear.weight, linear.bias), calls)
    quant = median_us(lambda: quantize_rows(h, w.group_size, w.scale.shape[0], w.padded_group, parallel), calls)
    return fp32, quant, median_us(lambda: layer(h), calls)


def stages(fmt: str, batch: int, calls: int) -> None:
    torch.manual_seed(0)
    model = MLPClassifier(1536, 50, hidden=(640, 320), dropout=0.0, activation="relu").eval()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    fused = compile_model(pack_model(quantize_model(model, fmt)))
    h = np.random.default_rng(0).standard_normal((batch, 1536)).astype(np.float32)
    for linear, layer in zip(linears, fused.layers, strict=True):
        fp32, quant, whole = layer_stages(linear, layer, h, calls)
        w = layer.state
        print(f"{fmt},{batch},{w.in_features}x{w.out_features},{w.isa},{fp32:.0f},{quant:.0f},{whole - quant:.0f},"
              f"{whole:.0f},{fp32 / whole:.2f}", flush=True)
        h = layer(h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default="int8,int4,ternary")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCK), default="wall")
    args = parser.parse_args()
    global clock
    clock = CLOCK[args.clock]
    torch.set_num_threads(args.threads)
    print("format,batch,layer,variant,fp32_us,quantize_us,gemm_epilogue_us,layer_us,fp32_over_layer")
    for fmt in args.formats.split(","):
        stages(fmt, args.batch, args.calls)


if __name__ == "__main__":
    main()
