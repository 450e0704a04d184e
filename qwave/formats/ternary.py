"""BitNet b1.58 ternary weights: ``scale = mean|w|`` (absmean) rounded to fp16 first, then
``codes = clamp(round(w / scale), -1, 1)``. Packed five trits per byte (1.6 bits per weight).

BitNet b1.58 uses one weight scale per tensor; qwave keeps one per output channel (a refinement that costs 2 bytes
per row; the integer dot products are the same). Inference (option ``activations``): ``int8`` (default, W1.58A8 as
BitNet b1.58 publishes it, with the activations per row on 128 levels with a zero point
(``base.quantize_rows_int8``), exact integer dots,
``y = s_x * float(dot) * s_w``; QAT simulates the same activation rounding) or ``float`` (weight-only:
``y = x @ dequantize(q).T``).
"""

from __future__ import annotations

import numpy as np
import torch

from qwave.formats.base import (
    ACT_RECIPES,
    ACTIVATIONS,
    FP16_MAX,
    PackedSpec,
    QuantizedTensor,
    UnitCodeFormat,
    check_choice,
    check_scale,
    first_true,
    host_array,
    refuse_bits,
    register,
    scaled_codes,
)
from qwave.formats.packing import pack_trits, unpack_trits


def ternarize(w: torch.Tensor) -> QuantizedTensor:
    """Absmean ternary codes (int8 in {-1, 0, 1}) and fp16 per-row scales of a float matrix ``[out, in]``."""
    scale = w.abs().mean(dim=-1, keepdim=True).clamp(max=FP16_MAX).half()
    codes = scaled_codes(w, scale.float(), 1).to(torch.int8)
    return QuantizedTensor(codes=codes, scale=scale, shape=tuple(w.shape))


class Ternary(UnitCodeFormat):
    """Ternary codes packed 5 per byte with an fp16 absmean scale per output channel."""

    name, bits = "ternary", 1.6

    def __init__(self, activations: str = "int8", act_recipe: str = "zero_point") -> None:
        self.activations = check_choice("ternary activations", activations, ACTIVATIONS)
        self.act_recipe = check_choice("ternary act_recipe", act_recipe, ACT_RECIPES)

    def options(self) -> dict:
        return {"activations": self.activations, "act_recipe": self.act_recipe}

    def _quantize(self, w: torch.Tensor) -> QuantizedTensor:
        return ternarize(w)

    def unsigned_codes(self, q: QuantizedTensor) -> tuple[torch.Tensor, int, int]:
        """``(u, 1, 1)``: ``u = t + 1`` in {0, 1, 2} (uint8), so ``codes = u - 1``."""
        return (q.codes + 1).to(torch.uint8), 1, 1

    def layout(self, shape: tuple[int, int]) -> dict[str, PackedSpec]:
        out, n = shape
        return {"codes": PackedSpec(torch.uint8, (out, -(-n // 5))), "scale": PackedSpec(torch.float16, (out, 1))}

    def _check_values(self, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> None:
        """Bytes below 3^5 = 243 (five trits), and the padding trits of a row's last byte 0 (digit 1)."""
        data = host_array(packed["codes"])
        where = first_true(data >= 243)
        tail = shape[1] - 5 * (data.shape[1] - 1)  # trits in the last byte of a row
        if where is None and tail < 5:
            padding = (data[:, -1].astype(np.int32) // 3**tail) % 3 ** (5 - tail)
            where = first_true(padding != sum(3**i for i in range(5 - tail)))
            where = None if where is None else [where[0], data.shape[1] - 1]
        if where is not None:
            refuse_bits(self.name, "codes", where)
        check_scale(self.name, packed["scale"])

    def pack(self, q: QuantizedTensor) -> dict[str, torch.Tensor]:
        return {"codes": pack_trits(q.codes), "scale": q.scale}

    def unpack(self, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> QuantizedTensor:
        return QuantizedTensor(codes=unpack_trits(packed["codes"], shape[1]), scale=packed["scale"], shape=tuple(shape))

    def matmul(self, x: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
        return self._integer_matmul(x, packed, shape, shape[1])


@register("ternary", "bitnet")
def ternary(activations: str = "int8", act_recipe: str = "zero_point") -> Ternary:
    """BitNet b1.58 ternary weights, 1.6 bits per weight; 8-bit activations unless ``activations="float"``."""
    return Ternary(activations, act_recipe)
