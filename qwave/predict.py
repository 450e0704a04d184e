"""Deploying a saved artifact: ``qwave.load(path)`` -> a :class:`Classifier` with ``predict`` / ``predict_proba``.

The classifier runs the packed artifact itself (its fast kernels, the normaliser saved with it) on NumPy rows, in
batches, without gradients: through the fused whole-model path when the model fuses (``nn.fused.deployed``; the
same logits bit for bit), the path ``qwave speed``'s fused rows time. Non-finite logits (a corrupted or mis-built
artifact, inputs far outside the training range in a low-bit model) are an error, never a number.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qwave import artifact
from qwave.errors import ArtifactError, DataError
from qwave.nn.fused import FusedMLP, deployed


class Classifier:
    """A loaded artifact as a classifier over embedding rows ``X`` (float array ``[n, in_features]``)."""

    def __init__(self, model: nn.Module, classes: list[str] | None, manifest: dict, batch_size: int = 4096):
        self.model = model.eval()
        self.manifest = manifest
        self.batch_size = batch_size
        self.in_features: int | None = getattr(model, "in_dim", None)
        self.classes = list(classes) if classes else [str(i) for i in range(int(getattr(model, "num_classes", 0)))]
        self._forward: Callable[[torch.Tensor], torch.Tensor] | None = None  # nn.fused.deployed, built on first use

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits for a tensor, as the underlying ``nn.Module`` gives them."""
        return self.model(x)

    def _rows(self, X: np.ndarray) -> torch.Tensor:
        X = np.asarray(X)
        if X.ndim == 1:
            X = X[None]
        if X.ndim != 2 or not np.issubdtype(X.dtype, np.number):
            raise DataError(f"inputs must be a numeric 2-D array [rows, features], got shape {X.shape} of {X.dtype}")
        if self.in_features is not None and X.shape[1] != self.in_features:
            raise DataError(f"the model takes {self.in_features} features per row, the inputs have {X.shape[1]}")
        if not np.isfinite(X).all():
            bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
            raise DataError(f"inputs hold NaN or infinite values (row {bad[0]} first, {len(bad)} rows in all)")
        return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))

    def logits(self, X: np.ndarray) -> np.ndarray:
        """float32 logits ``[n, classes]``; an error when any is NaN or infinite."""
        rows = self._rows(X)
        if self._forward is None or (isinstance(self._forward, FusedMLP) and not self._forward.current()):
            self._forward = deployed(self.model)  # first use, or new weights loaded into ``model`` since
        with torch.inference_mode():
            out = [self._forward(rows[i : i + self.batch_size]) for i in range(0, len(rows), self.batch_size)]
        logits = torch.cat(out).float().numpy() if out else np.zeros((0, len(self.classes)), np.float32)
        if not np.isfinite(logits).all():
            bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
            raise ArtifactError(f"the artifact gave non-finite logits for {len(bad)} of {len(logits)} rows (row "
                                f"{bad[0]} first); it is corrupted or does not fit these inputs")
        return logits

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``[n, classes]`` (softmax of the logits), columns in ``classes`` order."""
        logits = self.logits(X)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The most probable class name of each row."""
        return np.asarray(self.classes, dtype=object)[self.logits(X).argmax(axis=1)]


def load(path: str | Path) -> Classifier:
    """The artifact at ``path`` as a :class:`Classifier` (``.model`` is the packed ``nn.Module``)."""
    model = artifact.load(path)
    return Classifier(model, model.classes, model.manifest)
