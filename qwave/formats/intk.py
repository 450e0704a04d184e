"""k-bit integer weights (k = 2..8), per output channel or per group of ``group_size`` inputs.

Two grids (option ``grid``):

* ``symmetric`` (default for k >= 3): ``scale = max|w| / qmax`` with ``qmax = 2^(k-1) - 1``, rounded to float16
  (saturating at 65504) *before* the codes ``clamp(round(w / scale), -qmax, qmax)`` are computed, so
  ``dequantize(quantize(w))`` is exactly ``fake_quant(w)``. One of the ``2^k`` codes is unused (int2: 3 levels).
* ``halfstep`` (default for k = 2; k <= 7): all ``2^k`` levels, the odd codes ``c in {-(2^k-1), ..., -1, 1, ...,
  2^k-1}`` with value ``c * scale`` (symmetric about 0, no zero level; ``scale`` is half a step). The scale is
  chosen for the squared error: starting from ``max|w| / (2^k-1)``, ``HALFSTEP_ITERATIONS`` alternating steps of
  ``codes = nearest odd integer of w / scale`` (clamped) and ``scale = <w, codes> / <codes, codes>`` (the
  least-squares scale for those codes; each step never increases the error), then float16 rounding and the codes
  of that stored scale.

A group whose fp16 scale is 0 (all zeros, or below fp16's smallest subnormal) stores scale 0 (and codes 0, or 1 on
the half-step grid), i.e. exact zeros.

Inference (option ``activations``): ``int8`` (default; W8A8, W4A8, W2A8, ...) quantizes each activation row
dynamically (128 levels with a zero point per row, ``base.quantize_rows_int8``; not stored), accumulates the
integer products exactly (int32 semantics) per group and scales: ``y = s_x * sum_g(float(acc_g) * s_w[:, g])``;
QAT simulates the same activation rounding. ``float`` is the weight-only variant: ``y = x @ dequantize(q).T``.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from qwave.errors import FormatError
from qwave.formats.base import (
    ACT_RECIPES,
    ACTIVATIONS,
    FP16_MAX,
    FormatBase,
    PackedSpec,
    QuantizedTensor,
    check_choice,
    check_scale,
    first_true,
    host_array,
    refuse_bits,
    refuse_code,
    register,
    scaled_codes,
)
from qwave.formats.packing import pack_bits, unpack_bits

GRIDS = ("symmetric", "halfstep")
HALFSTEP_ITERATIONS = 8

def odd_codes(x: torch.Tensor, scale: torch.Tensor, limit: int) -> torch.Tensor:
    """The nearest odd integer of ``x / scale`` clamped to ``[-limit, limit]`` (``limit`` odd), as floats; 1 where
    ``scale`` is 0 (the value is 0 either way)."""
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale))
    odd = (2 * torch.floor(x / (2 * divisor)) + 1).clamp(-limit, limit)
    return torch.where(scale > 0, odd, torch.ones_like(x))


def _is_positive_integer(value) -> bool:
    try:
        return not isinstance(value, bool) and int(value) == value and value >= 1
    except (TypeError, ValueError, OverflowError):
        return False


class IntK(FormatBase):
    """``bits``-bit integer codes with fp16 scales per output channel or per ``group_size`` inputs."""

    def __init__(
        self, bits: int, group_size: int | None = None, activations: str = "int8", grid: str | None = None,
        act_recipe: str = "zero_point",
    ) -> None:
        if not 2 <= int(bits) <= 8:
            raise FormatError(f"integer formats take 2..8 bits; got bits={bits}")
        if group_size is not None and not _is_positive_integer(group_size):
            raise FormatError(f"group_size must be a positive integer or None; got {group_size!r}")
        self.name = f"int{int(bits)}"
        self.bits = float(bits)
        self.group_size = None if group_size is None else int(group_size)
        self.activations = check_choice(f"{self.name} activations", activations, ACTIVATIONS)
        self.act_recipe = check_choice(f"{self.name} act_recipe", act_recipe, ACT_RECIPES)
        self.grid = check_choice(f"{self.name} grid", grid or ("halfstep" if bits == 2 else "symmetric"), GRIDS)
        if self.grid == "halfstep" and bits == 8:
            raise FormatError("int8 grid='halfstep' would need codes up to +-255; use grid='symmetric' (int8's)")
        # Largest code magnitude: symmetric qmax, or the outermost odd code of the half-step grid.
        self.qmax = 2 ** int(bits) - 1 if self.grid == "halfstep" else 2 ** (int(bits) - 1) - 1

    def options(self) -> dict:
        return {"group_size": self.group_size, "activations": self.activations, "grid": self.grid,
                "act_recipe": self.act_recipe}

    def _group(self, in_features: int) -> tuple[int, int]:
        """Group width and number of groups for a row of ``in_features`` weights."""
        size = in_features if self.group_size is None else min(self.group_size, in_features)
        size = max(size, 1)
        return size, math.ceil(in_features / size)

    def _grouped(self, t: torch.Tensor, size: int, groups: int) -> torch.Tensor:
        """``[out, in]`` -> ``[out, groups, size]``, zero-padding the last (short) group."""
        padded = torch.nn.functional.pad(t, (0, groups * size - t.shape[1]))
        return padded.reshape(t.shape[0], groups, size)

    def _halfstep_scale(self, wg: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Least-squares half-step scale per group (float32, before fp16 rounding); ``valid`` masks padding."""
        scale = wg.abs().amax(dim=-1) / self.qmax
        for _ in range(HALFSTEP_ITERATIONS):
            codes = odd_codes(wg, scale.unsqueeze(-1), self.qmax) * valid
            energy = (codes * codes).sum(-1)
            scale = torch.where(energy > 0, (wg * codes).sum(-1) / energy.clamp(min=1), torch.zeros_like(scale))
        return scale

    def _quantize(self, w: torch.Tensor) -> QuantizedTensor:
        out, n = w.shape
        size, groups = self._group(n)
        wg = self._grouped(w, size, groups)
        if self.grid == "halfstep":
            valid = self._grouped(torch.ones(1, n, dtype=w.dtype, device=w.device), size, groups)
            scale = self._halfstep_scale(wg, valid).clamp(max=FP16_MAX).half()
            codes = odd_codes(wg, scale.float().unsqueeze(-1), self.qmax)
        else:
            scale = (wg.abs().amax(dim=-1) / self.qmax).clamp(max=FP16_MAX).half()
            codes = scaled_codes(wg, scale.float().unsqueeze(-1), self.qmax)
        codes = codes.reshape(out, groups * size)[:, :n].to(torch.int8)
        return QuantizedTensor(codes=codes, scale=scale, shape=(out, n))

    def unsigned_codes(self, q: QuantizedTensor) -> tuple[torch.Tensor, int, int]:
        """``(u, alpha, beta)`` with ``u`` in ``[0, 2^bits)`` (uint8) and ``codes = alpha * u - beta``: the
        unsigned fields the packing stores (half-step) or an offset of the two's-complement codes (symmetric)."""
        k = int(self.bits)
        if self.grid == "halfstep":
            return ((q.codes.to(torch.int16) + self.qmax) // 2).to(torch.uint8), 2, self.qmax
        return (q.codes.to(torch.int16) + 2 ** (k - 1)).to(torch.uint8), 1, 2 ** (k - 1)

    def layout(self, shape: tuple[int, int]) -> dict[str, PackedSpec]:
        out, n = shape
        return {"codes": PackedSpec(torch.uint8, (out, math.ceil(n * int(self.bits) / 8))),
                "scale": PackedSpec(torch.float16, (out, self._group(n)[1]))}

    def code_range(self) -> tuple[int, int]:
        return -self.qmax, self.qmax

    def _check_values(self, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> None:
        """Codes in range and padding bits 0, read from the bytes when whole codes fill a byte (k = 2, 4, 8):
        one vector comparison per code slot of a byte and per out-of-range k-bit pattern. Codes that straddle
        bytes take the generic check."""
        k = int(self.bits)
        if 8 % k:
            return super()._check_values(packed, shape)
        data = host_array(packed["codes"])
        per_byte, mask, (low, high) = 8 // k, (1 << k) - 1, self.code_range()
        if self.grid == "halfstep":  # unsigned fields u, code 2u - qmax: every field is a code in range
            signed = {u: 2 * u - self.qmax for u in range(1 << k)}
        else:  # two's complement
            signed = {u: u - (1 << k) if u >> (k - 1) else u for u in range(1 << k)}
        outside = [u for u, code in signed.items() if not low <= code <= high]
        for slot in range(per_byte):
            field = (data >> (k * slot)) & mask if per_byte > 1 else data
            for u in outside:
                where = first_true(field == u)
                if where is not None:
                    refuse_code(self.name, signed[u], [where[0], where[1] * per_byte + slot], (low, high))
        tail = shape[1] - per_byte * (data.shape[1] - 1)  # codes in the last byte of a row; the rest is padding
        if tail < per_byte:
            where = first_true((data[:, -1] >> (k * tail)) != 0)
            if where is not None:
                refuse_bits(self.name, "codes", [where[0], data.shape[1] - 1])
        check_scale(self.name, packed["scale"])

    def pack(self, q: QuantizedTensor) -> dict[str, torch.Tensor]:
        fields = self.unsigned_codes(q)[0] if self.grid == "halfstep" else q.codes
        return {"codes": pack_bits(fields, int(self.bits)), "scale": q.scale}

    def unpack(self, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> QuantizedTensor:
        k = int(self.bits)
        codes = unpack_bits(packed["codes"], k, shape[1])
        if self.grid == "halfstep":
            codes = (2 * (codes.to(torch.int16) & (2**k - 1)) - self.qmax).to(torch.int8)
        return QuantizedTensor(codes=codes, scale=packed["scale"], shape=tuple(shape))

    def dequantize(self, q: QuantizedTensor) -> torch.Tensor:
        out, n = q.shape
        size, groups = self._group(n)
        wg = self._grouped(q.codes.float(), size, groups) * q.scale.float().unsqueeze(-1)
        return wg.reshape(out, groups * size)[:, :n]

    def matmul(self, x: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
        return self._integer_matmul(x, packed, shape, self._group(shape[1])[0])


for _k in range(8, 1, -1):
    register(f"int{_k}", str(_k))(partial(IntK, _k))
