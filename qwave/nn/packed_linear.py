"""PackedLinear: inference from the packed tensors a format stores, through a fast kernel when one exists.

The packed tensors and the bias are buffers, so ``state_dict()`` is exactly what an artifact stores. They are
checked against the format's layout (``QuantFormat.check_packed``) when the layer is built, before any kernel
reads them: kernels do no bounds checks. A fast
kernel's own copy of the weights (``Kernel.prepare``) is cached on the layer, never saved, and rebuilt when the
device or the buffers change (``load_state_dict`` bumps the buffers' version counters).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from qwave import kernels
from qwave.errors import FormatError
from qwave.formats import QuantFormat
from qwave.formats.base import non_finite

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

    def __getstate__(self) -> dict:
        """Copies and pickles carry the packed buffers, never the kernel's prepared state."""
        state = self.__dict__.copy()
        state["_kernel_state"] = None
        return state

    @property
    def shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    @property
    def packed(self) -> dict[str, torch.Tensor]:
        """The stored tensors of the weight, by the names the format gave them."""
        return {name: getattr(self, name) for name in self.packed_names}

    def _state_key(self, device: torch.device) -> tuple:
        return (device,) + tuple((t.device, t.data_ptr(), t._version) for t in self.packed.values())

    def _kernel(self, device: torch.device) -> tuple[object, object] | None:
        """The fast kernel and its prepared state for ``device``, prepared once and cached; None if none applies."""
        kernel = kernels.kernel_for(self.fmt, device)
        if kernel is None:
            return None
        key = self._state_key(device)
        cached = self._kernel_state
        if cached is None or cached[0] != key or cached[1] is not kernel:
            self._kernel_state = (key, kernel, kernel.prepare(self.fmt, self.packed, self.shape))
        return self._kernel_state[1], self._kernel_state[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise FormatError(f"PackedLinear expects {self.in_features} input features; got {x.shape[-1]}")
        rows = x.reshape(-1, self.in_features).float()
        found = self._kernel(rows.device)
        if found is None:
            y = self.fmt.matmul(rows, self.packed, self.shape)
            self.last_kernel = kernels.FALLBACK
            if self.bias is not None:
                y = y + self.bias
        else:
            kernel, state = found
            y = self._run_kernel(kernel, state, rows)
            self.last_kernel = kernel.name
        return y.float().reshape(*x.shape[:-1], self.out_features)

    def _run_kernel(self, kernel: kernels.Kernel, state, rows: torch.Tensor) -> torch.Tensor:
        """The kernel's matmul plus bias; on CPU the bias is added inside the kernel (one pass less)."""
        if kernel.run_np is not None and rows.device.type == "cpu":
            bias = _EMPTY if self.bias is None else self.bias.detach().float().numpy()
            return torch.from_numpy(kernel.run_np(state, rows.detach().contiguous().numpy(), bias, False))
        y = kernel.run(state, rows)
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
