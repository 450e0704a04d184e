"""What an exporter reads from an artifact: a plain, framework-free description of a packed MLP.

``read_model(path)`` loads the artifact through ``qwave.artifact.load`` (so a damaged artifact fails with the same
``ArtifactError`` line as loading it) and walks the classifier into the normaliser, then a list of steps: packed
linear layers (the format, its stored tensors as NumPy arrays in qwave's layout, the bias), activations and layer
norms. Only the ``mlp`` architecture exports; others are refused in one line that names what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qwave import artifact
from qwave.data.normalize import EPS, Normalize
from qwave.errors import QwaveError
from qwave.nn.mlp import MLPClassifier
from qwave.nn.packed_linear import PackedLinear
from qwave.size import artifact_report

# Architectures that load but have no exporter yet, and what an exporter would need for them.
MISSING = {
    "moe": "a mixture-of-experts exporter (router, top-k selection and per-expert formats)",
    "recurrent_ctc": "a recurrent exporter (GRU cells, the time loop and CTC decoding)",
}


class ExportError(QwaveError):
    """An artifact, format or option the exporters cannot turn into the requested target."""


@dataclass
class Linear:
    """One packed layer: ``fmt`` (a qwave format object), its stored tensors by name and the float32 bias."""

    fmt: object
    packed: dict[str, np.ndarray]
    shape: tuple[int, int]  # (out, in)
    bias: np.ndarray | None

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]


@dataclass
class Activation:
    kind: str  # "relu" or "hardtanh" (clamp to [-1, 1])


@dataclass
class LayerNorm:
    weight: np.ndarray
    bias: np.ndarray
    eps: float


@dataclass
class Norm:
    """The stored normaliser: ``raw``, ``standard`` / ``min_max`` ((x - shift) / scale) or ``l2``."""

    mode: str
    shift: np.ndarray
    scale: np.ndarray
    eps: float = EPS


@dataclass
class ExportModel:
    """A packed MLP as the exporters read it."""

    in_features: int
    classes: list[str]
    norm: Norm
    steps: list = field(default_factory=list)
    stored_bytes: int = 0  # the artifact's tensor bytes (model.safetensors without its header)
    file_bytes: int = 0  # model.safetensors + manifest.json on disk

    @property
    def linears(self) -> list[Linear]:
        return [s for s in self.steps if isinstance(s, Linear)]

    @property
    def format_names(self) -> list[str]:
        return [s.fmt.name for s in self.linears]


def _array(t) -> np.ndarray:
    """A tensor's values as a NumPy array; bfloat16 (no NumPy dtype) as its uint16 bit patterns."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return np.ascontiguousarray(t.view(torch.int16).numpy().view(np.uint16))
    return np.ascontiguousarray(t.numpy())


def _step(module: nn.Module, where: str):
    if isinstance(module, PackedLinear):
        if getattr(module.fmt, "activations", None) == "int8" and module.fmt.act_recipe != "zero_point":
            raise ExportError(f"{where}: {module.fmt.name} was saved with the earlier symmetric 8-bit activations "
                              "(act_recipe 'symmetric'), which the exporters do not implement; quantize or train it "
                              "again with this qwave")
        bias = None if module.bias is None else _array(module.bias.float())
        packed = {name: _array(t) for name, t in module.packed.items()}
        return Linear(module.fmt, packed, tuple(module.shape), bias)
    if isinstance(module, nn.ReLU):
        return Activation("relu")
    if isinstance(module, nn.Hardtanh):
        if (module.min_val, module.max_val) != (-1.0, 1.0):
            raise ExportError(f"{where}: Hardtanh({module.min_val}, {module.max_val}) is not exportable (only [-1, 1])")
        return Activation("hardtanh")
    if isinstance(module, nn.LayerNorm):
        return LayerNorm(_array(module.weight.float()), _array(module.bias.float()), float(module.eps))
    if isinstance(module, (nn.Dropout, nn.Identity)):
        return None
    raise ExportError(f"{where}: module {type(module).__name__} has no exporter")


def read_model(path: str | Path) -> ExportModel:
    """The artifact at ``path`` as an ``ExportModel``; an ``ArtifactError`` exactly as ``qwave.load`` gives it for a
    damaged artifact, an ``ExportError`` for an architecture without an exporter."""
    path = Path(path)
    model = artifact.load(path)
    name = model.manifest["architecture"]["name"]
    if not isinstance(model, MLPClassifier):
        need = MISSING.get(name, f"an exporter for the {name!r} architecture")
        raise ExportError(f"{path}: the {name!r} architecture does not export yet; it needs {need}")
    norm: Normalize = model.norm
    steps = [s for i, m in enumerate(model.body) if (s := _step(m, f"{path}: body.{i}")) is not None]
    classes = list(model.classes) if model.classes else [str(i) for i in range(model.num_classes)]
    sizes = artifact_report(path)
    return ExportModel(
        in_features=model.in_dim, classes=classes,
        norm=Norm(norm.mode, _array(norm.shift.float()), _array(norm.scale.float())),
        steps=steps, stored_bytes=sizes.stored_bytes, file_bytes=sizes.file_bytes + sizes.manifest_bytes)
