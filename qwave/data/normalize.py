"""Feature normalisation fitted on training rows only and stored with the model as a module."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from qwave.errors import ConfigError, DataError

EPS = 1e-12


class Normalize(nn.Module):
    """``raw``: x; ``standard``/``min_max``: (x - shift) / scale; ``l2``: x / max(||x||_2, eps) per row.

    ``shift`` and ``scale`` are float32 buffers of length d (zeros and ones for ``raw``/``l2``), so they are
    saved with the model's state; ``mode`` is a plain attribute the artifact manifest records.
    """

    MODES = ("raw", "standard", "l2", "min_max")

    def __init__(self, mode: str, shift: Tensor | None = None, scale: Tensor | None = None) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ConfigError(f"data.normalize={mode!r} is not one of {', '.join(self.MODES)}.")
        if (shift is None) != (scale is None) or (shift is None and mode in ("standard", "min_max")):
            raise ConfigError(f"data.normalize={mode!r} needs both shift and scale; use fit_normalizer.")
        shift = torch.zeros(0) if shift is None else torch.as_tensor(shift)
        scale = torch.ones(0) if scale is None else torch.as_tensor(scale)
        if shift.shape != scale.shape or shift.ndim != 1:
            raise ConfigError(
                f"data.normalize shift {tuple(shift.shape)} and scale {tuple(scale.shape)} "
                "must be equal 1-D shapes."
            )
        self.mode = mode
        self.register_buffer("shift", shift.detach().to(torch.float32).clone())
        self.register_buffer("scale", scale.detach().to(torch.float32).clone())

    @classmethod
    def placeholder(cls, dim: int, mode: str = "raw") -> Normalize:
        """Width-``dim`` statistics of the identity (zeros, ones): a fresh model's default, or the skeleton a loaded
        artifact's saved buffers overwrite."""
        return cls(mode, torch.zeros(dim), torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "raw":
            return x
        if self.mode == "l2":
            return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)
        return (x - self.shift) / self.scale

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, features={self.shift.numel()}"


def fit_normalizer(X: np.ndarray, mode: str) -> Normalize:
    """Fit ``mode`` on the rows of ``X`` (pass training rows only); a constant column gets scale 1."""
    if mode not in Normalize.MODES:
        raise ConfigError(f"data.normalize={mode!r} is not one of {', '.join(Normalize.MODES)}.")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise DataError(f"cannot fit data.normalize={mode!r} on features of shape {X.shape}; need [rows, d].")
    shift, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
    constant = X.min(axis=0) == X.max(axis=0)
    if mode == "standard":
        shift, scale = X.mean(axis=0), X.std(axis=0)
    elif mode == "min_max":
        shift, scale = X.min(axis=0), X.max(axis=0) - X.min(axis=0)
    scale = np.where(constant, 1.0, scale)
    return Normalize(mode, torch.from_numpy(shift), torch.from_numpy(scale))
