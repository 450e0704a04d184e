"""Size accounting from the tensors a model actually stores: per tensor, per layer, shared storage counted once.

``report(module)`` counts every parameter and saved buffer of any ``nn.Module`` (Linear, Embedding, Conv, GRU,
norms, packed codes and scales, normaliser statistics); bytes of storage already counted for another tensor
(tied weights) are not counted again. ``artifact_report(dir)`` reads the same numbers from a saved artifact's
safetensors header. ``size_table`` is the no-training size calculator behind ``qwave size``: it builds models
with random weights, quantizes and packs them, and measures the packed tensors, and the bytes the model holds in
memory once its kernels have prepared their layouts (``resident_bytes``, flagged above ``RESIDENT_LIMIT`` x
stored).

Each model family (``qwave.nn.family``) with a ``size_model`` hook is a row of the calculator. A model with a
method ``active_bytes(report) -> int`` gets its active size (bytes one inference touches, e.g. router plus top-k
experts) in the ``active_bytes`` column.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from qwave.errors import ConfigError
from qwave.formats import QuantPlan
from qwave.nn.family import family, family_names
from qwave.nn.packed_linear import PackedLinear
from qwave.nn.quant_linear import QuantLinear


@dataclass
class TensorSize:
    """One stored tensor; ``bytes`` excludes storage already counted for ``shared_with``."""

    name: str
    layer: str
    dtype: str
    numel: int
    bytes: int
    shared_with: str | None = None


@dataclass
class LayerSize:
    """Bytes and weight count of one module's own tensors."""

    layer: str
    kind: str
    format: str
    weights: int
    bytes: int


@dataclass
class SizeReport:
    """Stored bytes of a module, per tensor and per layer."""

    rows: list[TensorSize]
    layers: list[LayerSize]
    stored_bytes: int
    weight_count: int
    params: int

    @property
    def bits_per_weight(self) -> float:
        """All stored bytes x 8 / weights of the linear layers (so scales, biases and norms are paid for)."""
        return self.stored_bytes * 8 / self.weight_count if self.weight_count else float("nan")

    def bytes_under(self, prefix: str) -> int:
        """Bytes of the tensors of the module at ``prefix`` and its submodules (``""``: everything)."""
        if not prefix:
            return self.stored_bytes
        return sum(r.bytes for r in self.rows if r.layer == prefix or r.layer.startswith(prefix + "."))


def _uncovered(intervals: list[tuple[int, int, str]], start: int, end: int) -> tuple[int, str | None]:
    """Bytes of ``[start, end)`` not inside any of ``intervals``, and the name of the first one it overlaps."""
    cuts = sorted((max(s, start), min(e, end)) for s, e, _ in intervals if s < end and e > start)
    covered, reach = 0, start
    for s, e in cuts:
        covered += max(0, e - max(s, reach))
        reach = max(reach, e)
    owner = next((n for s, e, n in intervals if s < end and e > start), None)
    return end - start - covered, owner


def report(module: nn.Module) -> SizeReport:
    """Per-tensor and per-layer stored bytes of ``module`` (parameters and saved buffers)."""
    storages: dict[int, list[tuple[int, int, str]]] = {}
    rows: list[TensorSize] = []
    # Held to the end: a released layer's ``packed`` then returns these same re-derived tensors (one storage each).
    state = module.state_dict(keep_vars=True)
    for name, tensor in state.items():
        size = tensor.numel() * tensor.element_size()
        start = tensor.storage_offset() * tensor.element_size()
        intervals = storages.setdefault(tensor.untyped_storage().data_ptr(), [])
        new_bytes, owner = _uncovered(intervals, start, start + size) if size else (0, None)
        intervals.append((start, start + size, name))
        dtype = str(tensor.dtype).removeprefix("torch.")
        rows.append(TensorSize(name, name.rpartition(".")[0], dtype, tensor.numel(), new_bytes, owner))
    modules = dict(module.named_modules(remove_duplicate=False))
    weight_keys: set[tuple] = set()
    weight_count, params = 0, 0
    layers: dict[str, LayerSize] = {}
    for row in rows:
        sub = modules.get(row.layer)
        entry = layers.get(row.layer)
        if entry is None:
            shape = (sub.out_features, sub.in_features) if isinstance(sub, (nn.Linear, PackedLinear)) else None
            weights = 0
            if shape is not None:
                ref = sub.weight if isinstance(sub, nn.Linear) else next(iter(sub.packed.values()))
                key = (ref.untyped_storage().data_ptr(), ref.storage_offset(), shape)
                weights = 0 if key in weight_keys else shape[0] * shape[1]
                weight_keys.add(key)
            fmt = sub.fmt.name if isinstance(sub, (PackedLinear, QuantLinear)) else "-"
            entry = layers[row.layer] = LayerSize(row.layer, type(sub).__name__, fmt, weights, 0)
            weight_count += weights
            if isinstance(sub, PackedLinear):
                params += weights + (0 if sub.bias is None else sub.bias.numel())
        entry.bytes += row.bytes
        if not isinstance(sub, PackedLinear) and row.shared_with is None:
            params += row.numel
    stored = sum(r.bytes for r in rows)
    return SizeReport(rows, list(layers.values()), stored, weight_count, params)


RESIDENT_LIMIT = 1.1  # resident weight bytes above this multiple of the stored bytes are flagged in every report


def prepare_kernels(module: nn.Module, device: torch.device | str = "cpu") -> None:
    """Prepare every packed layer's kernel layout, as the first forward that reaches it does, so that
    ``resident_bytes`` reads what the model holds once each layer has run (layers a forward skips, such as
    unrouted experts, included)."""
    for m in module.modules():
        if isinstance(m, PackedLinear):
            m.prepare_kernel(device)


def resident_fields(resident: int, stored: int) -> dict:
    """``resident_bytes``, ``resident_vs_stored`` and ``resident_flag`` (``"over 1.1x"`` above ``RESIDENT_LIMIT``,
    else empty): the columns every size and speed report carries."""
    ratio = resident / stored if stored else float("nan")
    return {"resident_bytes": int(resident), "resident_vs_stored": ratio,
            "resident_flag": f"over {RESIDENT_LIMIT}x" if ratio > RESIDENT_LIMIT else ""}


def resident_bytes(module: nn.Module) -> int:
    """Weight bytes ``module`` holds in memory now: every parameter and buffer (saved or not; each storage once)
    plus the copies the fast kernels prepared for its packed layers.

    Measured, not derived from the format: call it after the first forward (or ``prepare_kernels``), when the
    kernels have prepared their layouts. A layer whose kernel inverts its layout holds only that layout (its
    packed buffers are released), so resident and stored bytes differ only by the layout's padding and its float32
    scales; a layer that keeps its buffers and a kernel copy (the weight-only float option) holds both.
    """
    seen: set[int] = set()
    total = 0
    for tensor in (*module.parameters(), *module.buffers()):
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total + sum(m.kernel_cached_bytes for m in module.modules() if isinstance(m, PackedLinear))


@dataclass
class ArtifactSize:
    """Sizes read from an artifact directory: tensor data, safetensors header and manifest, and the file."""

    directory: Path
    stored_bytes: int
    header_bytes: int
    manifest_bytes: int
    file_bytes: int
    weight_count: int
    rows: list[TensorSize] = field(default_factory=list)

    @property
    def bits_per_weight(self) -> float:
        return self.stored_bytes * 8 / self.weight_count if self.weight_count else float("nan")


def artifact_report(directory: str | Path) -> ArtifactSize:
    """Stored bytes of a saved artifact from its (checked) safetensors header offsets, plus header and manifest
    bytes."""
    from qwave.artifact import MANIFEST, WEIGHTS, inspect_artifact

    directory = Path(directory)
    manifest, header_bytes, entries = inspect_artifact(directory)
    rows = []
    for name, info in entries.items():
        begin, end = info["data_offsets"]
        rows.append(TensorSize(name, name.rpartition(".")[0], info["dtype"], math.prod(info["shape"]), end - begin))
    weights = sum(spec["shape"][0] * spec["shape"][1] for spec in manifest["layers"].values())
    return ArtifactSize(
        directory=directory,
        stored_bytes=sum(r.bytes for r in rows),
        header_bytes=header_bytes,
        manifest_bytes=os.path.getsize(directory / MANIFEST),
        file_bytes=os.path.getsize(directory / WEIGHTS),
        weight_count=weights,
        rows=rows,
    )


@dataclass
class SizeSpec:
    """Shape of the models the size calculator builds (random weights drawn from ``seed``)."""

    in_dim: int = 1536
    num_classes: int = 50
    hidden: tuple[int, ...] = (640, 320)
    seed: int = 0


def size_table(
    spec: SizeSpec, plans: Sequence[QuantPlan], *, models: Sequence[str] = ("mlp",), per_layer: bool = False
) -> list[dict]:
    """One row per model x plan, measured on the packed model (``mixed[...]`` rows for per-layer plans); with
    ``per_layer``, each row carries its per-layer breakdown under ``layers``."""
    unknown = [m for m in models if getattr(family(m), "size_model", None) is None]
    if unknown:
        known = ", ".join(family_names(need="size_model"))
        raise ConfigError(f"--models: unknown model {unknown[0]!r}; known: {known}")
    fp32 = QuantPlan(("fp32",))
    rows = []
    for model_name in models:
        build = family(model_name).size_model
        baseline = None
        for plan in [fp32, *[p for p in plans if p.formats != fp32.formats]]:
            torch.manual_seed(spec.seed)
            packed = build(copy.deepcopy(spec), plan)
            rep = report(packed)
            if plan is fp32:
                baseline = rep.stored_bytes
                if all(p.formats != fp32.formats for p in plans):
                    continue
            active = packed.active_bytes(rep) if hasattr(packed, "active_bytes") else rep.stored_bytes
            prepare_kernels(packed)
            row = {
                "model": model_name,
                "format": f"mixed[{','.join(plan.formats)}]" if plan.per_layer else plan.formats[0],
                "bits_per_weight": rep.bits_per_weight,
                "params": rep.params,
                "weights": rep.weight_count,
                "stored_bytes": rep.stored_bytes,
                "active_bytes": int(active),
                "kb": rep.stored_bytes / 1e3,
                "mb": rep.stored_bytes / 1e6,
                "reduction_vs_fp32": baseline / rep.stored_bytes,
                **resident_fields(resident_bytes(packed), rep.stored_bytes),
            }
            if per_layer:
                row["layers"] = [vars(layer).copy() for layer in rep.layers]
                row["tensors"] = [vars(t).copy() for t in rep.rows]
            rows.append(row)
    return rows
