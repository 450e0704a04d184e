"""PackedLinear: inference from the packed tensors a format stores, through a fast kernel when one exists.

The packed tensors and the bias are buffers, so ``state_dict()`` is exactly what an artifact stores. They are
checked against the format's layout (``QuantFormat.check_packed``) when the layer is built and whenever
``load_state_dict`` brings new ones, before any kernel reads them: kernels do no bounds checks.

One copy in memory: a fast kernel's layout (``Kernel.prepare``) is prepared at the first forward and cached on the
layer, never saved, and rebuilt when the device, the kernel or the buffers change (``load_state_dict`` bumps the
buffers' version counters). When that kernel can invert its layout (``Kernel.unprepare``, a permutation of the
stored bits), the layer then *releases* its packed buffers: the kernel state is the only copy, and ``packed``,
``state_dict()``, pickling, ``deepcopy`` and ``.to()`` re-derive the packed tensors from it, bit for bit. Release
waits for the first forward rather than construction because only then is the device and kernel known (an
artifact is often loaded, re-tied and moved before it runs, and a CPU layer under a switched-off kernel registry
never prepares anything). Formats without an invertible kernel (the reference recipe, the weight-only float copy,
CUDA) keep their buffers.
"""

from __future__ import annotations

import contextlib
import threading
import weakref

import numpy as np
import torch
from torch import nn

from qwave import kernels
from qwave.errors import FormatError
from qwave.formats import QuantFormat
from qwave.formats.base import non_finite
from qwave.kernels.work import torch_threads

_EMPTY = np.empty(0, np.float32)


def check_bias(bias: torch.Tensor, out_features: int) -> None:
    """A layer bias is a finite float vector of ``out_features`` values (a kernel adds it without bounds checks)."""
    if not bias.is_floating_point() or tuple(bias.shape) != (out_features,):
        raise FormatError(f"bias must be a float vector of {out_features} values; got {bias.dtype} {list(bias.shape)}")
    if non_finite(bias) is not None:
        raise FormatError("bias has a non-finite value (NaN or inf)")


class PackedLinear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` held only in its packed form ``packed`` (format ``fmt``, ``shape=[out, in]``)."""

    def __init__(
        self, fmt: QuantFormat, packed: dict[str, torch.Tensor], shape: tuple[int, int], bias: torch.Tensor | None
    ) -> None:
        super().__init__()
        self.fmt = fmt
        if "bias" in packed:
            raise FormatError(f"format {fmt.name!r} packs a tensor named 'bias', which clashes with the layer bias")
        fmt.check_packed(packed, shape)
        self.out_features, self.in_features = shape
        if bias is not None:
            check_bias(bias, self.out_features)
        self.packed_names = tuple(packed)
        for name, tensor in packed.items():
            self.register_buffer(name, tensor)
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        self.last_kernel: str | None = None
        self._kernel_state: tuple[tuple, object, object] | None = None  # (key, kernel, state)
        self._released: torch.device | None = None  # where the released buffers lived; None: buffers held
        self._derived: tuple = ()  # (weak reference, version) of the last re-derived packed tensors
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        """Copies and pickles carry the packed buffers (re-derived when released), never the kernel's state."""
        state = self.__dict__.copy()
        if self._released is not None:
            state["_buffers"] = {**self.packed, **{k: v for k, v in self._buffers.items() if v is not None}}
        state.update(_kernel_state=None, _released=None, _derived=(), _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        """A released packed buffer reads as its re-derived tensor (a copy: change weights with load_state_dict)."""
        value = super().__getattr__(name)
        if value is None and self.__dict__.get("_released") is not None and name in self.packed_names:
            return self.packed[name]
        return value

    def __setattr__(self, name: str, value) -> None:
        if self.__dict__.get("_released") is not None and name in self.packed_names:
            self._restore()
        super().__setattr__(name, value)

    @property
    def shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    @property
    def packed(self) -> dict[str, torch.Tensor]:
        """The stored tensors of the weight, by the names the format gave them (re-derived when released)."""
        if self._released is None:
            return {name: self._buffers[name] for name in self.packed_names}
        alive = [ref() for ref, _ in self._derived]
        if alive and all(t is not None and t._version == v for t, (_, v) in zip(alive, self._derived, strict=True)):
            return dict(zip(self.packed_names, alive, strict=True))  # the last copies, while alive and unchanged
        _, kernel, state = self._kernel_state
        with torch.inference_mode(False):  # plain tensors, even when asked inside inference mode
            derived = kernel.unprepare(self.fmt, state)
            packed = {name: derived[name].to(self._released) for name in self.packed_names}
        self._derived = tuple((weakref.ref(t), t._version) for t in packed.values())
        return packed

    @property
    def released(self) -> bool:
        """True when the kernel state is the only copy of the weights (the packed buffers are re-derived)."""
        return self._released is not None

    @property
    def stored_bytes(self) -> int:
        """Bytes the weight and bias take as stored (the format's layout), whether or not the buffers are held."""
        specs = self.fmt.layout(self.shape).values()
        weight = sum(s.dtype.itemsize * int(np.prod(s.shape)) for s in specs)
        return int(weight + (0 if self.bias is None else self.bias.nbytes))

    def _state_key(self, device: torch.device) -> tuple:
        return (device,) + tuple((t.device, t.data_ptr(), t._version) for t in self.packed.values())

    def _restore(self) -> None:
        """Hold the packed buffers again (re-derived from the kernel state), and drop the state."""
        packed = self.packed
        self._released, self._derived, self._kernel_state = None, (), None
        rest = [(k, v) for k, v in self._buffers.items() if k not in packed]
        self._buffers.clear()  # in place and in the registration order: packed tensors first
        self._buffers.update({**packed, **dict(rest)})

    def _kernel(self, device: torch.device) -> tuple[object, object] | None:
        """The fast kernel and its prepared state for ``device``, prepared once and cached; None if none applies.
        Once an invertible kernel has prepared its state, the packed buffers are released (one copy)."""
        device = torch.device(device)
        kernel = kernels.kernel_for(self.fmt, device)
        cached = self._kernel_state
        if self._released is not None and cached[1] is kernel and cached[0][0] == device:
            return kernel, cached[2]
        with self._lock:
            if self._released is not None and (self._kernel_state[1] is not kernel
                                               or self._kernel_state[0][0] != device):
                self._restore()  # another kernel or device: it prepares from the stored tensors
            if self._released is not None:
                return kernel, self._kernel_state[2]
            if kernel is None:
                return None
            key = self._state_key(device)
            cached = self._kernel_state
            if cached is None or cached[0] != key or cached[1] is not kernel:
                self._kernel_state = (key, kernel, kernel.prepare(self.fmt, self.packed, self.shape))
            if kernel.unprepare is not None:
                self._release()
            return kernel, self._kernel_state[2]

    def prepare_kernel(self, device: torch.device | str = "cpu") -> str | None:
        """Prepare the kernel state for ``device`` as the first forward there does (releasing the packed buffers
        when the kernel inverts its layout); the kernel's name, or None when only the reference recipe applies."""
        found = self._kernel(torch.device(device))
        return None if found is None else found[0].name

    def _release(self) -> None:
        """Drop the packed buffers: the kernel state (which ``unprepare`` inverts) is now the only copy."""
        self._released = self._buffers[self.packed_names[0]].device
        self._kernel_state = ((self._kernel_state[0][0], "released"), *self._kernel_state[1:])
        for name in self.packed_names:
            self._buffers[name] = None

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        if self._released is not None:  # the packed entries first, in their order, as when the buffers are held
            for name, tensor in self.packed.items():
                destination[prefix + name] = tensor
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """Check incoming packed tensors and bias like the constructor does, then load them into held buffers."""
        if self._released is not None:
            self._restore()
        incoming = {name: state_dict[prefix + name] for name in self.packed_names if prefix + name in state_dict}
        fresh = any(tensor is not self._buffers[name] for name, tensor in incoming.items())
        if fresh and all(isinstance(tensor, torch.Tensor) for tensor in incoming.values()):
            self.fmt.check_packed({**self.packed, **incoming}, self.shape)
        bias = state_dict.get(prefix + "bias")
        if isinstance(bias, torch.Tensor) and bias is not self.bias:
            check_bias(bias, self.out_features)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _apply(self, fn, recurse: bool = True):
        """``.to()``, ``.cpu()``, ``.float()``... : a released layer whose packed tensors ``fn`` would change holds
        them again first (``fn`` of an empty tensor of each stored dtype tells, without re-deriving anything)."""
        if self._released is not None:
            specs = self.fmt.layout(self.shape).values()
            probes = [torch.empty(0, dtype=s.dtype, device=self._released) for s in specs]
            if any(fn(p) is not p for p in probes):
                self._restore()
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise FormatError(f"PackedLinear expects {self.in_features} input features; got {x.shape[-1]}")
        rows = x.reshape(-1, self.in_features).float()
        found = self._kernel(rows.device)
        if found is None:
            macs = rows.shape[0] * self.in_features * self.out_features
            with torch_threads(macs) if rows.is_cpu else contextlib.nullcontext():
                y = self.fmt.matmul(rows, self.packed, self.shape)
                if self.bias is not None:
                    y = y + self.bias
            self.last_kernel = kernels.FALLBACK
        else:
            kernel, state = found
            y = self._run_kernel(kernel, state, rows)
            self.last_kernel = kernel.name
        return y.float().reshape(*x.shape[:-1], self.out_features)

    def _run_kernel(self, kernel: kernels.Kernel, state, rows: torch.Tensor) -> torch.Tensor:
        """The kernel's matmul plus bias; on CPU the bias is added inside the kernel (one pass less)."""
        if kernel.run_np is not None and rows.device.type == "cpu":
            bias = _EMPTY if self.bias is None else self.bias.detach().float().numpy()
            return torch.from_numpy(kernel.run_np(state, rows.detach().contiguous().numpy(), bias,
                                                    kernels.NO_ACTIVATION))
        y = kernel.run(state, rows)  # a CPU kernel chooses its threads by the call's work (``qwave.kernels.work``)
        return y if self.bias is None else y + self.bias

    @property
    def kernel_cached_bytes(self) -> int:
        """Memory held by the fast kernel's prepared weights (0 when no kernel state is cached)."""
        if self._kernel_state is None:
            return 0
        _, kernel, state = self._kernel_state
        return int(kernel.cached_bytes(state))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, " + (
            f"fmt={self.fmt!r}"
        )
