"""Checks of single settings, stored (an artifact's architecture config) or configured (``qwave bench`` keys, CLI
options): each returns the value when it is usable and otherwise raises one line naming the key and the value.

Plain Python types only: a bool is not an int, NaN and infinities are never in a range, and a whole number stored
as ``3.0`` is not an integer setting.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from qwave.errors import QwaveError

SEED_MAX = 2**32 - 1  # numpy's SeedSequence-free generators and torch.manual_seed both take 0..2**32-1 portably


def need_int(key: str, value: object, low: int | None = None, high: int | None = None,
             error: type[QwaveError] = QwaveError) -> int:
    """``value`` as an integer in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{key} must be an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise error(f"{key}={value} must be {_bounds(low, high)}")
    return value


def need_float(key: str, value: object, low: float | None = None, high: float | None = None,
               high_open: bool = False, low_open: bool = False, error: type[QwaveError] = QwaveError) -> float:
    """``value`` as a finite number in the range (``low``/``high`` inclusive unless ``*_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{key} must be a number, got {value!r}")
    value = float(value)
    bad = not math.isfinite(value)
    bad = bad or (low is not None and (value <= low if low_open else value < low))
    bad = bad or (high is not None and (value >= high if high_open else value > high))
    if bad:
        left = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        right = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = f"in {left or '(-inf'}, {right or 'inf)'}"
        raise error(f"{key}={value!r} must be a finite number {where}")
    return value


def need_choice(key: str, value: object, choices: Iterable[str], error: type[QwaveError] = QwaveError) -> str:
    """``value`` as one of ``choices``."""
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise error(f"{key}={value!r} is not one of {', '.join(choices)}")
    return value


def need_bool(key: str, value: object, error: type[QwaveError] = QwaveError) -> bool:
    if not isinstance(value, bool):
        raise error(f"{key} must be true or false, got {value!r}")
    return value


def need_keys(where: str, config: object, required: Iterable[str], optional: Iterable[str] = (),
              error: type[QwaveError] = QwaveError) -> dict:
    """``config`` as a dict holding every ``required`` key and no key outside ``required`` and ``optional``."""
    if not isinstance(config, dict):
        raise error(f"{where} must be an object, got {type(config).__name__}")
    required = list(required)
    missing = [k for k in required if k not in config]
    unknown = sorted(str(k) for k in config if k not in required and k not in set(optional))
    if missing:
        raise error(f"{where} lacks the key(s) {', '.join(missing)}")
    if unknown:
        raise error(f"{where} has unknown key(s) {', '.join(repr(k) for k in unknown)}")
    return config


def need_name(key: str, value: object, error: type[QwaveError] = QwaveError) -> str:
    """``value`` as a plain name: one path component, not absolute, no ``..``, no ``${...}`` interpolation."""
    if not isinstance(value, str) or not value.strip():
        raise error(f"{key} must be a non-empty name, got {value!r}")
    bad = ("/" in value or "\\" in value or value in (".", "..") or "${" in value or "\x00" in value
           or value != value.strip())
    if bad:
        raise error(f"{key}={value!r} must be a plain name (one folder name: no '/', no '..', no interpolation)")
    return value


def _bounds(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"between {low} and {high}"
    return f">= {low}" if low is not None else f"<= {high}"
