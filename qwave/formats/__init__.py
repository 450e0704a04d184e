"""Quantization formats: one file per format, all behind the registry in ``base``.

Importing this package registers every built-in format; the import order below is the order in which
``registered_formats()`` lists them.
"""

# isort: off
from qwave.formats import fp32, half, intk, binary, ternary, qesc  # noqa: F401  (registration)

# isort: on
from qwave.formats.base import (
    PackedSpec,
    QuantFormat,
    QuantizedTensor,
    canonical_name,
    get_format,
    register,
    registered_formats,
)
from qwave.formats.spec import FormatSpec, QuantPlan

__all__ = [
    "FormatSpec",
    "PackedSpec",
    "QuantFormat",
    "QuantPlan",
    "QuantizedTensor",
    "canonical_name",
    "get_format",
    "register",
    "registered_formats",
]
