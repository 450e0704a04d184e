"""Cold and warm start of qwave commands: each command runs twice with the same, initially empty, numba cache.

Usage: ``python scripts/cold_start.py [--avx2] "qwave doctor" "qwave predict ART --data ROWS.npy --out p.csv"``.
Prints the wall seconds of the cold run (an empty ``NUMBA_CACHE_DIR``: every kernel the command touches compiles) and of
the warm one (the same folder again), the CPU seconds the command and its child processes used (less sensitive to
other jobs on a shared machine than the wall time), and the load average at each start. ``--avx2`` runs every
command under ``qwave.kernels.avx2_environment()`` (the AVX2 variants, as on an AVX2-only CPU).
"""

from __future__ import annotations

import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time


def timed(command: str, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, the command and its children) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(shlex.split(command), env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    commands = [c for c in sys.argv[1:] if c != "--avx2"]
    forced = {}
    if "--avx2" in sys.argv[1:]:
        from qwave import kernels

        forced = kernels.avx2_environment()
    for command in commands:
        with tempfile.TemporaryDirectory(prefix="qwave-cold-") as cache:
            env = {**os.environ, **forced, "NUMBA_CACHE_DIR": cache}
            runs = []
            for label in ("cold", "warm"):
                load = os.getloadavg()[0]
                wall, cpu = timed(command, env)
                runs.append(f"{label} {wall:.1f} s wall, {cpu:.1f} s CPU (load {load:.2f})")
        print(f"{command}{' [avx2]' if forced else ''}: " + ", ".join(runs), flush=True)


if __name__ == "__main__":
    main()
