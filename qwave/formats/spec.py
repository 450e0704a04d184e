"""Typed quantization settings, parsed once where user strings enter (CLI, config, artifact manifest).

``FormatSpec``: a format's canonical name and the options it takes. ``QuantPlan``: a model's quantization: one
format for every Linear or one per Linear, the options (each given to the formats that take it), the last Linear
kept fp32 or not, QAT or PTQ. Surgery, size, MoE and the artifact loader take these, never the strings.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

from qwave.errors import ConfigError, FormatError
from qwave.formats.base import _REGISTRY, QuantFormat, canonical_name, get_format

Options = tuple[tuple[str, object], ...]

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
    return frozenset(inspect.signature(_REGISTRY[name]).parameters)  # e.g. group_size for the integer formats


def _options(owner: str, options: dict, user: bool = True) -> Options:
    """``options`` sorted into a tuple (specs hash and compare by value) of JSON scalars; a ``user``'s options are
    ones some format takes (a manifest's unknown option fails in ``build`` instead, as an artifact error)."""
    if user:  # every format's signature read: only where a user's options need it, not for each manifest layer
        known = frozenset().union(*map(option_names, _REGISTRY))
        if set(options) - known:
            raise ConfigError(f"quantization option(s) {sorted(set(options) - known)} are taken by no format; known "
                              f"options: {sorted(known)}")
    for key, value in options.items():
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise FormatError(f"{owner} option {key!r} must be a number, string, bool or null; got {value!r}")
    return tuple(sorted(options.items()))


@dataclass(frozen=True)
class FormatSpec:
    """A format by canonical name with its options; ``build()`` makes the format once per distinct spec."""

    name: str
    options: Options = ()

    @classmethod
    def parse(cls, value: str | int, **options) -> FormatSpec:
        """A user's format name or alias (``"4"``, ``"bitnet"``) with the ``options`` its format takes: options
        only other formats take are dropped (an fp32 last layer has no groups), options no format takes refused."""
        name = canonical_name(value)
        taken = option_names(name)
        return cls(name, tuple(kv for kv in _options(f"format {name!r}", options) if kv[0] in taken))

    @classmethod
    def from_manifest(cls, name: str, options: dict) -> FormatSpec:
        """A manifest's format: its stored ``options`` (all kept; ``build`` refuses one the format does not take),
        and for those it lacks their meaning when it was written (``LEGACY_OPTIONS``), never today's defaults."""
        key = canonical_name(name)
        return cls(key, _options(f"format {key!r}", {**LEGACY_OPTIONS.get(key, {}), **options}, user=False))

    @lru_cache(maxsize=256)  # noqa: B019  (a spec is a value: equal specs share one format; formats hold no state)
    def build(self) -> QuantFormat:
        """The format object."""
        return get_format(self.name, **dict(self.options))


@dataclass(frozen=True)
class QuantPlan:
    """``formats`` (canonical names): every Linear's, or one per Linear when ``per_layer``; ``options`` go to each
    format that takes them. A plan without formats (an MoE's) lends its options to parts naming their own format."""

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
        """A model name (``8``, ``bitnet``, ``ptq4``, ``1-1-8``, ``ptq2-2-8``; None: no format) with the model
        options: ``layer_formats`` (one per Linear) unless the name is itself mixed, ``group_size`` when set,
        ``weight_only`` as ``activations="float"``, other format ``options`` as given. An unknown format name is a
        FormatError naming it."""
        options.update({"group_size": group_size} if group_size else {})
        options.update({"activations": "float"} if weight_only else {})
        key = "" if model is None else str(model).strip()
        method = "ptq" if key.lower().startswith("ptq") else "qat"
        body = key[3:] if method == "ptq" else key
        names = body.split("-") if "-" in body else layer_formats
        formats = tuple(canonical_name(n) for n in (names or ([] if model is None else [body])))
        return cls(formats, _options("quantization", options), bool(keep_last_fp), bool(names), method)

    def with_format(self, fmt: str | int) -> QuantPlan:
        """This plan with every Linear in ``fmt`` (an MoE expert, a probe)."""
        return replace(self, formats=(canonical_name(fmt),), per_layer=False)

    @property
    def default(self) -> FormatSpec:
        """The first format's spec: every Linear's unless ``per_layer``."""
        if not self.formats:
            raise ConfigError("this quantization plan names no format; give one per expert or layer")
        return FormatSpec.parse(self.formats[0], **dict(self.options))

    def layer_specs(self, n_layers: int) -> list[FormatSpec]:
        """One spec per Linear of a model with ``n_layers`` of them, the last fp32 when ``keep_last_fp``."""
        if self.per_layer and len(self.formats) != n_layers:
            raise ConfigError(f"model.layer_formats has {len(self.formats)} entries {list(self.formats)} but the "
                              f"model has {n_layers} Linear layers; give one format per layer")
        names = list(self.formats) if self.per_layer else [self.default.name] * n_layers
        specs = [FormatSpec.parse(n, **dict(self.options)) for n in names]
        return specs[:-1] + [FormatSpec("fp32")] if self.keep_last_fp and specs else specs
