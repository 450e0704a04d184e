"""Symmetric k-bit integer weights (k = 2..8), per output channel or per group of ``group_size`` inputs.

``scale = max|w| / qmax`` with ``qmax = 2^(k-1) - 1``, rounded to float16 (saturating at 65504) *before*
the codes ``clamp(round(w / scale), -qmax, qmax)`` are computed, so ``dequantize(quantize(w))`` is exactly
``fake_quant(w)``. A group whose fp16 scale is 0 (all zeros, or below fp16's smallest subnormal) stores
scale 0 and codes 0, i.e. exact zeros.

Inference: ``int8`` quantizes each activation row dynamically (``s_x = max|x_row| / 127`` in float32, not
stored), accumulates the integer products exactly (int32 semantics) per group and scales:
``y = s_x * sum_g(float(acc_g) * s_w[:, g])``. k < 8 is weight-only: ``y = x @ dequantize(q).T``.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from qwave.errors import FormatError
from qwave.formats.base import (
    FP16_MAX,
    FormatBase,
    PackedSpec,
    QuantizedTensor,
    as_rows,
    check_scale,
    first_true,
    host_array,
    refuse_bits,
    refuse_code,
    register,
    scaled_codes,
    ste,
)
from qwave.formats.packing import pack_bits, unpack_bits


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric int8 activations: codes (float tensor of integers) and per-row float32 scales."""
    scale = x.abs().amax(dim=-1, keepdim=True) / 127
    return scaled_codes(x, scale, 127), scale


def _is_positive_integer(value) -> bool:
    try:
        return not isinstance(value, bool) and int(value) == value and value >= 1
    except (TypeError, ValueError, OverflowError):
        return False


class IntK(FormatBase):
    """Symmetric ``bits``-bit integer codes with fp16 scales per output channel or per ``group_size`` inputs."""

    def __init__(self, bits: int, group_size: int | None = None) -> None:
        if not 2 <= int(bits) <= 8:
            raise FormatError(f"integer formats take 2..8 bits; got bits={bits}")
        if group_size is not None and not _is_positive_integer(group_size):
            raise FormatError(f"group_size must be a positive integer or None; got {group_size!r}")
        self.name = f"int{int(bits)}"
        self.bits = float(bits)
        self.qmax = 2 ** (int(bits) - 1) - 1
        self.group_size = None if group_size is None else int(group_size)
        self.activations = "int8" if bits == 8 else "float"

    def options(self) -> dict:
        return {"group_size": self.group_size}

    def _group(self, in_features: int) -> tuple[int, int]:
        """Group width and number of groups for a row of ``in_features`` weights."""
        size = in_features if self.group_size is None else min(self.group_size, in_features)
        size = max(size, 1)
        return size, math.ceil(in_features / size)

    def _grouped(self, t: torch.Tensor, size: int, groups: int) -> torch.Tensor:
        """``[out, in]`` -> ``[out, groups, size]``, zero-padding the last (short) group."""
        padded = torch.nn.functional.pad(t, (0, groups * size - t.shape[1]))
        return padded.reshape(t.shape[0], groups, size)

    def _quantize(self, w: torch.Tensor) -> QuantizedTensor:
        out, n = w.shape
        size, groups = self._group(n)
        wg = self._grouped(w, size, groups)
        scale = (wg.abs().amax(dim=-1) / self.qmax).clamp(max=FP16_MAX).half()
        codes = scaled_codes(wg, scale.float().unsqueeze(-1), self.qmax)
        codes = codes.reshape(out, groups * size)[:, :n].to(torch.int8)
        return QuantizedTensor(codes=codes, scale=scale, shape=(out, n))

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
        return {"codes": pack_bits(q.codes, int(self.bits)), "scale": q.scale}

    def unpack(self, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> QuantizedTensor:
        codes = unpack_bits(packed["codes"], int(self.bits), shape[1])
        return QuantizedTensor(codes=codes, scale=packed["scale"], shape=tuple(shape))

    def dequantize(self, q: QuantizedTensor) -> torch.Tensor:
        out, n = q.shape
        size, groups = self._group(n)
        wg = self._grouped(q.codes.float(), size, groups) * q.scale.float().unsqueeze(-1)
        return wg.reshape(out, groups * size)[:, :n]

    def fake_quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.activations != "int8":
            return x
        codes, scale = quantize_rows_int8(x.detach().float())
        return ste(x, codes * scale)

    def matmul(self, x: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
        self.kernel = "reference-torch"
        rows = as_rows(x, shape[1])
        q = self.unpack(packed, shape)
        if self.activations != "int8":
            y = rows @ self.dequantize(q).T
        else:
            y = self._int8_matmul(rows, q)
        return y.reshape(*x.shape[:-1], shape[0])

    def _int8_matmul(self, rows: torch.Tensor, q: QuantizedTensor) -> torch.Tensor:
        """Integer dot products per group (exact: float64 holds every int32 sum), then the two scales."""
        size, groups = self._group(q.shape[1])
        x_codes, x_scale = quantize_rows_int8(rows)
        x_codes, w_codes = x_codes.double(), q.codes.double()
        w_scale = q.scale.float()
        y = torch.zeros(rows.shape[0], q.shape[0], device=rows.device)
        for g in range(groups):
            cols = slice(g * size, (g + 1) * size)
            acc = x_codes[:, cols] @ w_codes[:, cols].T
            y = y + acc.float() * w_scale[:, g]
        return y * x_scale


for _k in range(8, 1, -1):
    register(f"int{_k}", str(_k))(partial(IntK, _k))
