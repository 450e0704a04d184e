"""Brute-force references for the kernels, written apart from them: NumPy int64 dot products element by element
(no BLAS), then the float32 epilogue in the order the recipes document."""

from __future__ import annotations

import numpy as np


def int8_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row activation codes less their zero point (int64) and float32 scales: ``lo = min(x, 0)``, ``hi = max(x,
    0)``, ``s = (hi - lo) / 127``, ``z = clip(rint(-lo / s), 0, 127)``, ``q = clip(rint(x / s) + z, 0, 127)``; all 0
    where ``s == 0``."""
    lo = np.minimum(x.min(axis=1), np.float32(0))
    hi = np.maximum(x.max(axis=1), np.float32(0))
    s = ((hi - lo) / np.float32(127)).astype(np.float32)
    live = s > 0
    safe = np.where(live, s, np.float32(1)).astype(np.float32)
    z = np.where(live, np.clip(np.rint(-lo / safe), 0, 127), 0)
    q = np.where(live[:, None], np.clip(np.rint(x / safe[:, None]) + z[:, None], 0, 127), 0)
    return (q - z[:, None]).astype(np.int64), s


def int_dots(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``a [m, n] . w [o, n]`` in int64, summed element by element."""
    return (a.astype(np.int64)[:, None, :] * w.astype(np.int64)[None, :, :]).sum(-1)


ACTS = {"none": 0, "relu": 1, "hardtanh": 2}  # the kernels' activation codes, spelled out apart from them


def epilogue(y: np.ndarray, bias: np.ndarray | None, act: str = "none") -> np.ndarray:
    """Bias, then ``act``: ``relu`` (``max(y, 0)``), ``hardtanh`` (``clip(y, -1, 1)``) or ``none``."""
    if bias is not None and bias.size:
        y = (y + bias).astype(np.float32)
    if act == "relu":
        return np.where(y < 0, np.float32(0), y)
    return np.clip(y, np.float32(-1), np.float32(1)) if act == "hardtanh" else y


def wa8(x: np.ndarray, codes: np.ndarray, scale: np.ndarray, group_size: int | None, bias=None, act="none"):
    """The W·A8 recipe: ``y = s_x * sum_g(float32(dot_g) * s_w[:, g])`` with exact integer ``dot_g``."""
    q, s = int8_activations(x)
    n = codes.shape[1]
    size = n if group_size is None else min(group_size, n)
    y = np.zeros((x.shape[0], codes.shape[0]), np.float32)
    for g in range(scale.shape[1]):
        cols = slice(g * size, (g + 1) * size)
        y = (y + int_dots(q[:, cols], codes[:, cols]).astype(np.float32) * scale[:, g].astype(np.float32))
    return epilogue((y * s[:, None]).astype(np.float32), bias, act)


def variants() -> list[str]:
    """ISA variants to test: ``avx2`` always (it runs on every AVX2 CPU), plus the one this CPU picks."""
    from qwave.kernels import int8

    return sorted({"avx2", int8.ISA})
