"""How the parallel kernels share a call's work between threads: chosen by the work, handed out dynamically.

A call whose work is small (batch 1, small layers: below a kernel's threshold, e.g. ``wa8.PARALLEL_MACS``) runs on
the calling thread: waking a second thread costs more than it saves, and on a machine where the other core is busy
it costs a whole scheduler slice. A larger call is cut into work items (row chunks x column blocks) that the
threads of one parallel region take one at a time from a shared counter (``take``, an atomic fetch-and-add), not in
equal shares fixed up front: a thread on a busy core takes fewer items, so a busy core slows the call in proportion
to the time it lost, instead of the whole call waiting for that core's fixed half. (numba's ``prange`` splits its
range statically, also with ``set_parallel_chunksize``: measured, 16 items of which one is 100x longer were split
8 / 8 between 2 threads.)

Usage inside an ``njit(parallel=True)`` driver::

    counter = np.zeros(1, np.int64)
    for _ in prange(min(n_items, MAX_THREADS)):
        item = take(counter)
        while item < n_items:
            ...  # work item ``item``
            item = take(counter)

torch's own intra-op threads inside a qwave call (a normaliser, a float32 layer, a reference recipe) follow the same
rule: ``torch_threads(work)`` runs a small call on the calling thread alone and restores the caller's setting after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from qwave.kernels import FAST_KERNELS

SERIAL_WORK = 1 << 21  # multiply-adds (or elements) below which a torch call inside qwave stays on one thread, as
# ``wa8.PARALLEL_MACS`` does for the kernels
TORCH_GRAIN = 32768  # ``at::internal::GRAIN_SIZE``: torch runs an element-wise op on fewer elements on the calling
# thread by itself (no need to pay for ``torch_threads``, about a microsecond)
MAX_THREADS = 256  # prange iterations of a work-sharing loop: at least the thread count (``prange`` gives each
# thread a contiguous share of them; a thread's first iteration takes items until none is left, the others find none)


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
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def take(typingctx, counter):
        """``counter[0]`` before adding 1 to it, atomically (``lock xadd``): the next work item's index."""
        if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
            return None

        def codegen(context, builder, sig, args):
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            return builder.atomic_rmw("add", data, ir.Constant(ir.IntType(64), 1), "monotonic")

        return types.int64(counter), codegen
