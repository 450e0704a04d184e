"""Model families: the classes an artifact may hold, each registered by the module where it lives.

A family names its class (``config() -> dict`` and classmethod ``from_config(cfg)``, so ``qwave.artifact`` can
save and rebuild it), ``size_model(spec, fmt) -> nn.Module``, the *packed* model with random weights the
``qwave size`` calculator measures (``fmt`` is ``"mixed"`` when ``spec.layer_formats`` is set), and ``kind``,
the ``"module:function"`` giving the benchmark's training kind for the family's name (imported only when a
benchmark names it). A model with a method ``active_bytes(report) -> int`` reports the bytes one inference
touches. The built-in families' modules are imported on demand, so loading an artifact imports the model's own
module and nothing above it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from qwave.errors import ArtifactError


@dataclass(frozen=True)
class ModelFamily:
    """One model family: its class, its size-calculator builder and its benchmark kind (see the module docstring)."""

    name: str
    cls: type
    size_model: Callable[..., nn.Module] | None = None
    kind: str | None = None


_FAMILIES: dict[str, ModelFamily] = {}
# Where the built-in families register themselves; ``family`` imports the module on first use of the name.
BUILTIN_FAMILIES = {"mlp": "qwave.nn.mlp", "moe": "qwave.moe.model", "recurrent_ctc": "qwave.nn.recurrent"}


def register_family(
    name: str, cls: type, *, size_model: Callable[..., nn.Module] | None = None, kind: str | None = None
) -> type:
    """Make ``cls`` a model family under ``name`` (saveable, and sized / trained when the hooks are given)."""
    if not (callable(getattr(cls, "config", None)) and callable(getattr(cls, "from_config", None))):
        raise ArtifactError(f"model family {name!r}: {cls.__name__} needs config() and from_config(cfg)")
    _FAMILIES[name] = ModelFamily(name, cls, size_model, kind)
    return cls


def family(name: str) -> ModelFamily | None:
    """The family registered under ``name`` (a built-in one is imported first), or None."""
    if name not in _FAMILIES and name in BUILTIN_FAMILIES:
        importlib.import_module(BUILTIN_FAMILIES[name])
    return _FAMILIES.get(name)


def family_of(model: nn.Module) -> ModelFamily | None:
    """The family whose class ``model`` is an instance of (exact type), or None."""
    return next((f for f in _FAMILIES.values() if type(model) is f.cls), None)


def family_names(need: str | None = None) -> list[str]:
    """Names of every family (the built-in ones imported), sorted; with ``need``, only those having that hook."""
    for name in BUILTIN_FAMILIES:
        family(name)
    return sorted(n for n, f in _FAMILIES.items() if need is None or getattr(f, need) is not None)


def registered_names() -> list[str]:
    """Names registered so far, without importing anything (for error messages)."""
    return sorted(set(_FAMILIES) | set(BUILTIN_FAMILIES))


def resolve(spec: str) -> Callable:
    """The object a ``"module:attribute"`` hook names."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)
