"""The one interface every quantization format implements, and the registry that names them.

A format turns a float weight matrix ``w`` of shape ``[out_features, in_features]`` into integer codes plus
scales (``quantize``), into the tensors actually stored (``pack``), and back (``unpack``, ``dequantize``).
``matmul(x, packed, shape)`` is the inference recipe: it includes the format's activation handling
(weight-only formats keep float activations; int8 quantizes activations per row; binary and qesc binarise /
ternarise them). ``fake_quant`` / ``fake_quant_input`` simulate exactly that recipe for quantization-aware
training with a straight-through estimator.

Packed layouts (row-major, one row per output channel, rows padded independently):

* ``fp32``: ``weight`` float32 ``[out, in]``.
* ``fp16`` / ``bf16``: ``weight`` float16 / bfloat16 ``[out, in]``.
* ``int<k>`` (k in 2..8): ``codes`` uint8 ``[out, ceil(in*k/8)]``, each row a little-endian bit stream of k-bit
  fields (k=8: the uint8 view of int8 codes; k=4: low nibble first); ``scale`` float16 ``[out, n_groups]``
  (``n_groups = 1`` per channel, else ``ceil(in / group_size)``). Grid ``symmetric``: two's-complement codes in
  ``[-(2^(k-1)-1), 2^(k-1)-1]``, value ``code * scale``. Grid ``halfstep`` (k <= 7; int2's default): unsigned
  fields ``u`` in ``[0, 2^k)`` for the odd codes ``2u - (2^k - 1)``, value ``code * scale`` (all ``2^k`` levels,
  symmetric about 0; ``scale`` is half a step).
* ``binary``: ``bits`` int64 ``[out, ceil(in/64)]`` (the uint64 words' bit pattern), bit ``j`` of word ``i``
  is set when element ``64*i + j`` is ``+1``; padding bits are 0; ``scale`` float16 ``[out, 1]``.
* ``ternary``: ``codes`` uint8 ``[out, ceil(in/5)]``, byte = ``sum_i (t_i + 1) * 3**i`` over five trits
  (padding trits are 0, i.e. digit 1); ``scale`` float16 ``[out, 1]``.
* ``qesc``: ``plus`` and ``minus`` int64 ``[out, ceil(in/64)]`` bit-planes (bit set where the trit is +1 /
  -1, same bit order as binary); ``scale`` float16 ``[out, 1]``.

Activations (``activations``): ``int8`` formats (int8 always; int2..int7 and ternary by default: W4A8, W2A8,
W1.58A8) quantize each input row dynamically to 128 levels with a zero point (``quantize_rows_int8``: codes 0..127,
exact in every kernel variant) and compute exact integer dots (``int8_activation_matmul``);
``float`` (fp formats, and the explicit weight-only option ``activations="float"`` of int2..int7 and ternary)
multiply float inputs by the dequantized weight; binary / qesc binarise / ternarise them.

A format with its options is named by a ``qwave.formats.spec.FormatSpec`` (which also reads old manifests).

``layout(shape)`` states each format's packed tensors (dtype and exact shape) and ``check_packed`` refuses any
tensor that is not exactly that layout, or whose values lie outside it, before a kernel reads it: the kernels do
no bounds checks, so a wrong shape, an out-of-range code or a set padding bit would otherwise be read as weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from qwave.errors import FormatError


@dataclass
class QuantizedTensor:
    """Integer codes and their scales, not yet packed: the exact value a format stores."""

    codes: torch.Tensor
    scale: torch.Tensor
    shape: tuple[int, int]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def equal(self, other: QuantizedTensor) -> bool:
        """Bit-for-bit equality of codes, scales and extras."""
        same_extra = self.extra.keys() == other.extra.keys() and all(
            torch.equal(v, other.extra[k]) for k, v in self.extra.items()
        )
        return (
            self.shape == other.shape
            and torch.equal(self.codes, other.codes)
            and torch.equal(self.scale, other.scale)
            and same_extra
        )


@dataclass(frozen=True)
class PackedSpec:
    """The dtype and exact shape of one packed tensor."""

    dtype: torch.dtype
    shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{str(self.dtype).removeprefix('torch.')} {list(self.shape)}"


@runtime_checkable
class QuantFormat(Protocol):
    """What every registered format provides (see the module docstring for the packed layouts)."""

    name: str
    bits: float
    activations: str  # "float", "int8", "binary" or "ternary": what matmul does to its input

    def fake_quant(self, w: torch.Tensor) -> torch.Tensor: ...

    def fake_quant_input(self, x: torch.Tensor) -> torch.Tensor: ...

    def quantize(self, w: torch.Tensor) -> QuantizedTensor: ...

    def pack(self, q: QuantizedTensor) -> dict[str, torch.Tensor]: ...

    def unpack(self, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> QuantizedTensor: ...

    def dequantize(self, q: QuantizedTensor) -> torch.Tensor: ...

    def matmul(self, x: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> torch.Tensor: ...

    def options(self) -> dict: ...

    def layout(self, shape: tuple[int, int]) -> dict[str, PackedSpec]: ...

    def check_packed(self, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> None: ...


FormatFactory = Callable[..., QuantFormat]
_REGISTRY: dict[str, FormatFactory] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, *aliases: str) -> Callable[[FormatFactory], FormatFactory]:
    """Class/function decorator: make ``get_format(name or alias, **options)`` build this format."""

    def wrap(factory: FormatFactory) -> FormatFactory:
        _REGISTRY[name] = factory
        for alias in aliases:
            _ALIASES[alias] = name
        return factory

    return wrap


def canonical_name(name: str | int) -> str:
    """Registry key for a config name or alias ("4" -> "int4", "esc" -> "fp32")."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        known = ", ".join(sorted(set(_REGISTRY) | set(_ALIASES)))
        raise FormatError(f"unknown quantization format {name!r}; known formats: {known}")
    return key


def get_format(name: str | int, **options) -> QuantFormat:
    """Build the format registered under ``name`` (or an alias) with its options (e.g. ``group_size``)."""
    key = canonical_name(name)
    try:
        return _REGISTRY[key](**options)
    except TypeError as err:
        raise FormatError(f"format {key!r} does not take the options {sorted(options)}: {err}") from None


def registered_formats() -> list[str]:
    """Canonical names of every registered format, in registration order."""
    return list(_REGISTRY)


ACTIVATIONS = ("int8", "float")  # the choices of the ``activations`` option of integer-weight formats
ACT_RECIPES = ("zero_point", "symmetric")  # the choices of ``act_recipe`` (``quantize_rows_int8``)


def check_choice(option: str, value, choices: tuple) -> str:
    """``value`` if it is one of ``choices``, else a FormatError naming the option."""
    if value not in choices:
        raise FormatError(f"{option} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def check_weight_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(out, in)`` of a weight shape of two positive integers; anything else is a FormatError."""
    dims = tuple(shape)
    if len(dims) != 2 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims):
        raise FormatError(f"a weight shape is two positive integers [out, in]; got {list(dims)}")
    return dims


def _first_index(mask: torch.Tensor) -> list[int]:
    return mask.nonzero()[0].tolist()


def non_finite(t: torch.Tensor) -> list[int] | None:
    """Index of the first NaN or infinite value of a float tensor, or None (meta tensors hold no values).

    Read through NumPy: ``np.isfinite`` is far faster on CPU than ``torch.isfinite`` for large tensors."""
    if t.is_meta:
        return None
    return first_true(~np.isfinite(host_array(t.float() if t.dtype == torch.bfloat16 else t)))


def check_finite(w: torch.Tensor, what: str = "weight") -> None:
    """Refuse NaN or infinite values: quantizing them would silently produce garbage codes."""
    bad = non_finite(w)
    if bad is not None:
        raise FormatError(f"{what} has a non-finite value (NaN or inf) at index {bad}; cannot quantize it")


FP16_MAX = 65504.0  # largest finite float16: scales saturate here instead of overflowing to inf


def scaled_codes(x: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """``clamp(round(x / scale), -qmax, qmax)`` as floats, with code 0 wherever ``scale`` is 0."""
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, (x / divisor).round().clamp(-qmax, qmax), torch.zeros_like(x))


def quantize_rows_int8(x: torch.Tensor, recipe: str = "zero_point") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dynamic per-row activations on 128 levels (fbgemm's ``reduce_range``): ``lo = min(x_row, 0)``, ``hi =
    max(x_row, 0)``, float32 scale ``s = (hi - lo) / 127``, zero point ``z = clamp(rint(-lo / s), 0, 127)``, codes
    ``q = clamp(rint(x / s) + z, 0, 127)`` (round half to even; all 0 where ``s == 0``); the value is ``(q - z) * s``.

    Codes below 128 keep AVX2's ``vpmaddubsw`` (unsigned x signed bytes, int16 pairs) exact without a sign step on
    every CPU. A row with no negative value (after a ReLU) gets ``z = 0`` and ``s = max|x_row| / 127``: the same
    codes as symmetric int8. ``recipe="symmetric"`` is the recipe of artifacts saved before this one (``s =
    max|x_row| / 127``, codes ``clamp(rint(x / s), -127, 127)``, ``z = 0``), which only the reference recipe runs.
    Returns ``(codes, zero points, scales)`` as float tensors ``[rows, in]``, ``[rows, 1]``, ``[rows, 1]``."""
    if recipe == "symmetric":
        scale = x.abs().amax(dim=-1, keepdim=True) / 127
        return scaled_codes(x, scale, 127), torch.zeros_like(scale), scale
    lo = x.amin(dim=-1, keepdim=True).clamp(max=0)
    hi = x.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = (hi - lo) / 127
    live = scale > 0
    divisor = torch.where(live, scale, torch.ones_like(scale))
    zero = torch.where(live, (-lo / divisor).round().clamp(0, 127), torch.zeros_like(scale))
    codes = torch.where(live, ((x / divisor).round() + zero).clamp(0, 127), torch.zeros_like(x))
    return codes, zero, scale


def int8_activation_matmul(rows: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, size: int,
                           recipe: str = "zero_point") -> torch.Tensor:
    """The W·A8 recipe: the activation codes less their zero point (``quantize_rows_int8``) times integer weight
    ``codes [out, in]``, exactly per group of ``size`` inputs (float64 holds every int32 sum), ``y = s_x *
    sum_g(float(acc_g) * s_w[:, g])``."""
    x_codes, x_zero, x_scale = quantize_rows_int8(rows, recipe)
    x_codes, w_codes = (x_codes - x_zero).double(), codes.double()
    w_scale = scale.float()
    y = torch.zeros(rows.shape[0], codes.shape[0], device=rows.device)
    for g in range(w_scale.shape[1]):
        cols = slice(g * size, (g + 1) * size)
        acc = x_codes[:, cols] @ w_codes[:, cols].T
        y = y + acc.float() * w_scale[:, g]
    return y * x_scale


def ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator: forward value exactly ``q`` (``x - x.detach()`` is exactly 0), gradient
    identity to ``x``."""
    return q.to(x.dtype).detach() + (x - x.detach())


def as_rows(x: torch.Tensor, in_features: int) -> torch.Tensor:
    """View the input of a matmul as float32 rows ``[batch, in_features]`` (leading dims flattened)."""
    if x.shape[-1] != in_features:
        raise FormatError(f"matmul input has {x.shape[-1]} features in its last dimension; expected {in_features}")
    return x.reshape(-1, in_features).float()


def refuse_bits(fmt: str, tensor: str, where: list[int]) -> None:
    raise FormatError(f"{fmt} tensor {tensor!r} has bits outside the layout at index {where} (a padding bit or an "
                      "unused code value is set)")


def refuse_code(fmt: str, code: int, where: list[int], bounds: tuple[int, int]) -> None:
    raise FormatError(f"{fmt} weight code {code} at index {where} is outside the format's range "
                      f"[{bounds[0]}, {bounds[1]}]")


def check_scale(fmt: str, scale: torch.Tensor) -> None:
    """Scales are finite and >= 0 (quantize never writes another)."""
    bad = ~torch.isfinite(scale) | (scale < 0)
    if bad.any():
        where = _first_index(bad)
        raise FormatError(f"{fmt} scale {float(scale[tuple(where)])} at index {where} is not a finite value >= 0")


def first_true(mask: np.ndarray) -> list[int] | None:
    """Index of the first True of a NumPy mask, or None."""
    if not mask.any():  # much cheaper than argwhere on the usual all-False mask
        return None
    return np.argwhere(mask)[0].tolist()


def host_array(t: torch.Tensor) -> np.ndarray:
    """The tensor's values as a NumPy array (copied from the device when it is not on the CPU)."""
    return t.detach().cpu().numpy()


class FormatBase:
    """Behaviour shared by the built-in formats; a subclass implements ``_quantize`` (no input checks),
    ``pack``, ``unpack``, ``dequantize`` and ``matmul``.
    """

    name: str
    bits: float
    activations: str = "float"
    act_recipe: str = "zero_point"  # how ``activations == "int8"`` rounds a row (``quantize_rows_int8``)

    def _quantize(self, w: torch.Tensor) -> QuantizedTensor:
        raise NotImplementedError

    def dequantize(self, q: QuantizedTensor) -> torch.Tensor:
        raise NotImplementedError

    def quantize(self, w: torch.Tensor) -> QuantizedTensor:
        """Codes and scales of a finite 2-D float weight ``[out, in]``."""
        if w.ndim != 2:
            raise FormatError(f"{self.name} quantizes 2-D weights [out, in]; got shape {tuple(w.shape)}")
        check_finite(w)
        return self._quantize(w.detach().float())

    def fake_quant(self, w: torch.Tensor) -> torch.Tensor:
        """``dequantize(quantize(w))`` in the forward pass, identity gradient (straight-through)."""
        return ste(w, self.dequantize(self._quantize(w.detach().float())))

    def fake_quant_input(self, x: torch.Tensor) -> torch.Tensor:
        """What ``matmul`` does to its input, with a straight-through gradient: the per-row int8 rounding for
        ``activations == "int8"``, identity for float input (binary / qesc override it)."""
        if self.activations != "int8":
            return x
        codes, zero, scale = quantize_rows_int8(x.detach().float(), self.act_recipe)
        return ste(x, (codes - zero) * scale)

    def _integer_matmul(self, x: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int],
                        size: int) -> torch.Tensor:
        """``matmul`` of integer weight codes: exact int8-activation dots per group of ``size`` inputs
        (``int8_activation_matmul``) or, for ``activations="float"``, the input times the dequantized weight."""
        rows = as_rows(x, shape[1])
        q = self.unpack(packed, shape)
        if self.activations == "int8":
            y = int8_activation_matmul(rows, q.codes, q.scale, size, self.act_recipe)
        else:
            y = rows @ self.dequantize(q).T
        return y.reshape(*x.shape[:-1], shape[0])

    def options(self) -> dict:
        """Constructor options: ``get_format(self.name, **self.options())`` rebuilds this format."""
        return {}

    def layout(self, shape: tuple[int, int]) -> dict[str, PackedSpec]:
        """The tensors ``pack`` stores for a weight of ``shape`` ``[out, in]``: name -> dtype and exact shape."""
        raise NotImplementedError

    def code_range(self) -> tuple[int, int] | None:
        """Smallest and largest integer weight code the format stores (None: the weight itself is stored)."""
        return None

    def check_packed(self, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> None:
        """Refuse ``packed`` unless it is exactly ``layout(shape)`` and its values are ones ``pack`` can write.

        Values: re-packing the unpacked codes must give the same bytes (no padding bit or unused code bit set),
        codes lie in ``code_range()``, scales are finite and >= 0, stored float weights are finite. Meta tensors
        (shape checks before any allocation) have their layout checked only.
        """
        out, n = check_weight_shape(shape)
        expected = self.layout((out, n))
        if set(packed) != set(expected):
            raise FormatError(f"{self.name} stores the tensors {sorted(expected)} for a weight; got {sorted(packed)}")
        for name, spec in expected.items():
            got = PackedSpec(packed[name].dtype, tuple(packed[name].shape))
            if got != spec:
                raise FormatError(f"{self.name} tensor {name!r} of a [{out}, {n}] weight must be {spec.describe()}; "
                                  f"got {got.describe()}")
        if any(t.is_meta for t in packed.values()):
            return
        self._check_values(packed, (out, n))

    def _check_values(self, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> None:
        """The value rules of ``check_packed`` for any format: unpack, re-pack and compare, then the code range and
        the scales. The built-in formats override it with the same rules checked on the stored bytes directly
        (this generic check decodes every code, which costs far more than reading the file)."""
        q = self.unpack(packed, shape)
        repacked = self.pack(q)
        for name, tensor in packed.items():
            if not torch.equal(repacked[name], tensor):
                refuse_bits(self.name, name, _first_index(repacked[name] != tensor))
        bounds = self.code_range()
        if bounds is not None:
            low, high = bounds
            bad = (q.codes < low) | (q.codes > high)
            if bad.any():
                where = _first_index(bad)
                refuse_code(self.name, int(q.codes[tuple(where)]), where, bounds)
        else:
            check_finite(q.codes, f"{self.name} stored weight")
        if q.scale.numel():
            check_scale(self.name, q.scale)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({self.name!r}{', ' + opts if opts else ''})"


class UnitCodeFormat(FormatBase):
    """A format whose codes are -1, 0 or +1 (binary: -1 or +1) times one fp16 scale per output channel."""

    def code_range(self) -> tuple[int, int]:
        return -1, 1

    def dequantize(self, q: QuantizedTensor) -> torch.Tensor:
        return q.codes.float() * q.scale.float()
