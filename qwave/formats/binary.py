"""1-bit weights and activations (XNOR-Net style): ``w -> sign(w)`` (``w >= 0 -> +1``) with a per-channel
absmean scale ``mean|w|`` in fp16; each activation row becomes ``sign(x)`` with scale ``mean|x|`` (float32,
computed at run time).

Inference is the XNOR-popcount form over the packed bit words: with ``n`` valid inputs,
``dot = n - 2 * popcount(x_bits XOR w_bits)`` (padding bits are 0 on both sides, so they never differ) and
``y = float(dot) * s_x * s_w``.
"""

from __future__ import annotations

import numpy as np
import torch

from qwave.formats.base import (
    FP16_MAX,
    PackedSpec,
    QuantizedTensor,
    UnitCodeFormat,
    as_rows,
    check_scale,
    first_true,
    host_array,
    refuse_bits,
    register,
    ste,
)
from qwave.formats.packing import pack_words, popcount, unpack_words

# Largest [batch, out, words] block the reference popcount matmul materialises at once.
BLOCK_ELEMENTS = 1 << 22


def binarize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Signs (+-1 floats, ``x >= 0 -> +1``) and absmean scales of each row of ``x``."""
    signs = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    return signs, x.abs().mean(dim=-1, keepdim=True)


def row_blocks(batch: int, per_row: int) -> list[slice]:
    """Slices of the batch such that ``rows * per_row`` stays within ``BLOCK_ELEMENTS`` (one block if empty)."""
    step = max(1, BLOCK_ELEMENTS // max(1, per_row))
    return [slice(start, start + step) for start in range(0, max(batch, 1), step)]


def check_word_padding(fmt: str, name: str, words: torch.Tensor, n: int) -> np.ndarray:
    """Refuse set padding bits (past ``n`` in each row's last 64-bit word); returns the words as a NumPy array."""
    data = host_array(words)
    if n % 64:
        where = first_true((data[:, -1] & (np.int64(-1) << np.int64(n % 64))) != 0)
        if where is not None:
            refuse_bits(fmt, name, [where[0], data.shape[1] - 1])
    return data


class Binary(UnitCodeFormat):
    """Sign codes packed 64 per int64 word, fp16 absmean scale per output channel, binarised activations."""

    name, bits, activations = "binary", 1.0, "binary"

    def _quantize(self, w: torch.Tensor) -> QuantizedTensor:
        signs, scale = binarize_rows(w)
        return QuantizedTensor(codes=signs.to(torch.int8), scale=scale.clamp(max=FP16_MAX).half(), shape=tuple(w.shape))

    def layout(self, shape: tuple[int, int]) -> dict[str, PackedSpec]:
        out, n = shape
        return {"bits": PackedSpec(torch.int64, (out, -(-n // 64))), "scale": PackedSpec(torch.float16, (out, 1))}

    def _check_values(self, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> None:
        check_word_padding(self.name, "bits", packed["bits"], shape[1])
        check_scale(self.name, packed["scale"])

    def pack(self, q: QuantizedTensor) -> dict[str, torch.Tensor]:
        return {"bits": pack_words(q.codes > 0), "scale": q.scale}

    def unpack(self, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> QuantizedTensor:
        signs = unpack_words(packed["bits"], shape[1]).to(torch.int8) * 2 - 1
        return QuantizedTensor(codes=signs, scale=packed["scale"], shape=tuple(shape))

    def fake_quant_input(self, x: torch.Tensor) -> torch.Tensor:
        signs, scale = binarize_rows(x.detach().float())
        return ste(x, signs * scale)

    def matmul(self, x: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
        rows = as_rows(x, shape[1])
        signs, x_scale = binarize_rows(rows)
        x_bits = pack_words(signs > 0)
        w_bits = packed["bits"].unsqueeze(0)
        blocks = row_blocks(rows.shape[0], w_bits.numel())
        differ = torch.cat([popcount(x_bits[b].unsqueeze(1) ^ w_bits).sum(-1) for b in blocks])
        dot = shape[1] - 2 * differ
        y = dot.float() * x_scale * packed["scale"].float().T
        return y.reshape(*x.shape[:-1], shape[0])


@register("binary", "1")
def binary() -> Binary:
    """1 bit per weight, XNOR-popcount inference."""
    return Binary()
