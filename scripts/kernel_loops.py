"""Static profile of the AVX2 kernels' inner loops on a CPU you do not have: llvm-mca's Zen 3 (and Skylake) models.

Usage: ``python scripts/kernel_loops.py`` (needs ``llvm-mca`` on PATH). It re-runs itself with numba targeting an
AVX2-only Zen 3 (``qwave.kernels.avx2_environment``), compiles every AVX2 kernel on a small problem, takes each
kernel's hot loop from the generated assembly (the loop with the widest register tile),
and prints llvm-mca's cycles per iteration, the multiply-accumulates one iteration does (``vpmaddubsw``: 32 int8
products; ``vfmadd231ps``: 8 float32 products; binary: 256 bit products per ``vpxor``; qesc: 256 per two
``vpshufb`` pairs) and what that is against the FP32 FMA ceiling of the same core (2 FMAs x 8 lanes per cycle).
A static model ignores caches, the epilogue and activation packing; ``qwave speed --isa avx2`` measures those.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

FP32_MACS_PER_CYCLE = 16
FORCED = "QWAVE_KERNEL_LOOPS_FORCED"


def loops(asm: str) -> list[list[str]]:
    """Instruction lists of every backward-branch loop in ``asm``."""
    lines = asm.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\.?L\w+):", line.strip()))}
    found = []
    for i, line in enumerate(lines):
        m = re.match(r"\s*j\w+\s+(\.?L\w+)", line)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            body = [x for x in lines[labels[m.group(1)] + 1 : i + 1]
                    if x.strip() and not x.strip().startswith((".", "#")) and ":" not in x.split("#")[0]]
            found.append(body)
    return found


def cycles(body: list[str], cpu: str) -> float:
    result = subprocess.run(["llvm-mca", f"-mcpu={cpu}", "-iterations=200"], input="\n".join(body),
                            capture_output=True, text=True, check=True)
    total = int(re.search(r"Total Cycles:\s+(\d+)", result.stdout).group(1))
    return total / int(re.search(r"Iterations:\s+(\d+)", result.stdout).group(1))


def count(body: list[str], mnemonic: str, operand: str = "") -> int:
    """Instructions ``mnemonic`` in ``body`` (whose operands contain ``operand``)."""
    return sum(line.split()[0] == mnemonic and operand in line for line in body if line.split())


def report(name: str, probe, args: tuple, macs) -> None:
    """Compile ``probe(*args)`` (one register tile of a kernel), take its loop doing the most multiply-accumulates
    (``macs(body)``) and run it through both models."""
    probe(*args)
    asm = probe.inspect_asm(probe.signatures[0])
    body = max((b for b in loops(asm) if len(b) < 400), key=lambda b: (macs(b), -len(b)))
    per_iter = macs(body)
    zen3, skylake = cycles(body, "znver3"), cycles(body, "skylake")
    ratio = per_iter / FP32_MACS_PER_CYCLE
    print(f"{name:<28} {len(body):>5} {per_iter:>8} {zen3:>8.2f} {per_iter / zen3:>8.1f} {ratio / zen3:>7.2f}x "
          f"{skylake:>8.2f} {ratio / skylake:>7.2f}x")


def main() -> int:
    if os.environ.get(FORCED) != "1":
        from qwave.kernels import avx2_environment

        with tempfile.TemporaryDirectory() as cache:  # a fresh cache: numba cannot show the assembly of cached code
            env = {**os.environ, **avx2_environment(), FORCED: "1", "NUMBA_CACHE_DIR": cache}
            return subprocess.call([sys.executable, __file__], env=env)
    import numpy as np
    from numba import njit

    from qwave.kernels import half, popcount, wa8
    from qwave.kernels._simd import store

    @njit
    def keep(out, vectors):
        """Store every vector of a register tile (so the compiler keeps all of the tile's work)."""
        for j in range(len(vectors)):
            store(out, 16 * j, vectors[j])

    u8, f32, u64 = np.zeros(1 << 16, np.uint8), np.zeros(1 << 16, np.float32), np.zeros(1 << 14, np.uint64)
    i8, i32 = u8.view(np.int8), np.zeros(1 << 10, np.int32)
    i64 = i32.view(np.int64)
    print(f"{'kernel (avx2 variant)':<28} {'instr':>5} {'MACs/it':>8} {'zen3 cy':>8} {'MAC/cy':>8} {'vsFP32':>8} "
          f"{'skl cy':>8} {'vsFP32':>8}")
    maddubs = lambda b: 32 * count(b, "vpmaddubsw")  # noqa: E731
    report("int8 (codes 0..127)", njit(lambda q, w, o: keep(o, wa8._int8_4x16(q, w, 0, 1024, 0, 256))),
           (i8, i8, i32), maddubs)
    report("W4A8 (int4, int3)", njit(lambda q, w, o, c: wa8._low_4x16(q, w, 0, 1024, 0, 256, 4, c, o)),
           (i8, u8, i32, wa8.CHAIN4),
           maddubs)
    report("W2A8 (int2, ternary)", njit(lambda q, w, o, c: wa8._low_4x16(q, w, 0, 1024, 0, 256, 2, c, o)),
           (i8, u8, i32, wa8.CHAIN2),
           maddubs)
    report("fp16 / bf16 (fp32 panel)", njit(lambda x, p, o: keep(o, half._dot6x16(x, p, 0, 1024))), (f32, f32, f32),
           lambda b: 8 * count(b, "vfmadd231ps"))
    report("binary", njit(lambda x, w, o: keep(o, popcount._binary4x8(x, w, 0, 512, 16, 0))), (u64, u64, i64),
           lambda b: 128 * count(b, "vpshufb"))  # two lookups per 256 bit products
    report("qesc", njit(lambda a, b, c, d, o: keep(o, popcount._qesc2x8(a, b, c, d, 0, 512, 512, 16, 0))),
           (u64, u64, u64, u64, i64), lambda b: 64 * count(b, "vpshufb"))  # four lookups per 256 trit products
    return 0


if __name__ == "__main__":
    sys.exit(main())
