"""The arrays of a compiled chain call, passed by address in one int64 table instead of as arrays.

numba unboxes every array argument of a call (type check, shape, strides, data pointer, a reference taken and
dropped): a chain of 4 layers x 5 arrays spent 2.4 us of a 20 us batch-1 forward on that, against 0.3 us for one
table. A table row describes one layer: ``SLOT`` int64 per array (address, then its shape padded with 1s to 3
dimensions), then the layer's integer metadata (``meta(table, layer, arrays, j)``). The compiled chain views the
arrays in place with ``carray`` (no copy, no reference count), so the object that built the table must keep the
arrays alive while it is used (``AddressTable.arrays``). The table also lifts the old limit of a fixed number of
padded layer entries: any depth runs in one call with one compiled signature.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qwave.kernels import FAST_KERNELS

SLOT = 4  # int64 per array: address, then the shape padded with 1s to 3 dimensions


@dataclass(frozen=True)
class AddressTable:
    """``table`` int64 [layers, arrays * SLOT + meta] and the arrays it points into (held: they must outlive it)."""

    table: np.ndarray
    arrays: tuple[np.ndarray, ...]


def address_table(layers: Sequence[Sequence[np.ndarray]], meta: Sequence[Sequence[int]]) -> AddressTable:
    """One table row per layer: its arrays (the same count, dtypes and dimensions in every row; C-contiguous),
    then its integers ``meta``. A non-contiguous array is a bug in the caller (a copy here would double the weights
    in memory), so it raises."""
    rows, held = [], []
    for arrays, ints in zip(layers, meta, strict=True):
        row: list[int] = []
        for a in arrays:
            if not 1 <= a.ndim <= SLOT - 1 or not a.flags.c_contiguous:
                raise ValueError(f"address_table takes C-contiguous arrays of 1 to {SLOT - 1} dimensions, not shape "
                                 f"{a.shape} strides {a.strides}")
            row += [a.ctypes.data, *a.shape, *(1,) * (SLOT - 1 - a.ndim)]
            held.append(a)
        rows.append(row + [int(v) for v in ints])
    return AddressTable(np.array(rows, dtype=np.int64), tuple(held))


def chained(runs: dict[str, Callable], layers: Sequence[tuple[Any, np.ndarray, int]],
            arrays: Callable[[Any, np.ndarray], Sequence[np.ndarray]], meta: Callable[[Any, int], Sequence[int]]
            ) -> Callable[[np.ndarray], np.ndarray] | None:
    """A kernel family's chain call: ``x float32 [batch, in] -> float32 [batch, out]`` through the ``(state, bias,
    act)`` layers, by ``runs[state.isa](x, table)``, with each row's arrays ``arrays(state, bias)`` and integers
    ``meta(state, act)``; ``None`` when the layers' variants differ."""
    if len({state.isa for state, _, _ in layers}) != 1:
        return None
    table = address_table([arrays(state, np.ascontiguousarray(bias, np.float32)) for state, bias, _ in layers],
                          [meta(state, act) for state, _, act in layers])
    run = runs[layers[0][0].isa]
    return lambda x: run(np.ascontiguousarray(x, np.float32), table.table)


if FAST_KERNELS:
    from llvmlite import ir
    from numba import carray, njit, types
    from numba.extending import intrinsic

    @intrinsic
    def _pointer(typingctx, address):
        """The int64 ``address`` as a ``void *`` (what ``carray`` views)."""
        if not isinstance(address, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

        return types.voidptr(address), codegen

    @njit(cache=True, nogil=True, inline="always")
    def meta(table, layer, arrays, j):
        """Integer ``j`` of row ``layer``'s metadata (after its ``arrays`` slots)."""
        return table[layer, SLOT * arrays + j]

    @njit(cache=True, nogil=True, inline="always")
    def view3(table, layer, slot, dtype):
        """Array ``slot`` of row ``layer``, 3-d, in place."""
        at = SLOT * slot
        return carray(_pointer(table[layer, at]), (table[layer, at + 1], table[layer, at + 2], table[layer, at + 3]),
                      dtype)

    @njit(cache=True, nogil=True, inline="always")
    def view2(table, layer, slot, dtype):
        """Array ``slot`` of row ``layer``, 2-d, in place."""
        at = SLOT * slot
        return carray(_pointer(table[layer, at]), (table[layer, at + 1], table[layer, at + 2]), dtype)

    @njit(cache=True, nogil=True, inline="always")
    def view1(table, layer, slot, dtype):
        """Array ``slot`` of row ``layer``, 1-d, in place."""
        at = SLOT * slot
        return carray(_pointer(table[layer, at]), table[layer, at + 1], dtype)
