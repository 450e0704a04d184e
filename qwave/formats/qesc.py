"""qesc: ternary weights *and* ternary activations, the dot product computed exactly by AND + popcount.

Weights are ternarised as in ``ternary`` (fp16 absmean scale per output channel); each activation row gets
``s_x = mean|x|`` (float32, at run time) and trits ``clamp(round(x / s_x), -1, 1)``. Both sides are stored as
two bit-planes (``plus``: trit is +1, ``minus``: trit is -1), so with ``pop = popcount``:

    dot = pop(x+ & w+) + pop(x- & w-) - pop(x+ & w-) - pop(x- & w+),    y = float(dot) * s_x * s_w.

Two bits per weight (``plus`` and ``minus`` words). Trainable through the straight-through estimator.
"""

from __future__ import annotations

import torch

from qwave.formats.base import (
    PackedSpec,
    QuantizedTensor,
    UnitCodeFormat,
    as_rows,
    check_scale,
    first_true,
    refuse_bits,
    register,
    scaled_codes,
    ste,
)
from qwave.formats.binary import check_word_padding, row_blocks
from qwave.formats.packing import pack_words, popcount, unpack_words
from qwave.formats.ternary import ternarize


def ternarize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean trits (float tensor of -1/0/1) and float32 scales of each row of ``x``."""
    scale = x.abs().mean(dim=-1, keepdim=True)
    return scaled_codes(x, scale, 1), scale


class Qesc(UnitCodeFormat):
    """Ternary weights as plus/minus int64 bit-planes, ternary activations, AND-popcount inference."""

    name, bits, activations = "qesc", 2.0, "ternary"

    def _quantize(self, w: torch.Tensor) -> QuantizedTensor:
        return ternarize(w)

    def layout(self, shape: tuple[int, int]) -> dict[str, PackedSpec]:
        out, n = shape
        words = PackedSpec(torch.int64, (out, -(-n // 64)))
        return {"plus": words, "minus": words, "scale": PackedSpec(torch.float16, (out, 1))}

    def _check_values(self, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> None:
        plus = check_word_padding(self.name, "plus", packed["plus"], shape[1])
        minus = check_word_padding(self.name, "minus", packed["minus"], shape[1])
        where = first_true((plus & minus) != 0)  # a trit is +1 or -1, never both
        if where is not None:
            refuse_bits(self.name, "minus", where)
        check_scale(self.name, packed["scale"])

    def pack(self, q: QuantizedTensor) -> dict[str, torch.Tensor]:
        return {"plus": pack_words(q.codes > 0), "minus": pack_words(q.codes < 0), "scale": q.scale}

    def unpack(self, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> QuantizedTensor:
        plus = unpack_words(packed["plus"], shape[1]).to(torch.int8)
        minus = unpack_words(packed["minus"], shape[1]).to(torch.int8)
        return QuantizedTensor(codes=plus - minus, scale=packed["scale"], shape=tuple(shape))

    def fake_quant_input(self, x: torch.Tensor) -> torch.Tensor:
        trits, scale = ternarize_rows(x.detach().float())
        return ste(x, trits * scale)

    def matmul(self, x: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
        rows = as_rows(x, shape[1])
        trits, x_scale = ternarize_rows(rows)
        xp, xm = pack_words(trits > 0), pack_words(trits < 0)
        wp, wm = packed["plus"].unsqueeze(0), packed["minus"].unsqueeze(0)
        blocks = []
        for b in row_blocks(rows.shape[0], wp.numel()):
            bp, bm = xp[b].unsqueeze(1), xm[b].unsqueeze(1)
            counts = popcount(bp & wp) + popcount(bm & wm) - popcount(bp & wm) - popcount(bm & wp)
            blocks.append(counts.sum(-1))
        y = torch.cat(blocks).float() * x_scale * packed["scale"].float().T
        return y.reshape(*x.shape[:-1], shape[0])


@register("qesc")
def qesc() -> Qesc:
    """Ternary weights and activations, bitwise popcount inference (2-bit encoding)."""
    return Qesc()
