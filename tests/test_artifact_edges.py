"""Artifact loading at its edges: no integrity downgrade, every stored setting checked, bounded manifests,
feature names recorded, a failed write leaves nothing half written. Each failure is one ArtifactError line naming
the key."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from artifact_files import data_offsets, flip_byte, reseal
from safetensors import SafetensorError

from qwave import artifact
from qwave.cli import main
from qwave.errors import ArtifactError
from qwave.nn import MLPClassifier, pack_model, quantize_model

X = torch.randn(16, 12, generator=torch.Generator().manual_seed(7))


def mlp(fmt: str = "int8", hidden=(10,), layer_norm: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    return pack_model(quantize_model(MLPClassifier(12, 4, hidden, layer_norm=layer_norm), fmt))


def moe() -> torch.nn.Module:
    from qwave.moe.model import MoEClassifier, quantize_moe

    torch.manual_seed(0)
    model = MoEClassifier(12, 4, ["bitnet", "4", "8"], (8,), curiosity={"enabled": True, "mc_samples": 3})
    return pack_model(quantize_moe(model))


def refused(directory: Path, *words: str) -> str:
    with pytest.raises(ArtifactError) as info:
        artifact.load(directory)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    return message


def test_setting_format_version_1_or_removing_it_does_not_turn_the_checksums_off(tmp_path):
    a = artifact.save(mlp(), tmp_path / "a", features=[f"x{i}" for i in range(12)])
    begin, _ = data_offsets(a)["body.0.bias"]
    flip_byte(a, begin + 2, 0x01)  # one flipped bit in a bias, as in the issue
    refused(a, "sha256")
    manifest = json.loads((a / "manifest.json").read_text())
    manifest["format_version"] = 1
    (a / "manifest.json").write_text(json.dumps(manifest))
    refused(a, "allow_unverified")
    with pytest.raises(ArtifactError, match="version was edited"):
        artifact.load(a, allow_unverified=True)  # v1 declared, v2 fields present: a downgrade, never read
    del manifest["format_version"]
    (a / "manifest.json").write_text(json.dumps(manifest))
    refused(a, "format version None")


MOE_SETTINGS = [
    (("router_dropout",), -1.0, "router_dropout"),
    (("router_dropout",), 1.5, "router_dropout"),
    (("curiosity", "measure"), "entropy", "curiosity.measure"),
    (("top_k",), -1, "top_k"),
    (("top_k",), 100, "top_k"),
    (("top_k",), 0, "top_k"),
    (("curiosity", "alpha"), -0.5, "curiosity.alpha"),
    (("curiosity", "mc_samples"), 10**9, "mc_samples"),
    (("hidden",), [8] * 100_000, "layers"),
    (("router_hidden",), 10**9, "router_hidden"),
    (("surprise",), 1, "unknown key"),
]


@pytest.mark.parametrize("path, value, key", MOE_SETTINGS, ids=[f"{'.'.join(p)}={str(v)[:12]}" for p, v, _ in
                                                                MOE_SETTINGS])
def test_every_stored_moe_setting_is_checked_at_load_naming_the_key(tmp_path, path, value, key):
    a = artifact.save(moe(), tmp_path / "a")

    def change(manifest):
        node = manifest["architecture"]["config"]
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    reseal(a, change)
    start = time.perf_counter()
    refused(a, key)
    assert time.perf_counter() - start < 10  # refused from the manifest, before anything the size of it is built


@pytest.mark.parametrize("name, value, key", [
    ("router.keep", lambda t: torch.full_like(t, 7), "router.keep"),
    ("u_std", lambda t: torch.full_like(t, -1.0), "u_std"),
])
def test_stored_moe_state_out_of_range_is_refused(tmp_path, name, value, key):
    a = artifact.save(moe(), tmp_path / "a")
    reseal(a, tensors_change=lambda tensors: tensors.update({name: value(tensors[name])}))
    refused(a, key)


@pytest.mark.parametrize("key, value, word", [
    ("dropout", -0.5, "dropout"), ("dropout", 1.0, "dropout"), ("hidden", [-5], "hidden[0]"),
    ("hidden", [10] * 100_000, "layers"), ("hidden", [10**12], "layers"), ("activation", "gelu", "activation"),
    ("in_dim", True, "in_dim"), ("normalize_mode", "l2", "normalization"),
])
def test_every_stored_mlp_setting_is_checked_naming_the_key(tmp_path, key, value, word):
    a = artifact.save(mlp(), tmp_path / "a")
    reseal(a, lambda m: m["architecture"]["config"].update({key: value}))
    start = time.perf_counter()
    refused(a, word)
    assert time.perf_counter() - start < 10


def test_an_unlisted_or_inconsistent_normaliser_and_unknown_keys_are_refused(tmp_path):
    a = artifact.save(mlp(), tmp_path / "a")
    reseal(a, lambda m: m["normalization"]["norm"].update(mode="l2"))
    refused(a, "normalization")
    b = artifact.save(mlp(), tmp_path / "b")
    reseal(b, lambda m: m.update(normalization={}))
    refused(b, "normalization")
    c = artifact.save(mlp(), tmp_path / "c")
    reseal(c, lambda m: m["layers"]["body.0"].update(stride=2))
    refused(c, "unknown key", "stride")
    d = artifact.save(mlp(), tmp_path / "d")
    reseal(d, lambda m: m.update(weights_scale=2.0))
    refused(d, "unknown manifest key", "weights_scale")


def test_deep_and_huge_manifests_are_one_line_before_they_are_read(tmp_path, capsys):
    a = artifact.save(mlp(), tmp_path / "a")
    deep: list = []
    for _ in range(200):
        deep = [deep]
    reseal(a, lambda m: m.update(extra={"deep": deep}))
    refused(a, "nests more than")
    raw = tmp_path / "raw"
    artifact.save(mlp(), raw)
    (raw / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    refused(raw, "manifest.json")
    huge = tmp_path / "huge"
    artifact.save(mlp(), huge)
    with open(huge / "manifest.json", "r+b") as f:
        f.truncate(8 * 2**30)  # an 8 GiB sparse file
    refused(huge, f"{artifact.MAX_MANIFEST_BYTES:,}-byte cap")
    assert main(["size", str(huge)]) == 2
    assert "cap" in capsys.readouterr().err


def test_a_full_disk_while_saving_is_one_error_and_leaves_the_previous_artifact(tmp_path, monkeypatch):
    target = artifact.save(mlp(), tmp_path / "a")
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                              "\"No space left on device\" })")

    monkeypatch.setattr(artifact, "save_file", full)
    with pytest.raises(ArtifactError, match="No space left"):
        artifact.save(mlp("int4"), target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["a"]  # no temporary folder left behind


def test_feature_names_are_recorded_checked_and_loaded(tmp_path):
    names = [f"f{i}" for i in range(12)]
    a = artifact.save(mlp(), tmp_path / "a", features=names)
    assert artifact.load(a).feature_names == names
    with pytest.raises(ArtifactError, match="names 3 features but the model takes 12"):
        artifact.save(mlp(), tmp_path / "b", features=["a", "b", "c"])
    with pytest.raises(ArtifactError, match="more than once"):
        artifact.save(mlp(), tmp_path / "b", features=["a"] * 12)
    reseal(a, lambda m: m.update(features=names[:-1]))
    refused(a, "features")


@pytest.mark.parametrize("key, value", [("frame_dim", -8), ("frames", 0), ("num_layers", 0), ("cell", "rnn"),
                                        ("hidden", 2**40), ("bidirectional", "yes"), ("surprise", 1)])
def test_every_stored_recurrent_setting_is_checked_at_load_naming_the_key(tmp_path, key, value):
    """Found by the long re-signed property run: frames 0 or a negative frame width loaded and failed in forward."""
    from qwave.nn.recurrent import RecurrentCTC, pack_recurrent

    torch.manual_seed(0)
    a = artifact.save(pack_model(pack_recurrent(RecurrentCTC(frame_dim=8, frames=5, num_classes=6, hidden=12),
                                                "int8")), tmp_path / "a")
    reseal(a, lambda m: m["architecture"]["config"].__setitem__(key, value))
    refused(a, key)
