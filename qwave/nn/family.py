"""Model families: the classes an artifact may hold, each registered by the module where it lives.

A family names its class (``config() -> dict``, classmethod ``from_config(cfg)``: ``qwave.artifact`` saves and
rebuilds it), ``size_model(spec, plan)``, the packed model with random weights ``qwave size`` measures (``plan``: a
``qwave.formats.QuantPlan``), and ``kind``, the ``"module:function"`` of its benchmark kind,
imported only when a benchmark names the family. A model with ``active_bytes(report) -> int`` reports the bytes
one inference touches. Built-in families are imported on first use, so loading an artifact imports the model's
own module and nothing above it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from qwave.errors import ArtifactError


@dataclass(frozen=True)
class ModelFamily:
    """One model family (see the module docstring)."""

    name: str
    cls: type
    size_model: Callable | None = None
    kind: str | None = None


_FAMILIES: dict[str, ModelFamily] = {}
BUILTIN_FAMILIES = {"mlp": "qwave.nn.mlp", "moe": "qwave.moe.model", "recurrent_ctc": "qwave.nn.recurrent"}


def register_family(name: str, cls: type, *, size_model: Callable | None = None, kind: str | None = None) -> type:
    """Make ``cls`` the model family ``name`` (saveable; sized and trained when the hooks are given)."""
    if not (callable(getattr(cls, "config", None)) and callable(getattr(cls, "from_config", None))):
        raise ArtifactError(f"model family {name!r}: {cls.__name__} needs config() and from_config(cfg)")
    _FAMILIES[name] = ModelFamily(name, cls, size_model, kind)
    return cls


def family(name: str) -> ModelFamily | None:
    """The family registered under ``name`` (a built-in one is imported first), or None."""
    if name not in _FAMILIES and name in BUILTIN_FAMILIES:
        importlib.import_module(BUILTIN_FAMILIES[name])
    return _FAMILIES.get(name)


def family_of(model) -> ModelFamily | None:
    """The family of ``model``'s exact class, or None."""
    return next((f for f in _FAMILIES.values() if type(model) is f.cls), None)


def family_names(need: str | None = None) -> list[str]:
    """Names of every family (built-in ones imported), sorted; with ``need``, those having that hook."""
    return sorted(n for n in {*BUILTIN_FAMILIES, *_FAMILIES} if getattr(family(n), need or "name") is not None)


def resolve(hook: str) -> Callable:
    """The object a ``"module:attribute"`` hook names."""
    module, _, attr = hook.partition(":")
    return getattr(importlib.import_module(module), attr)
