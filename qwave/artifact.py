"""Saved models: ``model.safetensors`` (the packed tensors, no pickle) plus ``manifest.json``.

The manifest names the architecture (a registered class with ``config()`` and ``from_config(cfg)``), lists every
packed layer (module path, format, format options, shape, bias), the normalisers (mode and the tensors holding
their train-split statistics) and every stored tensor, and carries the class
names, the run config and free ``extra`` data. ``load`` rebuilds the skeleton from the config, puts PackedLinear
layers at the listed paths and loads the tensors strictly, so the loaded model runs from the packed bytes.

Storage shared by several state entries (tied weights) is stored once; the manifest's ``aliases`` maps the
other names to the stored one and ``load`` ties them again.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from qwave import __version__
from qwave.data.normalize import Normalize
from qwave.errors import ArtifactError, FormatError
from qwave.formats.base import format_from_manifest
from qwave.nn.mlp import MLPClassifier
from qwave.nn.packed_linear import PackedLinear

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1  # bump on an incompatible change of the manifest or tensor layout

_ARCHITECTURES: dict[str, type] = {}
# Built-in architectures registered by modules that ``import qwave`` does not load; load() imports them on demand.
BUILTIN_ARCHITECTURES = {"moe": "qwave.moe.bench", "recurrent_ctc": "qwave.nn.recurrent"}


def register_architecture(name: str, cls: type) -> type:
    """Make ``cls`` (with ``config() -> dict`` and classmethod ``from_config(cfg)``) saveable under ``name``."""
    if not (callable(getattr(cls, "config", None)) and callable(getattr(cls, "from_config", None))):
        raise ArtifactError(f"architecture {name!r}: {cls.__name__} needs config() and from_config(cfg)")
    _ARCHITECTURES[name] = cls
    return cls


register_architecture("mlp", MLPClassifier)


def _architecture_name(model: nn.Module) -> str:
    for name, cls in _ARCHITECTURES.items():
        if type(model) is cls:
            return name
    raise ArtifactError(
        f"cannot save a {type(model).__name__}: register its class with qwave.artifact.register_architecture "
        f"(registered: {', '.join(sorted(_ARCHITECTURES))})"
    )


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def _tensors_and_aliases(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State entries to store (contiguous CPU copies) and aliases of entries sharing one tensor's storage."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple, str] = {}
    for name, tensor in model.state_dict().items():
        key = _storage_key(tensor)
        if key in first:
            aliases[name] = first[key]
            continue
        first[key] = name
        tensors[name] = tensor.detach().cpu().contiguous().clone()
    return tensors, aliases


def save(
    model: nn.Module,
    directory: str | Path,
    *,
    classes: list[str] | None = None,
    config: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``model`` (packed, see ``qwave.nn.surgery.pack_model``) to ``directory`` atomically; returns it.

    The files are written into a temporary directory beside the target, which then replaces the target.
    """
    directory = Path(directory)
    architecture = _architecture_name(model)
    tensors, aliases = _tensors_and_aliases(model)
    layers = {
        path: {
            "format": m.fmt.name,
            "options": m.fmt.options(),
            "shape": list(m.shape),
            "bias": m.bias is not None,
            "tensors": list(m.packed_names),
        }
        for path, m in model.named_modules()
        if isinstance(m, PackedLinear)
    }
    unpacked = [path for path, m in model.named_modules() if isinstance(m, nn.Linear)]
    if unpacked:
        raise ArtifactError(f"cannot save {directory}: layers {unpacked} are not packed; call pack_model(model) first")
    manifest = {
        "qwave_version": __version__,
        "format_version": FORMAT_VERSION,
        "architecture": {"name": architecture, "config": model.config()},
        "layers": layers,
        "normalization": {
            path: {"mode": m.mode, "tensors": [f"{path}.shift", f"{path}.scale"] if path else ["shift", "scale"]}
            for path, m in model.named_modules()
            if isinstance(m, Normalize)
        },
        "tensors": {
            name: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)} for name, t in tensors.items()
        },
        "aliases": aliases,
        "classes": None if classes is None else [str(c) for c in classes],
        "config": config,
        "extra": extra,
    }
    try:
        text = json.dumps(manifest, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise ArtifactError(f"cannot save {directory}: config/extra are not plain JSON data ({err})") from None
    if directory.exists() and any(directory.iterdir()) and not (directory / MANIFEST).is_file():
        raise ArtifactError(f"{directory} exists and is not a qwave artifact; refusing to replace it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"qwave_version": __version__})
        (tmp / MANIFEST).write_text(text, encoding="utf-8")
        old = None
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.replace(directory, old / "artifact")
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_manifest(directory: str | Path) -> dict:
    """The parsed ``manifest.json`` of an artifact directory, with clear errors for missing or bad files."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not an artifact directory (it does not exist)")
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; {directory} is not a qwave artifact")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or "architecture" not in manifest or "layers" not in manifest:
        raise ArtifactError(f"{path} lacks the 'architecture' and 'layers' entries of a qwave manifest")
    version = manifest.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has artifact format version {version!r} (written by qwave {manifest.get('qwave_version')}); "
            f"this qwave {__version__} reads up to version {FORMAT_VERSION}: upgrade qwave"
        )
    return manifest


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ArtifactError(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(f"{path} is not a readable safetensors file: {err}") from None


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, name, module)


def load(directory: str | Path) -> nn.Module:
    """Rebuild the saved model from ``directory``: packed layers from the stored bytes, eval mode, with
    ``.classes`` and ``.manifest`` set."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    arch = manifest["architecture"]
    if arch.get("name") not in _ARCHITECTURES and arch.get("name") in BUILTIN_ARCHITECTURES:
        importlib.import_module(BUILTIN_ARCHITECTURES[arch["name"]])
    cls = _ARCHITECTURES.get(arch.get("name"))
    if cls is None:
        raise ArtifactError(
            f"{directory / MANIFEST}: unknown architecture {arch.get('name')!r} "
            f"(registered: {', '.join(sorted(_ARCHITECTURES))}); import the module that registers it"
        )
    tensors = _read_tensors(directory / WEIGHTS)
    aliases = manifest.get("aliases", {})
    state = dict(tensors)
    for name, target in aliases.items():
        if target in tensors:
            state[name] = tensors[target]
    model = cls.from_config(arch["config"])
    for path, spec in manifest["layers"].items():
        try:
            model.get_submodule(path)
            fmt = format_from_manifest(spec["format"], spec.get("options", {}))
            packed = {name: state[f"{path}.{name}"] for name in spec["tensors"]}
            bias = state[f"{path}.bias"] if spec["bias"] else None
        except (AttributeError, KeyError, FormatError) as err:
            raise ArtifactError(f"{directory}: packed layer {path!r} cannot be rebuilt: {err}") from None
        _set_module(model, path, PackedLinear(fmt, packed, tuple(spec["shape"]), bias))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        summary = " ".join(str(err).split())[:400]
        raise ArtifactError(
            f"{directory / WEIGHTS} does not match the {arch['name']} model it describes: {summary}"
        ) from None
    _retie(model, aliases)
    model.eval()
    model.classes = manifest.get("classes")
    model.manifest = manifest
    return model


def _retie(model: nn.Module, aliases: dict[str, str]) -> None:
    """Make each alias entry share the stored entry's tensor again, as it did when saved."""
    for name, target in aliases.items():
        owner_path, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_path) if owner_path else model
        source_path, _, source_attr = target.rpartition(".")
        source = model.get_submodule(source_path) if source_path else model
        value = source._parameters.get(source_attr, source._buffers.get(source_attr))
        if attr in owner._parameters and isinstance(value, nn.Parameter):
            owner._parameters[attr] = value
        elif attr in owner._buffers and value is not None:
            owner._buffers[attr] = value.detach()


def find_artifacts(root: str | Path) -> list[Path]:
    """Every directory under ``root`` (itself included) that holds a ``manifest.json``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a directory")
    found = (p.parent for p in root.rglob(MANIFEST))
    return sorted(d for d in found if not any(part.startswith(".") for part in d.relative_to(root).parts))
