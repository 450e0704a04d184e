"""Cold and warm start of qwave commands: each command runs twice with the same, initially empty, numba cache.

Usage: ``python scripts/cold_start.py "qwave doctor" "qwave predict ART --data ROWS.npy --out /tmp/p.csv"``. Prints
the wall seconds of the cold run (an empty ``NUMBA_CACHE_DIR``: every kernel the command touches compiles) and of
the warm one (the same folder again), with the load average at each start.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time


def timed(command: str, cache: str) -> float:
    start = time.perf_counter()
    subprocess.run(shlex.split(command), env={**os.environ, "NUMBA_CACHE_DIR": cache}, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    for command in sys.argv[1:]:
        with tempfile.TemporaryDirectory(prefix="qwave-cold-") as cache:
            runs = []
            for label in ("cold", "warm"):
                load = os.getloadavg()[0]
                runs.append(f"{label} {timed(command, cache):.2f} s (load {load:.2f})")
        print(f"{command}: " + ", ".join(runs))


if __name__ == "__main__":
    main()
