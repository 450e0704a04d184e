"""Where a cold start's compile time goes: every numba compilation while ``qwave doctor`` self-checks each format.

Usage: ``NUMBA_CACHE_DIR=$(mktemp -d) python scripts/compile_profile.py [--avx2] [--top 25]``. Run it with an empty
cache folder (a warm cache only loads). ``--avx2`` re-runs itself in a child process under
``qwave.kernels.avx2_environment()`` (the AVX2 variants, as on an AVX2-only CPU). Prints the wall seconds of each
format's self-check in ``qwave doctor``'s order, then every compiled (function, signature) with its own time
(``self s``: its compilation minus the nested compilations of the functions it calls) and its time with them
(``total s``), largest first. Timings come from numba's ``numba:compile`` events.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import defaultdict


def _label(data: dict) -> str:
    dispatcher = data["dispatcher"]
    name = f"{dispatcher.py_func.__module__.rsplit('.', 1)[-1]}.{dispatcher.py_func.__qualname__}"
    return f"{name}{tuple(str(a) for a in data['args'])}".replace("'", "")


def compile_times(events: list) -> dict[str, list[float]]:
    """(self seconds, total seconds) per compiled function and signature from recorded ``numba:compile`` events
    (start/end pairs, nested when one compilation triggers another)."""
    stack: list[tuple[str, float, list[float]]] = []
    times: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for stamp, event in events:
        if event.is_start:
            stack.append((_label(event.data), stamp, [0.0]))
            continue
        label, start, nested = stack.pop()
        spent = stamp - start
        times[label][0] += spent - nested[0]
        times[label][1] += spent
        if stack:
            stack[-1][2][0] += spent
    return dict(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--avx2", action="store_true", help="profile the AVX2 variants (a child process)")
    p.add_argument("--top", type=int, default=25, help="compiled functions to list")
    args = p.parse_args()
    if args.avx2:
        from qwave import kernels

        child = [sys.executable, __file__, "--top", str(args.top)]
        sys.exit(subprocess.call(child, env={**os.environ, **kernels.avx2_environment()}))
    from numba.core import event

    from qwave import kernels
    from qwave.commands.doctor import self_check
    from qwave.formats import get_format, registered_formats

    start = time.perf_counter()
    with event.install_recorder("numba:compile") as recorder:
        kernels.kernel_for(get_format("int8"))  # imports (and so registers) every built-in kernel module
        imported = time.perf_counter() - start
        walls = []
        for name in registered_formats():
            t0 = time.perf_counter()
            check = self_check(name)
            walls.append((name, check["kernel"], time.perf_counter() - t0))
    total = time.perf_counter() - start
    print(f"cache: {kernels.status()['cache_dir']}  target: {os.environ.get('NUMBA_CPU_NAME', 'host')}")
    print(f"import + registration: {imported:.1f} s")
    for name, kernel, wall in walls:
        print(f"  self-check {name:<8} {kernel:<28} {wall:6.1f} s")
    print(f"total {total:.1f} s")
    times = compile_times(recorder.buffer)
    own = sum(t[0] for t in times.values())
    print(f"\n{len(times)} compiled (function, signature) entries, {own:.1f} s compiling")
    print(f"{'self s':>7} {'total s':>8}  function(signature)")
    for label, (own, whole) in sorted(times.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"{own:7.2f} {whole:8.2f}  {label[:160]}")


if __name__ == "__main__":
    main()
