"""Latency tails of the deployed path on a loaded machine: p50 and p99 wall clock per call at batch 1 and 16.

Usage: ``python scripts/batch1_tail.py [--formats int8,ternary,binary] [--threads 2] [--calls 3000]``. Reference MLP
1536 -> 640 -> 320 -> 50 (random weights, seed 0), each format with the activation it trains with (hardtanh for
binary / qesc), ``qwave.nn.fused.deployed`` over ``pack_model(quantize_model(...))``, FP32 eager beside them;
``NUMBA_NUM_THREADS`` and torch's threads set from ``--threads``; 100 warm-up calls, then ``--calls`` timed calls.
Prints CSV ``batch,method,p50_us,p99_us``. Run it while another job keeps a core busy to see whether a call waits
for that core (a parallel region does; a call kept on the calling thread does not).
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default="int8,ternary,binary")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import numpy as np
    import torch

    from qwave.nn import MLPClassifier, pack_model, quantize_model
    from qwave.nn.fused import deployed

    torch.set_num_threads(args.threads)

    def reference(act: str) -> MLPClassifier:
        torch.manual_seed(0)
        return MLPClassifier(1536, 50, hidden=(640, 320), dropout=0.0, activation=act).eval()

    methods = {"fp32-eager": reference("relu")}
    for fmt in args.formats.split(","):
        packed = pack_model(quantize_model(reference("hardtanh" if fmt in ("binary", "qesc") else "relu"), fmt))
        with torch.inference_mode():
            packed(torch.randn(2, 1536))
        methods[fmt] = deployed(packed) or packed
    print("batch,method,p50_us,p99_us")
    with torch.inference_mode():
        for batch in (1, 16):
            x = torch.randn(batch, 1536, generator=torch.Generator().manual_seed(batch))
            for name, fn in methods.items():
                for _ in range(100):
                    fn(x)
                times = []
                for _ in range(args.calls):
                    start = time.perf_counter()
                    fn(x)
                    times.append(time.perf_counter() - start)
                us = np.array(times) * 1e6
                print(f"{batch},{name},{np.median(us):.1f},{np.percentile(us, 99):.1f}", flush=True)


if __name__ == "__main__":
    main()
