"""Quantized input embeddings: store each frozen embedding as sign bits or int8 codes instead of float32.

Users keep millions of embeddings, so the bytes of one stored embedding matter as much as the model's. The
per-dimension parameters (``center``, ``scale``) are fitted on the training rows only and stored once, beside the
model (``shared_bytes``); each embedding then costs ``bytes_per_embedding``:

- ``float32``: the embedding as is, ``4 d`` bytes (the reference).
- ``int8``: ``q = clip(round((x - c) / s), -127, 127)`` with ``c = (max + min) / 2`` and ``s = (max - min) / 254``
  over the training rows, so training values reconstruct to within ``s / 2``; ``d`` bytes.
- ``sign``: one bit ``x >= c`` with ``c`` the training mean, decoded as ``c +/- s`` with ``s = mean |x - c|`` (the
  scale that minimises the squared error of a sign code); ``ceil(d / 8)`` bytes.

The model is trained and evaluated on ``decode(encode(x))``, the values a deployment would read back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qwave.errors import ConfigError, DataError

INPUT_QUANT_MODES = ("float32", "int8", "sign")
INT8_LEVELS = 127


def _check_rows(X: np.ndarray, what: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] == 0:
        raise DataError(f"input quantization needs a non-empty 2-D {what} matrix, got shape {X.shape}.")
    if not np.all(np.isfinite(X)):
        raise DataError(f"input quantization: the {what} rows hold NaN or infinite values.")
    return X


@dataclass(frozen=True)
class InputQuantizer:
    """Fitted per-dimension ``center`` and ``scale`` (float32, length d) of one input quantization ``mode``."""

    mode: str
    center: np.ndarray
    scale: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.center.shape[0])

    @property
    def bytes_per_embedding(self) -> int:
        """Stored bytes of one embedding's codes."""
        return {"float32": 4 * self.dim, "int8": self.dim, "sign": (self.dim + 7) // 8}[self.mode]

    @property
    def shared_bytes(self) -> int:
        """Bytes stored once for all embeddings: float32 center and scale (none for float32)."""
        return 0 if self.mode == "float32" else self.center.nbytes + self.scale.nbytes

    def encode(self, X: np.ndarray) -> np.ndarray:
        """Rows -> stored codes: float32 (n, d), int8 (n, d), or sign bits packed into uint8 (n, ceil(d / 8))."""
        X = _check_rows(X, "embedding")
        if X.shape[1] != self.dim:
            raise DataError(f"input quantization was fitted on {self.dim} dimensions, got {X.shape[1]}.")
        if self.mode == "float32":
            return X.copy()
        if self.mode == "int8":
            codes = np.rint((X - self.center) / self.scale)
            return np.clip(codes, -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
        return np.packbits(X >= self.center, axis=1)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Stored codes -> float32 (n, d) values the model reads."""
        if self.mode == "float32":
            return np.asarray(codes, dtype=np.float32).copy()
        if self.mode == "int8":
            return (self.center + codes.astype(np.float32) * self.scale).astype(np.float32)
        signs = np.unpackbits(codes, axis=1, count=self.dim).astype(np.float32) * 2.0 - 1.0
        return (self.center + signs * self.scale).astype(np.float32)

    def quantize(self, X: np.ndarray) -> np.ndarray:
        """``decode(encode(X))``: what a deployment storing these codes gives the model."""
        return self.decode(self.encode(X))

    def clipped_fraction(self, X: np.ndarray) -> float:
        """Share of int8 values outside the training range (clipped to +/-127); 0 for the other modes."""
        if self.mode != "int8":
            return 0.0
        X = _check_rows(X, "embedding")
        return float(np.mean(np.abs((X - self.center) / self.scale) > INT8_LEVELS + 0.5))


def fit_input_quantizer(X_train: np.ndarray, mode: str) -> InputQuantizer:
    """Fit ``mode``'s per-dimension center and scale on the training rows only (see the module docstring)."""
    if mode not in INPUT_QUANT_MODES:
        raise ConfigError(f"input quantization {mode!r} is not one of {', '.join(INPUT_QUANT_MODES)}.")
    X = _check_rows(X_train, "training")
    d = X.shape[1]
    if mode == "float32":
        return InputQuantizer(mode, np.zeros(d, np.float32), np.ones(d, np.float32))
    if mode == "int8":
        high, low = X.max(axis=0), X.min(axis=0)
        center, scale = (high + low) / 2, (high - low) / (2 * INT8_LEVELS)
        scale = np.where(scale > 0, scale, 1.0)  # a constant dimension: code 0 decodes exactly to its center
    else:
        center = X.mean(axis=0)
        scale = np.abs(X - center).mean(axis=0)  # 0 for a constant dimension: decodes exactly to its center
    return InputQuantizer(mode, center.astype(np.float32), scale.astype(np.float32))

