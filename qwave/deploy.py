"""Deploying a saved artifact: ``qwave.load(path)`` -> a :class:`Classifier` with ``predict`` / ``predict_proba``.

The classifier runs the packed artifact itself (its fast kernels, the normaliser saved with it) on NumPy rows, in
batches, without gradients: through the fused whole-model path when the model fuses (``nn.fused.deployed``; the
same logits bit for bit), the path ``qwave speed``'s fused rows time. Non-finite logits (a corrupted or mis-built
artifact, inputs far outside the training range in a low-bit model) are an error, never a number.

Inputs: a pandas DataFrame is taken by column name when the artifact records its feature names (any column order;
a missing or an extra column is an error naming them); a bare array must have exactly the model's width, its
columns in the training order. Inputs must be real numbers within the float32 range the model computes in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from qwave import artifact
from qwave.errors import ArtifactError, DataError
from qwave.eval.timing import predict_logits
from qwave.nn.fused import FusedMLP, deployed

log = logging.getLogger(__name__)
FLOAT32_MAX = float(np.finfo(np.float32).max)


class Classifier:
    """A loaded artifact as a classifier over embedding rows ``X`` (float array ``[n, in_features]``)."""

    def __init__(self, model: nn.Module, classes: list[str] | None, manifest: dict, batch_size: int = 4096):
        self.model = model.eval()
        self.manifest = manifest
        self.batch_size = batch_size
        self.in_features: int | None = getattr(model, "in_dim", None)
        self.feature_names: list[str] | None = manifest.get("features")
        self.classes = list(classes) if classes else [str(i) for i in range(int(getattr(model, "num_classes", 0)))]
        self._forward: Callable[[torch.Tensor], torch.Tensor] | None = None  # nn.fused.deployed, built on first use

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits for a tensor, as the underlying ``nn.Module`` gives them."""
        return self.model(x)

    def _columns(self, frame: pd.DataFrame) -> np.ndarray:
        """A DataFrame's feature columns, by name when the artifact records them (see the module docstring)."""
        if self.feature_names is None:
            log.warning("note: the artifact records no feature names (saved by an older qwave); the DataFrame's "
                        "columns are taken in their order")
            return frame.to_numpy()
        columns = [str(c) for c in frame.columns]
        missing = [n for n in self.feature_names if n not in columns]
        extra = [c for c in columns if c not in set(self.feature_names)]
        if missing or extra:
            raise DataError(f"the model takes the {len(self.feature_names)} feature columns it was trained on; the "
                            f"inputs lack {missing[:5]} and have extra columns {extra[:5]}")
        return frame.set_axis(columns, axis=1)[self.feature_names].to_numpy()

    def _rows(self, X: np.ndarray | pd.DataFrame) -> torch.Tensor:
        X = self._columns(X) if isinstance(X, pd.DataFrame) else np.asarray(X)
        if X.ndim == 1:
            X = X[None]
        if X.ndim != 2 or X.dtype.kind not in "biuf":
            raise DataError(f"inputs must be a real-valued 2-D array [rows, features], got shape {X.shape} of "
                            f"{X.dtype}")
        if self.in_features is not None and X.shape[1] != self.in_features:
            raise DataError(f"the model takes {self.in_features} features per row, the inputs have {X.shape[1]}")
        if not np.isfinite(X).all():
            bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
            raise DataError(f"inputs hold NaN or infinite values (row {bad[0]} first, {len(bad)} rows in all)")
        if X.dtype.kind == "f" and X.dtype.itemsize > 4 and X.size and np.abs(X).max() > FLOAT32_MAX:
            bad = np.flatnonzero((np.abs(X) > FLOAT32_MAX).any(axis=1))
            raise DataError(f"inputs hold values beyond the float32 range the model computes in (|x| > 3.4e38; row "
                            f"{bad[0]} first, {len(bad)} rows in all)")
        return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))

    def logits(self, X: np.ndarray) -> np.ndarray:
        """float32 logits ``[n, classes]``; an error when any is NaN or infinite."""
        rows = self._rows(X)
        if self._forward is None or (isinstance(self._forward, FusedMLP) and not self._forward.current()):
            self._forward = deployed(self.model)  # first use, or new weights loaded into ``model`` since
        out = predict_logits(self._forward, rows, self.batch_size)
        logits = out.float().numpy() if len(rows) else np.zeros((0, len(self.classes)), np.float32)
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


def load(path: str | Path, allow_unverified: bool = False) -> Classifier:
    """The artifact at ``path`` as a :class:`Classifier` (``.model`` is the packed ``nn.Module``);
    ``allow_unverified`` reads a format-version-1 artifact, which carries no checksums."""
    model = artifact.load(path, allow_unverified=allow_unverified)
    return Classifier(model, model.classes, model.manifest)
