"""Saved models: ``model.safetensors`` (the packed tensors, no pickle) plus ``manifest.json``.

The manifest names the architecture (a model family of ``qwave.nn.family``: a class with ``config()`` and
``from_config(cfg)``), lists every
packed layer (module path, format, format options, shape, bias), the normalisers (mode and the tensors holding
their train-split statistics) and every stored tensor, and carries the class
names, the run config and free ``extra`` data. ``load`` rebuilds the skeleton from the config, puts PackedLinear
layers at the listed paths and loads the tensors strictly, so the loaded model runs from the packed bytes.

Storage shared by several state entries (tied weights) is stored once; the manifest's ``aliases`` maps the
other names to the stored one and ``load`` ties them again.

The manifest also records the feature names (and their order) the model was trained on, so a table is taken
by column name (``qwave.deploy``), never by position; artifacts saved before names were recorded have none.

Nothing in the files is trusted: ``load`` checks, before any kernel reads a tensor, the manifest's size and
nesting, its types and keys (unknown keys refused), its sha256 digest and each tensor's sha256 (format version 2;
version 1 files have none and are read only with ``allow_unverified=True`` and when no field of version 2 is
present, so one edit cannot turn the checks off), every stored setting of the architecture (its class's
``check_config``, before anything is built: ranges, and layer counts and sizes against the packed layers the
manifest lists, so a config cannot ask for more than the file holds), the normalisers against the model's, the
safetensors header against the manifest, every packed tensor's dtype and exact shape against its
format's layout and the architecture's own layer shapes (built on the meta device, so an enlarged shape
allocates nothing), and the values (codes in range, no padding bit set, finite floats). Any mismatch is one
``ArtifactError`` line naming the file and the entry.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from qwave import __version__
from qwave.atomic import atomic_dir, check_writable, umask
from qwave.data.normalize import Normalize
from qwave.errors import ArtifactError, FormatError, QwaveError
from qwave.formats import PackedSpec
from qwave.formats.base import non_finite
from qwave.formats.spec import FormatSpec
from qwave.nn.family import family, family_names, family_of
from qwave.nn.packed_linear import PackedLinear
from qwave.nn.surgery import set_module

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
# Bump on an incompatible change of the manifest or tensor layout. 2: sha256 of every tensor and of the manifest.
FORMAT_VERSION = 2
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header of a file
MAX_MANIFEST_BYTES = 64 * 2**20  # a manifest is a few kB to a few MB (training history); refused before reading
MAX_MANIFEST_DEPTH = 64  # nesting of JSON objects/lists; qwave writes at most ~8
MANIFEST_KEYS = ("qwave_version", "format_version", "architecture", "layers", "normalization", "tensors", "aliases",
                 "classes", "features", "config", "extra", "integrity")
LAYER_KEYS = ("format", "options", "shape", "bias", "tensors")
# safetensors dtype codes -> torch dtype names (the dtypes a qwave artifact may hold)
SAFETENSORS_DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64",
                      "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


def _architecture_name(model: nn.Module) -> str:
    found = family_of(model)
    if found is not None:
        return found.name
    raise ArtifactError(
        f"cannot save a {type(model).__name__}: register its class with qwave.nn.family.register_family "
        f"(registered: {', '.join(family_names())})"
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


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes as safetensors stores them (contiguous, native little-endian)."""
    data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(data).hexdigest()


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON without its ``integrity`` entry (which holds this digest)."""
    body = {k: v for k, v in manifest.items() if k != "integrity"}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ArtifactError(f"manifest is not plain JSON data ({err})") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save(
    model: nn.Module,
    directory: str | Path,
    *,
    classes: list[str] | None = None,
    config: dict | None = None,
    extra: dict | None = None,
    features: list[str] | None = None,
) -> Path:
    """Write ``model`` (packed, see ``qwave.nn.surgery.pack_model``) to ``directory`` atomically; returns it.

    ``features``: the names of the input columns in the order the model reads them (``Dataset.feature_names``),
    recorded so predictions take a table's columns by name. The files are written into a temporary directory
    beside the target, which then replaces the target; the directory gets the permissions the umask gives a new
    directory. A write that fails (a full disk) is one ArtifactError and leaves the previous artifact, if any.
    """
    directory = Path(directory)
    architecture = _architecture_name(model)
    features = _feature_list(features, getattr(model, "in_dim", None), f"cannot save {directory}")
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
            name: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "sha256": tensor_sha256(t)}
            for name, t in tensors.items()
        },
        "aliases": aliases,
        "classes": None if classes is None else [str(c) for c in classes],
        "features": features,
        "config": config,
        "extra": extra,
    }
    try:
        manifest["integrity"] = {"algorithm": "sha256", "manifest": manifest_digest(manifest)}
        text = json.dumps(manifest, indent=2, allow_nan=False) + "\n"
    except (ArtifactError, TypeError, ValueError) as err:
        raise ArtifactError(f"cannot save {directory}: config/extra are not plain JSON data ({err})") from None
    if directory.exists() and any(directory.iterdir()) and not (directory / MANIFEST).is_file():
        raise ArtifactError(f"{directory} exists and is not a qwave artifact; refusing to replace it")
    try:
        with atomic_dir(directory) as tmp:
            save_file(tensors, str(tmp / WEIGHTS), metadata={"qwave_version": __version__})
            (tmp / MANIFEST).write_text(text, encoding="utf-8")
            mask = umask()  # mkdtemp creates 0700 and safetensors 0600; an artifact is shared like any other output
            os.chmod(tmp, 0o777 & ~mask)
            for name in (WEIGHTS, MANIFEST):
                os.chmod(tmp / name, 0o666 & ~mask)
    except (SafetensorError, OSError) as err:
        raise ArtifactError(f"cannot write {directory}: {' '.join(str(err).split())}") from None
    return directory


def _feature_list(features: object, in_dim: int | None, where: str) -> list[str] | None:
    """``features`` as a list of distinct names, one per input of the model (None stays None)."""
    if features is None:
        return None
    if not isinstance(features, (list, tuple)) or not all(isinstance(f, str) for f in features):
        raise ArtifactError(f"{where}: 'features' must be a list of feature names")
    if len(set(features)) != len(features):
        twice = sorted({f for f in features if list(features).count(f) > 1})
        raise ArtifactError(f"{where}: feature name(s) {twice[:3]} appear more than once in 'features'")
    if in_dim is not None and len(features) != in_dim:
        raise ArtifactError(f"{where}: 'features' names {len(features)} features but the model takes {in_dim}")
    return list(features)


def check_target(directory: str | Path, option: str) -> None:
    """Fail before any work when ``save`` could not write ``directory`` (not writable, or a folder that is not
    an artifact, which save refuses to replace)."""
    directory = Path(directory)
    if directory.is_dir() and any(directory.iterdir()) and not (directory / MANIFEST).is_file():
        raise ArtifactError(f"{option} {directory} exists and is not a qwave artifact; refusing to replace it")
    if directory.exists() and not directory.is_dir():
        raise ArtifactError(f"{option} {directory} is a file, not an artifact folder")
    check_writable(directory.parent, option, directory=True)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _json_depth(value: object, limit: int) -> int:
    """Nesting depth of parsed JSON (a scalar is 0, ``{"a": 1}`` is 1), counted without recursion up to
    ``limit + 1``."""
    depth, level = 0, [value]
    while depth <= limit:
        level = [child for node in level if isinstance(node, (dict, list))
                 for child in (node.values() if isinstance(node, dict) else node)]
        if not level:
            break
        depth += 1
    return depth


def read_manifest(directory: str | Path, allow_unverified: bool = False) -> dict:
    """The parsed ``manifest.json`` of an artifact directory, its size, nesting, types and digest checked (one
    clear error). Format version 1 (no checksums) only with ``allow_unverified``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not an artifact directory (it does not exist)")
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; {directory} is not a qwave artifact")
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path} is {size:,} bytes, above the {MAX_MANIFEST_BYTES:,}-byte cap of a manifest")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{path} is above the {MAX_MANIFEST_BYTES:,}-byte cap of a manifest")
        manifest = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ArtifactError(f"{path} is not valid JSON: {' '.join(str(err).split())[:200]}") from None
    if _json_depth(manifest, MAX_MANIFEST_DEPTH) > MAX_MANIFEST_DEPTH:
        raise ArtifactError(f"{path} nests more than {MAX_MANIFEST_DEPTH} levels deep (a qwave manifest nests ~8)")
    if not isinstance(manifest, dict) or "architecture" not in manifest or "layers" not in manifest:
        raise ArtifactError(f"{path} lacks the 'architecture' and 'layers' entries of a qwave manifest")
    unknown = sorted(str(k) for k in manifest if k not in MANIFEST_KEYS)
    if unknown:
        raise ArtifactError(f"{path}: unknown manifest key(s) {', '.join(map(repr, unknown[:5]))}")
    version = manifest.get("format_version")
    if not _is_int(version, 1) or version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has artifact format version {version!r} (written by qwave {manifest.get('qwave_version')}); "
            f"this qwave {__version__} reads versions 1 to {FORMAT_VERSION}: upgrade qwave, or the file was edited"
        )
    if version < 2:
        _check_unverified(manifest, path, allow_unverified)
    if version >= 2:
        integrity = manifest.get("integrity")
        if not isinstance(integrity, dict) or integrity.get("algorithm") != "sha256":
            raise ArtifactError(f"{path}: format version {version} needs an 'integrity' entry with a sha256 digest")
        try:
            digest = manifest_digest(manifest)
        except ArtifactError as err:
            raise ArtifactError(f"{path}: {err}") from None
        if integrity.get("manifest") != digest:
            raise ArtifactError(f"{path} was changed after it was saved (its sha256 digest does not match); "
                                "save the model again instead of editing the manifest")
    _check_manifest_types(manifest, path)
    return manifest


def _check_unverified(manifest: dict, path: Path, allow_unverified: bool) -> None:
    """A version-1 manifest (no checksums) is read only when asked for and when nothing of version 2 is in it."""
    if not allow_unverified:
        raise ArtifactError(f"{path} has format version 1, which carries no sha256 checksums (nothing checks that "
                            "its tensors are the saved ones); load it with allow_unverified=True "
                            "(--allow-unverified) only if you trust the file, then save it again")
    signed = "integrity" in manifest or any(isinstance(info, dict) and "sha256" in info
                                            for info in (manifest.get("tensors") or {}).values())
    if signed:
        raise ArtifactError(f"{path} says format version 1 but holds checksums of version 2: its version was edited")


def _is_int(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_shape(value, low: int = 0) -> bool:
    return isinstance(value, list) and all(_is_int(d, low) for d in value)


def _check_manifest_types(manifest: dict, path: Path) -> None:
    """Every entry ``load`` uses has the JSON type ``save`` writes (a hand-edited file fails here, not in Python)."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ArtifactError(f"{path}: {what}")

    arch = manifest["architecture"]
    need(isinstance(arch, dict) and isinstance(arch.get("name"), str) and isinstance(arch.get("config"), dict),
         "'architecture' must be an object with a string 'name' and an object 'config'")
    need(isinstance(manifest["layers"], dict), "'layers' must be an object mapping module paths to packed layers")
    for name, spec in manifest["layers"].items():
        need(isinstance(spec, dict), f"layer {name!r} must be an object")
        need(all(k in LAYER_KEYS for k in spec), f"layer {name!r} has unknown key(s) "
             f"{sorted(str(k) for k in spec if k not in LAYER_KEYS)} (known: {', '.join(LAYER_KEYS)})")
        need(isinstance(spec.get("format"), str), f"layer {name!r}: 'format' must be a format name")
        need(isinstance(spec.get("options", {}), dict), f"layer {name!r}: 'options' must be an object")
        need(_is_shape(spec.get("shape"), 1) and len(spec["shape"]) == 2,
             f"layer {name!r}: 'shape' must be two positive integers [out, in]; got {spec.get('shape')!r}")
        need(isinstance(spec.get("bias"), bool), f"layer {name!r}: 'bias' must be true or false")
        tensors = spec.get("tensors")
        need(isinstance(tensors, list) and all(isinstance(t, str) for t in tensors),
             f"layer {name!r}: 'tensors' must be a list of tensor names")
    need(isinstance(manifest.get("tensors"), dict), "'tensors' must be an object describing every stored tensor")
    for name, info in manifest["tensors"].items():
        need(isinstance(info, dict) and isinstance(info.get("dtype"), str) and _is_shape(info.get("shape")),
             f"tensor {name!r} must be described by a 'dtype' name and a 'shape' of non-negative integers")
        if manifest.get("format_version", 1) >= 2:
            need(isinstance(info.get("sha256"), str), f"tensor {name!r} has no 'sha256' checksum")
    aliases = manifest.get("aliases", {})
    need(isinstance(aliases, dict) and all(isinstance(v, str) for v in aliases.values()),
         "'aliases' must map state names to stored tensor names")
    classes = manifest.get("classes")
    need(classes is None or (isinstance(classes, list) and all(isinstance(c, str) for c in classes)),
         "'classes' must be null or a list of class names")
    norms = manifest.get("normalization", {})
    need(isinstance(norms, dict), "'normalization' must map module paths to normalisers")
    for name, spec in norms.items():
        need(isinstance(spec, dict) and set(spec) == {"mode", "tensors"} and spec["mode"] in Normalize.MODES
             and spec["tensors"] == ([f"{name}.shift", f"{name}.scale"] if name else ["shift", "scale"]),
             f"normaliser {name!r} must be {{'mode': one of {', '.join(Normalize.MODES)}, 'tensors': its "
             "shift and scale}")
    try:
        _feature_list(manifest.get("features"), None, str(path))
    except ArtifactError as err:
        need(False, str(err).removeprefix(f"{path}: "))


def read_header(path: Path) -> tuple[int, dict[str, dict]]:
    """Length and tensor entries of a safetensors header, checked against the file before anything is read.

    Each entry is ``{"dtype": torch dtype name, "shape": [...], "data_offsets": [begin, end]}`` with the offsets
    inside the file and ``end - begin`` the bytes of that dtype and shape.
    """
    if not path.is_file():
        raise ArtifactError(f"{path} is missing")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise ArtifactError(f"{path} is not a safetensors file: its header claims {length:,} bytes of a "
                                    f"{size:,}-byte file")
            header = json.loads(f.read(length), parse_constant=_reject_constant)
    except (OSError, struct.error, ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ArtifactError(f"{path} has no readable safetensors header: {err}") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{path}: the safetensors header is not an object")
    data_bytes = size - 8 - length
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(info, dict) and info.get("dtype") in SAFETENSORS_DTYPES and _is_shape(info.get("shape"))
        offsets = info.get("data_offsets") if ok else None
        ok = ok and _is_shape(offsets) and len(offsets) == 2 and offsets[0] <= offsets[1] <= data_bytes
        dtype = SAFETENSORS_DTYPES[info["dtype"]] if ok else None
        if ok:
            numel = 1
            for d in info["shape"]:
                numel *= d
            ok = offsets[1] - offsets[0] == numel * getattr(torch, dtype).itemsize
        if not ok:
            raise ArtifactError(f"{path}: the safetensors entry of tensor {name!r} is malformed or outside the file")
        entries[name] = {"dtype": dtype, "shape": list(info["shape"]), "data_offsets": list(offsets)}
    return length, entries


def _spec(info: dict) -> PackedSpec:
    return PackedSpec(getattr(torch, info["dtype"], None), tuple(info["shape"]))


def _layer_specs(path: str, spec: dict, where: Path) -> dict[str, PackedSpec]:
    """The state entries of one packed layer as its format lays them out for its shape, bias included."""
    try:
        fmt = FormatSpec.from_manifest(spec["format"], spec.get("options", {})).build()
        layout = fmt.layout(tuple(spec["shape"]))
    except FormatError as err:
        raise ArtifactError(f"{where}: packed layer {path!r}: {err}") from None
    if sorted(spec["tensors"]) != sorted(layout):
        raise ArtifactError(f"{where}: packed layer {path!r} lists tensors {spec['tensors']} but format "
                            f"{fmt.name} stores {sorted(layout)}")
    specs = {f"{path}.{name}": s for name, s in layout.items()}
    if spec["bias"]:
        specs[f"{path}.bias"] = PackedSpec(torch.float32, (spec["shape"][0],))
    return specs


def inspect_artifact(directory: str | Path, allow_unverified: bool = False) -> tuple[dict, int, dict[str, dict]]:
    """The checked manifest, safetensors header length and header entries of an artifact, without reading tensor
    data: the header matches the manifest's tensor list, aliases point at stored tensors, and every packed layer's
    tensors have its format's layout for the layer's shape."""
    directory = Path(directory)
    manifest = read_manifest(directory, allow_unverified)
    path = directory / WEIGHTS
    length, entries = read_header(path)
    described = manifest["tensors"]
    if entries.keys() != described.keys():
        extra, missing = sorted(entries.keys() - described.keys()), sorted(described.keys() - entries.keys())
        raise ArtifactError(f"{path} does not hold the tensors {directory / MANIFEST} lists (missing: "
                            f"{missing[:5]}, not listed: {extra[:5]})")
    for name, info in entries.items():
        if _spec(info) != _spec(described[name]):
            raise ArtifactError(f"{path}: tensor {name!r} is {_spec(info).describe()} but the manifest says "
                                f"{described[name]['dtype']} {described[name]['shape']}")
    aliases = manifest.get("aliases", {})
    for name, target in aliases.items():
        if target not in entries or name in entries:
            raise ArtifactError(f"{directory / MANIFEST}: alias {name!r} -> {target!r} must name a stored tensor "
                                "from a name that is not stored")
    for layer, spec in manifest["layers"].items():
        for name, expected in _layer_specs(layer, spec, directory / MANIFEST).items():
            stored = aliases.get(name, name)
            if stored not in entries:
                raise ArtifactError(f"{path}: packed layer {layer!r} needs tensor {name!r}, which is not stored")
            if _spec(entries[stored]) != expected:
                raise ArtifactError(f"{path}: tensor {name!r} of packed layer {layer!r} "
                                    f"{spec['shape']} ({spec['format']}) must be {expected.describe()}; got "
                                    f"{_spec(entries[stored]).describe()}")
    return manifest, length, entries


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(f"{path} is not a readable safetensors file: {err}") from None


def _architecture(manifest: dict, where: Path) -> type:
    name = manifest["architecture"]["name"]
    found = family(name)
    if found is None:
        raise ArtifactError(
            f"{where}: unknown architecture {name!r} (registered: {', '.join(family_names())}); "
            "import the module that registers it"
        )
    return found.cls


# What a config that does not fit its architecture's constructor raises there.
_BUILD_ERRORS = (QwaveError, TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError, OverflowError,
                 MemoryError)


def _check_config(cls: type, manifest: dict, where: Path) -> None:
    """The architecture's own check of its stored settings (``cls.check_config(config, manifest)``, which raises
    ValueError/QwaveError naming the key), run before anything is built."""
    check = getattr(cls, "check_config", None)
    if check is None:
        return
    try:
        check(manifest["architecture"]["config"], manifest)
    except (QwaveError, ValueError) as err:
        raise ArtifactError(f"{where}: architecture config: {err}") from None


def _build(cls: type, manifest: dict, where: Path, meta: bool) -> nn.Module:
    """The untrained model the config describes; on the meta device (shapes only, nothing allocated) if ``meta``."""
    try:
        with torch.device("meta") if meta else contextlib.nullcontext():
            return cls.from_config(copy.deepcopy(manifest["architecture"]["config"]))
    except _BUILD_ERRORS as err:
        summary = " ".join(str(err).split())[:300]
        raise ArtifactError(f"{where}: the architecture config does not build a {manifest['architecture']['name']} "
                            f"model ({type(err).__name__}: {summary})") from None


def _check_skeleton(skeleton: nn.Module, manifest: dict, where: Path) -> None:
    """The stored tensors (with aliases) are exactly the state the architecture config describes, with each packed
    layer's shape equal to the architecture's layer at that path."""
    expected = {name: PackedSpec(t.dtype, tuple(t.shape)) for name, t in skeleton.state_dict().items()}
    for layer, spec in manifest["layers"].items():
        try:
            module = skeleton.get_submodule(layer)
        except AttributeError:
            raise ArtifactError(f"{where}: packed layer {layer!r} is not a module of the architecture") from None
        if not isinstance(module, (nn.Linear, PackedLinear)):
            raise ArtifactError(f"{where}: packed layer {layer!r} is a {type(module).__name__}, not a linear layer")
        shape = [module.out_features, module.in_features]
        if shape != spec["shape"] or (module.bias is not None) != spec["bias"]:
            raise ArtifactError(f"{where}: packed layer {layer!r} is {spec['shape']} (bias {spec['bias']}) but the "
                                f"architecture config makes it {shape} (bias {module.bias is not None})")
        expected = {k: v for k, v in expected.items() if not k.startswith(layer + ".")}
        expected.update(_layer_specs(layer, spec, where))
    described = {name: _spec(info) for name, info in manifest["tensors"].items()}
    described.update({name: described[target] for name, target in manifest.get("aliases", {}).items()})
    if described.keys() != expected.keys():
        missing, extra = sorted(expected.keys() - described.keys()), sorted(described.keys() - expected.keys())
        raise ArtifactError(f"{where}: the stored tensors do not match the {manifest['architecture']['name']} model "
                            f"the config describes (missing: {missing[:5]}, unexpected: {extra[:5]})")
    for name, spec in expected.items():
        if described[name] != spec:
            raise ArtifactError(f"{where}: tensor {name!r} must be {spec.describe()} for the architecture config; "
                                f"the file holds {described[name].describe()}")


def _check_values(tensors: dict[str, torch.Tensor], manifest: dict, path: Path) -> None:
    """Checksums (format version 2) of every stored tensor, and finite floats in those outside the packed layers
    (``PackedLinear`` checks its own tensors and bias against the format)."""
    packed = {f"{layer}.{name}" for layer, spec in manifest["layers"].items() for name in [*spec["tensors"], "bias"]}
    for name, tensor in tensors.items():
        expected = manifest["tensors"][name].get("sha256")
        if manifest.get("format_version", 1) >= 2 and tensor_sha256(tensor) != expected:
            raise ArtifactError(f"{path}: tensor {name!r} does not match its sha256 checksum (the file is corrupt "
                                "or was changed after it was saved)")
        if name not in packed and tensor.is_floating_point() and non_finite(tensor) is not None:
            raise ArtifactError(f"{path}: tensor {name!r} holds a non-finite value (NaN or inf)")


def load(directory: str | Path, allow_unverified: bool = False) -> nn.Module:
    """Rebuild the saved model from ``directory``: packed layers from the stored bytes, eval mode, with
    ``.classes``, ``.feature_names`` and ``.manifest`` set. Everything is checked first (see the module
    docstring); ``allow_unverified`` reads a format-version-1 file, which has no checksums."""
    directory = Path(directory)
    manifest, _, _ = inspect_artifact(directory, allow_unverified)
    where = directory / MANIFEST
    cls = _architecture(manifest, where)
    _check_config(cls, manifest, where)
    try:
        skeleton = _build(cls, manifest, where, meta=True)
    except ArtifactError:
        skeleton = None  # an architecture that cannot be built without data; its real build is checked instead
    if skeleton is not None:
        _check_skeleton(skeleton, manifest, where)
    model = _build(cls, manifest, where, meta=False)
    if skeleton is None:
        _check_skeleton(model, manifest, where)
    tensors = _read_tensors(directory / WEIGHTS)
    _check_values(tensors, manifest, directory / WEIGHTS)
    aliases = manifest.get("aliases", {})
    state = dict(tensors)
    state.update({name: tensors[target] for name, target in aliases.items()})
    for path, spec in manifest["layers"].items():
        packed = {name: state[f"{path}.{name}"] for name in spec["tensors"]}
        bias = state[f"{path}.bias"] if spec["bias"] else None
        try:
            layer = PackedLinear(FormatSpec.from_manifest(spec["format"], spec.get("options", {})).build(), packed,
                                 tuple(spec["shape"]), bias)
        except FormatError as err:
            raise ArtifactError(f"{directory / WEIGHTS}: packed layer {path!r}: {err}") from None
        model = set_module(model, path, layer)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        summary = " ".join(str(err).split())[:400]
        raise ArtifactError(
            f"{directory / WEIGHTS} does not match the {manifest['architecture']['name']} model it describes: "
            f"{summary}"
        ) from None
    _retie(model, aliases)
    _check_model(model, manifest, where)
    model.eval()
    model.classes = manifest.get("classes")
    model.feature_names = manifest.get("features")
    model.manifest = manifest
    return model


def _check_model(model: nn.Module, manifest: dict, where: Path) -> None:
    """Model-level rules a file can break with valid tensors: the normalisers the manifest lists (mode, path) are
    the model's, none divides by zero, a class list or feature list whose length is not the model's number of
    outputs or inputs, and the architecture's own stored state (``model.check_state()``, e.g. MoE masks)."""
    norms = {path: m.mode for path, m in model.named_modules() if isinstance(m, Normalize)}
    listed = {path: spec["mode"] for path, spec in manifest.get("normalization", {}).items()}
    if norms != listed:
        raise ArtifactError(f"{where}: 'normalization' lists {listed} but the architecture config makes {norms}")
    for path, m in model.named_modules():
        if isinstance(m, Normalize) and m.mode in ("standard", "min_max") and (m.scale == 0).any():
            raise ArtifactError(f"{where}: normaliser {path or 'norm'!r} has a zero scale (it would divide by zero)")
    classes, outputs = manifest.get("classes"), getattr(model, "num_classes", None)
    if classes is not None and outputs is not None and len(classes) != outputs:
        raise ArtifactError(f"{where}: 'classes' names {len(classes)} classes but the model has {outputs} outputs")
    _feature_list(manifest.get("features"), getattr(model, "in_dim", None), str(where))
    check = getattr(model, "check_state", None)
    if check is not None:
        try:
            check()
        except (QwaveError, ValueError) as err:
            raise ArtifactError(f"{where}: {err}") from None


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
