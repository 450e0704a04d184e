"""How the parallel kernels share a call's work between threads: chosen by the work, handed out dynamically.

A call whose work is small (batch 1, small layers: below a kernel's threshold, e.g. ``wa8.PARALLEL_MACS``) runs on
the calling thread: waking a second thread costs more than it saves, and on a machine where the other core is busy
it costs a whole scheduler slice. A larger call is cut into work items (row chunks x column blocks) that the
threads of one parallel region take one at a time from a shared counter (``take``, an atomic fetch-and-add), not in
equal shares fixed up front: a thread on a busy core takes fewer items, so a busy core slows the call in proportion
to the time it lost, instead of the whole call waiting for that core's fixed half. (numba's ``prange`` splits its
range statically, also with ``set_parallel_chunksize``: measured, 16 items of which one is 100x longer were split
8 / 8 between 2 threads.)

A call also stays on the calling thread when the machine has no core to spare (``threads_by_load``): measured on 2
cores beside another busy thread pool (a default ONNX Runtime session in the same process, or other jobs), an OpenMP
region over 2 threads took 100-200x its quiet time, because its threads wait at the region's barrier, spinning, for
a thread that is not running; one thread slows only by the share of the core it gets.

Usage inside an ``njit(parallel=True)`` driver::

    counter = new_counter()
    for _ in prange(min(n_items, MAX_THREADS)):
        item = take(counter)
        while item < n_items:
            ...  # work item ``item``
            item = take(counter)

torch's own intra-op threads inside a qwave call (a normaliser, a float32 layer, a reference recipe) follow the same
rule: ``torch_threads(work)`` runs a small call on the calling thread alone and restores the caller's setting after.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from qwave.kernels import FAST_KERNELS

SERIAL_WORK = 1 << 21  # multiply-adds (or elements) below which a call stays on one thread: the kernels' own
# threshold (``wa8.PARALLEL_MACS``, half's, popcount's in words), torch's calls inside qwave, ``threads_by_load``
MAX_THREADS = 256  # prange iterations of a work-sharing loop: at least the thread count (``prange`` gives each
# thread a contiguous share of them; a thread's first iteration takes items until none is left, the others find none)

LOADAVG = "/proc/loadavg"  # its 4th field: threads running or runnable now / threads in all (Linux)
_OPEN: dict[str, int] = {}  # LOADAVG's descriptor, kept open: pread costs 2 us, open + read + close 14 us


def others_running(loadavg: str, own_workers: int) -> int:
    """Threads running on the machine besides this call, from ``/proc/loadavg``'s text: its running count less the
    calling thread and this process's ``own_workers`` (the pools' worker threads spin a while after each parallel
    region, so they count as running although they wait for work)."""
    running = int(loadavg.split()[3].split("/")[0])
    return max(0, running - 1 - own_workers)


def spare_cores(loadavg: str, cpus: int, own_workers: int) -> int:
    """Cores this call could use beside the calling thread's own: the usable ``cpus`` less the calling thread's
    core and one per other running thread."""
    return max(0, cpus - 1 - others_running(loadavg, own_workers))


def _loadavg() -> str:
    """``LOADAVG``'s text now, or "" where it cannot be read."""
    try:
        if LOADAVG not in _OPEN:
            for fd in _OPEN.values():
                os.close(fd)
            _OPEN.clear()
            _OPEN[LOADAVG] = os.open(LOADAVG, os.O_RDONLY)
        return os.pread(_OPEN[LOADAVG], 256, 0).decode("ascii", "replace")
    except OSError:
        return ""


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def threads_by_load(macs: int) -> Iterator[None]:
    """Run the enclosed kernel calls (``macs``: the multiply-adds of the largest) on as many threads as the machine
    has cores to spare (``spare_cores``, plus the calling thread's own), at most the threads set; on the calling
    thread alone when none is spare. Calls too small to split (below ``SERIAL_WORK``), and machines where
    ``/proc/loadavg`` cannot be read, change nothing."""
    if macs < SERIAL_WORK:
        yield
        return
    import numba  # present whenever a kernel runs (``FAST_KERNELS``)

    threads = numba.get_num_threads()
    if threads == 1:
        yield
        return
    text = _loadavg()
    use = min(threads, 1 + spare_cores(text, _usable_cpus(), threads - 1 + torch.get_num_threads() - 1)) if text \
        else threads
    if use == threads:
        yield
        return
    numba.set_num_threads(use)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


@contextmanager
def torch_threads(work: int) -> Iterator[None]:
    """torch's intra-op threads chosen by ``work`` (multiply-adds, or elements for an element-wise step): one below
    ``SERIAL_WORK``, the caller's setting otherwise, restored on exit. With torch's OpenMP backend the setting is the
    calling thread's own, so other threads' torch calls are unaffected."""
    threads = torch.get_num_threads()
    if threads == 1 or work >= SERIAL_WORK:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


if FAST_KERNELS:
    import numpy as np
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic

    @njit(cache=True, nogil=True)
    def new_counter():
        """A work-item counter at 0. Not ``np.zeros(1)``: inside an ``njit(parallel=True)`` function that is a
        parallel loop of its own, a region that wakes every thread and waits at its barrier, for one element; in a
        serial path (batch 1) that woke the thread pool on every call (fp16 at batch 1 on 2 threads, a loaded machine:
        p50 58 us, p90 24 ms)."""
        counter = np.empty(1, np.int64)
        counter[0] = 0
        return counter

    @intrinsic
    def take(typingctx, counter):
        """``counter[0]`` before adding 1 to it, atomically (``lock xadd``): the next work item's index."""
        if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
            return None

        def codegen(context, builder, sig, args):
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            return builder.atomic_rmw("add", data, ir.Constant(ir.IntType(64), 1), "monotonic")

        return types.int64(counter), codegen
