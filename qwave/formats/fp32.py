"""Float storage formats: the weight itself is stored, in float32 here (``fp16`` / ``bf16`` in ``half.py``)."""

from __future__ import annotations

import torch

from qwave.formats.base import FormatBase, PackedSpec, QuantizedTensor, as_rows, check_finite, register


class FloatFormat(FormatBase):
    """Store ``w`` cast to ``dtype`` (saturating at the dtype's largest finite value); float activations.

    ``matmul`` computes from the stored values (upcast to float32 at call time), so a 16-bit format really
    runs on 16-bit weights.
    """

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name, self.dtype = name, dtype
        self.bits = float(torch.finfo(dtype).bits)

    def _quantize(self, w: torch.Tensor) -> QuantizedTensor:
        if self.dtype == torch.float32:  # finite float32 needs no saturation; keep the storage (tied weights)
            return QuantizedTensor(codes=w, scale=torch.ones(0), shape=tuple(w.shape))
        limit = torch.finfo(self.dtype).max
        codes = w.clamp(-limit, limit).to(self.dtype)
        return QuantizedTensor(codes=codes, scale=torch.ones(0), shape=tuple(w.shape))

    def layout(self, shape: tuple[int, int]) -> dict[str, PackedSpec]:
        return {"weight": PackedSpec(self.dtype, tuple(shape))}

    def _check_values(self, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> None:
        check_finite(packed["weight"], f"{self.name} stored weight")

    def pack(self, q: QuantizedTensor) -> dict[str, torch.Tensor]:
        return {"weight": q.codes}

    def unpack(self, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> QuantizedTensor:
        return QuantizedTensor(codes=packed["weight"], scale=torch.ones(0), shape=tuple(shape))

    def dequantize(self, q: QuantizedTensor) -> torch.Tensor:
        return q.codes.float()

    def matmul(self, x: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
        y = as_rows(x, shape[1]) @ packed["weight"].float().T
        return y.reshape(*x.shape[:-1], shape[0])


@register("fp32", "esc", "32")
def fp32() -> FloatFormat:
    """Full-precision baseline: float32 weights and activations."""
    return FloatFormat("fp32", torch.float32)
