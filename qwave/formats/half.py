"""16-bit float formats: weights stored (and multiplied) as float16 or bfloat16; activations stay float.

``fp16`` saturates weights beyond +-65504 (its largest finite value) instead of turning them into inf.
"""

from __future__ import annotations

import torch

from qwave.formats.base import register
from qwave.formats.fp32 import FloatFormat


@register("fp16", "16")
def fp16() -> FloatFormat:
    """IEEE half precision: 16 bits per weight on disk and in the matmul."""
    return FloatFormat("fp16", torch.float16)


@register("bf16")
def bf16() -> FloatFormat:
    """bfloat16: float32's exponent range with an 8-bit mantissa, 16 bits per weight."""
    return FloatFormat("bf16", torch.bfloat16)
