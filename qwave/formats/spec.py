"""Typed quantization settings, parsed once where user strings enter (CLI, config, artifact manifest).

``FormatSpec``: one format under its canonical name with the options it takes. ``QuantPlan``: how a model is
quantized: one format for every Linear or one per Linear (mixed precision), the options applied to each format that
takes them, the last Linear kept fp32 or not, QAT or PTQ. ``QuantPlan.parse`` reads the model names of ``qwave bench``
and ``qwave quantize`` (``8``, ``bitnet``, ``ptq4``, ``1-1-8``, ``ptq2-2-8``) with the model options
(``layer_formats``, ``keep_last_fp``, ``group_size``, ``weight_only``); surgery, size, MoE and the artifact loader
take the dataclasses, never the strings.

Artifacts written before an option existed mean what the format did then: ``FormatSpec.from_manifest`` fills the
missing options from ``LEGACY_OPTIONS`` (the one place that mapping lives).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache

from qwave.errors import ConfigError, FormatError
from qwave.formats.base import _REGISTRY, QuantFormat, canonical_name, get_format

Options = tuple[tuple[str, object], ...]
METHODS = ("qat", "ptq")
_SCALARS = (type(None), bool, int, float, str)

# Options formats gained after artifacts were first written, with the meaning an artifact that lacks them has:
# int2..int7 and ternary ran float activations (weight-only), int2 used three levels (-1, 0, 1), and int8
# activations were symmetric (-127..127, before the 128-level zero-point recipe).
LEGACY_OPTIONS: dict[str, dict] = {
    "int8": {"act_recipe": "symmetric"},
    **{f"int{k}": {"activations": "float", "act_recipe": "symmetric"} for k in range(3, 8)},
    "int2": {"activations": "float", "grid": "symmetric", "act_recipe": "symmetric"},
    "ternary": {"activations": "float", "act_recipe": "symmetric"},
}


def option_names(name: str) -> frozenset[str]:
    """The options the format registered under canonical ``name`` takes (e.g. ``group_size`` for integers)."""
    return frozenset(inspect.signature(_REGISTRY[name]).parameters)


def _refuse_unknown(options: dict) -> None:
    """A ConfigError naming the options that no registered format takes."""
    known = frozenset().union(*(option_names(n) for n in _REGISTRY))
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"quantization option(s) {unknown} are taken by no format; known options: {sorted(known)}")


def _options(name: str, options: dict) -> Options:
    """``options`` as a sorted tuple of scalar values (so a spec is hashable and equal specs compare equal)."""
    for key, value in options.items():
        if not isinstance(value, _SCALARS):
            raise FormatError(f"format {name!r} option {key!r} must be a number, string, bool or null; got {value!r}")
    return tuple(sorted(options.items()))


@cache
def _built(name: str, options: Options) -> QuantFormat:
    return get_format(name, **dict(options))


@dataclass(frozen=True)
class FormatSpec:
    """A format by canonical name and its options; ``build()`` makes (once per distinct spec) the format object."""

    name: str
    options: Options = ()

    @classmethod
    def parse(cls, value: str | int, **options) -> FormatSpec:
        """The spec of a user's format name or alias (``"4"``, ``"bitnet"``) with the ``options`` it takes; options
        another format takes are dropped (an fp32 last layer has no groups), options no format takes refused."""
        name = canonical_name(value)
        _refuse_unknown(options)
        taken = option_names(name)
        return cls(name, _options(name, {k: v for k, v in options.items() if k in taken}))

    @classmethod
    def from_manifest(cls, name: str, options: dict) -> FormatSpec:
        """The spec an artifact manifest names: its stored ``options``, and for the options it lacks the meaning
        they had when it was written (``LEGACY_OPTIONS``), never today's defaults. Every stored option is kept:
        one the format does not take fails in ``build``."""
        key = canonical_name(name)
        return cls(key, _options(key, {**LEGACY_OPTIONS.get(key, {}), **options}))

    def build(self) -> QuantFormat:
        """The format object (shared by every layer of this spec: formats hold no per-layer state)."""
        return _built(self.name, self.options)


FP32 = FormatSpec("fp32")


@dataclass(frozen=True)
class QuantPlan:
    """How a model is quantized: ``formats`` (canonical names) for every Linear (one name) or one per Linear
    (``per_layer``), each with the ``options`` its format takes, the last Linear fp32 when ``keep_last_fp``,
    trained quantized (``qat``) or quantized after training (``ptq``). A plan without formats (an MoE's) gives its
    options to parts that name their own format (``with_format``)."""

    formats: tuple[str, ...]
    options: Options = ()
    keep_last_fp: bool = False
    per_layer: bool = False
    method: str = "qat"

    @classmethod
    def parse(
        cls, model: str | int | None, *, layer_formats: Sequence | None = None, keep_last_fp: bool = False,
        group_size: int | None = None, weight_only: bool = False, **options,
    ) -> QuantPlan:
        """The plan of a model name (``8``, ``ptq4``, ``1-1-8``; None: no format) and the model options:
        ``layer_formats`` (one per Linear) unless the name is itself mixed, ``group_size`` when set, ``weight_only``
        as the formats' option ``activations="float"``, other format ``options`` (``grid``) as given. An unknown
        format is a FormatError naming it."""
        if group_size:
            options["group_size"] = group_size
        if weight_only:
            options["activations"] = "float"
        _refuse_unknown(options)
        key = "" if model is None else str(model).strip()
        method = "ptq" if key.lower().startswith("ptq") else "qat"
        body = key[3:] if method == "ptq" else key
        names = body.split("-") if "-" in body else layer_formats
        formats = tuple(canonical_name(n) for n in (names or ([] if model is None else [body])))
        return cls(formats, _options("plan", options), bool(keep_last_fp), bool(names), method)

    def with_format(self, fmt: str | int) -> QuantPlan:
        """This plan with every Linear in ``fmt`` (an MoE expert, a probe, a size row)."""
        return replace(self, formats=(canonical_name(fmt),), per_layer=False)

    def spec(self, name: str) -> FormatSpec:
        """The spec of format ``name`` with the plan's options it takes."""
        return FormatSpec.parse(name, **dict(self.options))

    @property
    def default(self) -> FormatSpec:
        """The spec of the first format: every Linear's unless ``per_layer``."""
        if not self.formats:
            raise ConfigError("this quantization plan names no format; give one per expert or layer")
        return self.spec(self.formats[0])

    @property
    def label(self) -> str:
        """The canonical name, or the per-layer names joined by ``-`` (``binary-binary-int8``)."""
        return "-".join(self.formats)

    def layer_specs(self, n_layers: int) -> list[FormatSpec]:
        """One spec per Linear of a model with ``n_layers`` of them, the last fp32 when ``keep_last_fp``."""
        if self.per_layer and len(self.formats) != n_layers:
            raise ConfigError(f"model.layer_formats has {len(self.formats)} entries {list(self.formats)} but the "
                              f"model has {n_layers} Linear layers; give one format per layer")
        specs = [self.spec(n) for n in self.formats] if self.per_layer else [self.default] * n_layers
        if self.keep_last_fp and specs:
            specs[-1] = FP32
        return specs
