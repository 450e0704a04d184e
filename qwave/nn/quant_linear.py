"""QuantLinear: a Linear layer trained through its format's fake quantization (QAT, straight-through estimator).

The forward pass is ``F.linear(fmt.fake_quant_input(x), fmt.fake_quant(weight), bias)``: exactly the values the
packed layer computes with, so a trained QuantLinear and its ``PackedLinear`` agree up to float summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qwave.formats import QuantFormat, get_format


def as_format(fmt: str | int | QuantFormat, **options) -> QuantFormat:
    """A format object from a registry name / alias (with options) or an already built format."""
    if isinstance(fmt, (str, int)):
        return get_format(fmt, **options)
    return fmt


class QuantLinear(nn.Linear):
    """``nn.Linear`` whose weight (and, for activation-quantizing formats, input) is fake-quantized."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        fmt: str | int | QuantFormat = "fp32",
        **fmt_options,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.fmt = as_format(fmt, **fmt_options)

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: str | int | QuantFormat, **fmt_options) -> QuantLinear:
        """Wrap an existing Linear, sharing its Parameter objects (tied weights stay tied)."""
        layer = cls(linear.in_features, linear.out_features, bias=False, fmt=fmt, **fmt_options)
        layer.weight = linear.weight
        layer.bias = linear.bias
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.fmt.fake_quant_input(x), self.fmt.fake_quant(self.weight), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fmt={self.fmt!r}"
