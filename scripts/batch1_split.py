"""Where the batch-1 time of a packed MLP goes: the per-layer path, the fused path, each layer's ``run_np`` call
alone (the compiled kernels plus their dispatch) and the normaliser with the torch <-> NumPy hops.

Usage: ``python scripts/batch1_split.py [--threads 1] [--formats int8,binary,qesc,int4,ternary,fp16]``. Reference
MLP 1536 -> 640 -> 320 -> 50, each format with the activation it deploys (``activation_for``); wall clock, median
of ``--calls`` calls after 200 warm-up calls.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from qwave.eval import speed, timing
from qwave.nn.fused import compile_model


def median_us(fn, calls: int) -> float:
    for _ in range(200):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--formats", default="int8,binary,qesc,int4,ternary,fp16")
    p.add_argument("--calls", type=int, default=3000)
    args = p.parse_args()
    timing.set_threads(args.threads)
    x = torch.randn(1, speed.REFERENCE_DIMS[0])
    for fmt in args.formats.split(","):
        model = speed.deployed_reference(0, fmt)
        fused = compile_model(model)
        with torch.inference_mode():
            per_layer = median_us(lambda m=model: m(x), args.calls)
            whole = median_us(lambda f=fused: f(x), args.calls)
            inputs = [fused.norm(x).numpy()]
            for layer in fused.layers:
                inputs.append(layer(inputs[-1]))
            layers = [median_us(lambda f=f, h=h: f(h), args.calls) for f, h in zip(fused.layers, inputs, strict=False)]
            hops = median_us(lambda n=fused.norm: torch.from_numpy(n(x.reshape(1, -1).float()).contiguous().numpy()),
                             args.calls)
        print(f"{fmt:8s} act {speed.hidden_activation(model):8s} per-layer {per_layer:7.1f} us | fused {whole:7.1f} us"
              f" | layer run_np calls {' + '.join(f'{t:.1f}' for t in layers)} = {sum(layers):.1f} us"
              f" | norm + hops {hops:.1f} us")


if __name__ == "__main__":
    main()
