"""Artifacts: packed tensors in safetensors + manifest, reloaded into a model that runs from those bytes."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import qwave
from qwave import artifact
from qwave.errors import ArtifactError
from qwave.formats import registered_formats
from qwave.nn import MLPClassifier, PackedLinear, pack_model, ptq, quantize_model


def packed_mlp(fmt="4", seed: int = 0, **options) -> nn.Module:
    torch.manual_seed(seed)
    return pack_model(quantize_model(MLPClassifier(40, 5, (24, 12), layer_norm=True), fmt, **options))


@pytest.mark.parametrize("fmt", registered_formats())
def test_loaded_artifact_reproduces_the_packed_model_exactly(tmp_path, fmt):
    model = packed_mlp(fmt)
    qwave.save(model, tmp_path / "a", classes=["a", "b", "c", "d", "e"], config={"lr": 0.1}, extra={"fold": 1})
    loaded = artifact.load(tmp_path / "a")
    x = torch.randn(20, 40)
    assert torch.equal(loaded(x), model(x))
    assert not loaded.training and loaded.classes == ["a", "b", "c", "d", "e"]
    assert loaded.manifest["config"] == {"lr": 0.1} and loaded.manifest["extra"] == {"fold": 1}
    assert all(isinstance(loaded.body[i], PackedLinear) for i in (0, 4, 8))


def test_file_holds_exactly_the_state_dict_and_the_manifest_describes_it(tmp_path):
    model = packed_mlp("int4", group_size=8, keep_last_fp=True)
    artifact.save(model, tmp_path / "a")
    stored = load_file(tmp_path / "a" / "model.safetensors")
    state = model.state_dict()
    assert stored.keys() == state.keys() and all(torch.equal(stored[k], state[k]) for k in state)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["qwave_version"] == qwave.__version__
    assert manifest["architecture"] == {"name": "mlp", "config": model.config()}
    assert manifest["layers"]["body.0"] == {
        "format": "int4",
        "options": {"group_size": 8},
        "shape": [24, 40],
        "bias": True,
        "tensors": ["codes", "scale"],
    }
    assert manifest["layers"]["body.8"]["format"] == "fp32"
    assert manifest["normalization"] == {"norm": {"mode": "raw", "tensors": ["norm.shift", "norm.scale"]}}
    assert manifest["tensors"]["body.0.codes"] == {"dtype": "uint8", "shape": [24, 20]}


def test_mixed_precision_and_ptq_report_survive_a_round_trip(tmp_path):
    torch.manual_seed(0)
    packed = ptq(MLPClassifier(40, 5, (24, 12)), "4", torch.randn(30, 40), layer_formats=["1", "qesc", "8"])
    assert isinstance(packed.ptq_report, dict)
    loaded = artifact.load(artifact.save(packed, tmp_path / "m"))
    assert [loaded.body[i].fmt.name for i in (0, 3, 6)] == ["binary", "qesc", "int8"]
    x = torch.randn(8, 40)
    assert torch.equal(loaded(x), packed(x))


class TwoExperts(nn.Module):
    """A composite model: two packed sub-MLPs, a router and a norm, like the MoE helper's."""

    def __init__(self, in_dim: int, classes: int) -> None:
        super().__init__()
        self.in_dim, self.classes_n = in_dim, classes
        self.experts = nn.ModuleList([MLPClassifier(in_dim, classes, (16,)), MLPClassifier(in_dim, classes, (8, 8))])
        self.router = nn.Linear(in_dim, 2)
        self.gate_norm = nn.LayerNorm(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.gate_norm(self.router(x)), -1)
        return sum(weights[:, i : i + 1] * e(x) for i, e in enumerate(self.experts))

    def config(self) -> dict:
        return {"in_dim": self.in_dim, "classes": self.classes_n}

    @classmethod
    def from_config(cls, cfg: dict) -> TwoExperts:
        return cls(cfg["in_dim"], cfg["classes"])


def test_a_registered_composite_model_round_trips(tmp_path):
    artifact.register_architecture("two-experts-test", TwoExperts)
    torch.manual_seed(0)
    model = TwoExperts(20, 3)
    quantize_model(model, "8", layer_formats=["2", "4", "1", "bitnet", "qesc", "8"])
    packed = pack_model(model)
    loaded = artifact.load(artifact.save(packed, tmp_path / "moe"))
    assert loaded.manifest["architecture"]["name"] == "two-experts-test"
    assert sorted(loaded.manifest["layers"]) == sorted(
        ["experts.0.body.0", "experts.0.body.3", "experts.1.body.0", "experts.1.body.3", "experts.1.body.6", "router"]
    )
    x = torch.randn(9, 20)
    assert torch.equal(loaded(x), packed(x))


class Tied(nn.Module):
    """Embedding tied to an output head."""

    def __init__(self, vocab: int = 50, dim: int = 8) -> None:
        super().__init__()
        self.vocab, self.dim = vocab, dim
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(self.embed(tokens)))

    def config(self) -> dict:
        return {"vocab": self.vocab, "dim": self.dim}

    @classmethod
    def from_config(cls, cfg: dict) -> Tied:
        return cls(**cfg)


def test_tied_storage_is_stored_once_and_tied_again_on_load(tmp_path):
    artifact.register_architecture("tied-test", Tied)
    torch.manual_seed(0)
    packed = pack_model(quantize_model(Tied(), "fp32", layer_formats=["8", "fp32"]))
    assert packed.head.weight.data_ptr() == packed.embed.weight.data_ptr()
    artifact.save(packed, tmp_path / "t")
    stored = load_file(tmp_path / "t" / "model.safetensors")
    assert "embed.weight" in stored and "head.weight" not in stored
    loaded = artifact.load(tmp_path / "t")
    assert loaded.manifest["aliases"] == {"head.weight": "embed.weight"}
    assert loaded.head.weight.data_ptr() == loaded.embed.weight.data_ptr()
    tokens = torch.tensor([[1, 7, 49]])
    assert torch.equal(loaded(tokens), packed(tokens))


def test_saving_replaces_an_existing_artifact_atomically_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "a"
    artifact.save(packed_mlp("8"), target)
    artifact.save(packed_mlp("1"), target)
    assert artifact.load(target).body[0].fmt.name == "binary"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "model.safetensors"]


def test_save_refuses_unpacked_models_unregistered_classes_and_foreign_directories(tmp_path):
    with pytest.raises(ArtifactError, match="not packed"):
        artifact.save(quantize_model(MLPClassifier(4, 2, (3,)), "4"), tmp_path / "q")
    with pytest.raises(ArtifactError, match="register"):
        artifact.save(nn.Sequential(nn.ReLU()), tmp_path / "s")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not a qwave artifact"):
        artifact.save(packed_mlp(), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.fixture
def saved(tmp_path):
    return artifact.save(packed_mlp("4"), tmp_path / "a")


def edit_manifest(directory, change) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_missing_directory_or_files_name_the_path(tmp_path, saved):
    with pytest.raises(ArtifactError, match="nowhere"):
        artifact.load(tmp_path / "nowhere")
    os.remove(saved / "model.safetensors")
    with pytest.raises(ArtifactError, match="model.safetensors is missing"):
        artifact.load(saved)
    os.remove(saved / "manifest.json")
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        artifact.load(saved)


def test_bad_json_unknown_architecture_and_newer_version_are_artifact_errors(saved):
    (saved / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        artifact.load(saved)


def test_unknown_architecture_and_newer_format_version(tmp_path):
    a = artifact.save(packed_mlp(), tmp_path / "a")
    edit_manifest(a, lambda m: m["architecture"].update(name="transformer-xl"))
    with pytest.raises(ArtifactError, match="unknown architecture 'transformer-xl'"):
        artifact.load(a)
    b = artifact.save(packed_mlp(), tmp_path / "b")
    edit_manifest(b, lambda m: m.update(format_version=artifact.FORMAT_VERSION + 1))
    with pytest.raises(ArtifactError, match="upgrade qwave"):
        artifact.load(b)


def test_tensor_mismatches_are_artifact_errors(tmp_path):
    a = artifact.save(packed_mlp(), tmp_path / "a")
    tensors = load_file(a / "model.safetensors")
    tensors["norm.shift"] = torch.zeros(41)
    save_file(tensors, a / "model.safetensors")
    with pytest.raises(ArtifactError, match="does not match"):
        artifact.load(a)
    b = artifact.save(packed_mlp(), tmp_path / "b")
    tensors = load_file(b / "model.safetensors")
    del tensors["body.0.scale"]
    save_file(tensors, b / "model.safetensors")
    with pytest.raises(ArtifactError, match="body.0"):
        artifact.load(b)
    (b / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="safetensors"):
        artifact.load(b)


def test_find_artifacts_lists_manifest_directories_sorted(tmp_path):
    for name in ["z/fold2", "a/fold1", "a/fold0"]:
        artifact.save(packed_mlp(), tmp_path / name)
    (tmp_path / "other").mkdir()
    assert artifact.find_artifacts(tmp_path) == [tmp_path / "a/fold0", tmp_path / "a/fold1", tmp_path / "z/fold2"]
