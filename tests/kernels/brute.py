"""Brute-force references for the kernels, written apart from them: NumPy int64 dot products element by element
(no BLAS), then the float32 epilogue in the order the recipes document."""

from __future__ import annotations

import numpy as np


def int8_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row int8 codes (int64) and float32 scales: ``s = max|x| / 127``, ``rint(x / s)`` clamped, 0 if ``s == 0``."""
    s = np.abs(x).max(axis=1) / np.float32(127)
    safe = np.where(s > 0, s, np.float32(1)).astype(np.float32)
    q = np.where(s[:, None] > 0, np.clip(np.rint(x / safe[:, None]), -127, 127), 0)
    return q.astype(np.int64), s.astype(np.float32)


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
