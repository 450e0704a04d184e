"""Hand-made artifact files for the artifact tests.

``reseal`` edits a saved artifact and then, as a careful hand editor would, rewrites every tensor checksum and
the manifest digest from the documented definitions (sha256 of each tensor's bytes; sha256 of the manifest's
canonical JSON without its ``integrity`` entry), so only the structural checks of ``load`` stand between the
edit and the kernels.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def manifest_sha256(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "integrity"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def reseal(
    directory: Path,
    manifest_change: Callable[[dict], object] | None = None,
    tensors_change: Callable[[dict], object] | None = None,
) -> Path:
    """Apply the changes, then make the manifest describe the tensors file again and fix every checksum."""
    manifest = json.loads((directory / "manifest.json").read_text())
    if tensors_change is not None:
        tensors = load_file(directory / "model.safetensors")
        tensors_change(tensors)
        save_file({k: v.contiguous() for k, v in tensors.items()}, directory / "model.safetensors")
        manifest["tensors"] = {
            name: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "sha256": tensor_sha256(t)}
            for name, t in tensors.items()
        }
    if manifest_change is not None:
        manifest_change(manifest)
    if isinstance(manifest, dict) and isinstance(manifest.get("integrity"), dict):
        manifest["integrity"]["manifest"] = manifest_sha256(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def data_offsets(directory: Path) -> dict[str, tuple[int, int]]:
    """File offsets ``[begin, end)`` of each tensor's bytes, read from the safetensors header by hand."""
    raw = (directory / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    return {name: (8 + length + info["data_offsets"][0], 8 + length + info["data_offsets"][1])
            for name, info in header.items() if name != "__metadata__"}


def flip_byte(directory: Path, offset: int, mask: int = 0xFF) -> None:
    path = directory / "model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[offset] ^= mask
    path.write_bytes(bytes(raw))
