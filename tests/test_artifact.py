"""Artifacts: packed tensors in safetensors + manifest, reloaded into a model that runs from those bytes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import struct

import pytest
import torch
from artifact_files import data_offsets, flip_byte, reseal
from safetensors.torch import load_file, save_file
from torch import nn

import qwave
from qwave import artifact
from qwave.errors import ArtifactError
from qwave.formats import QuantPlan, registered_formats
from qwave.nn import MLPClassifier, PackedLinear, pack_model, ptq, quantize_model
from qwave.nn.family import register_family


def packed_mlp(fmt="4", seed: int = 0, **options) -> nn.Module:
    torch.manual_seed(seed)
    return pack_model(quantize_model(MLPClassifier(40, 5, (24, 12), layer_norm=True), QuantPlan.parse(fmt, **options)))


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


def _files(directory) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in ("model.safetensors", "manifest.json")}


@pytest.mark.parametrize("fmt", [*registered_formats(), "int4-g8", "int8-float"])
def test_an_artifact_saved_after_a_forward_is_byte_identical_to_one_saved_before(tmp_path, fmt):
    """The first forward releases the packed buffers of layers whose kernel inverts its layout; saving re-derives
    them, so the files do not change, and neither do those of the loaded model saved again after it ran."""
    name, _, variant = fmt.partition("-")
    options = {"g8": {"group_size": 8}, "float": {"activations": "float"}}.get(variant, {})
    model = packed_mlp(name, **options)
    x = torch.randn(6, 40)
    before = _files(artifact.save(model, tmp_path / "before"))
    y = model(x)
    after = _files(artifact.save(model, tmp_path / "after"))
    assert after == before
    loaded = artifact.load(tmp_path / "after")
    assert torch.equal(loaded(x), y)
    assert _files(artifact.save(loaded, tmp_path / "reloaded")) == before


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
        "options": {"group_size": 8, "activations": "int8", "grid": "symmetric", "act_recipe": "zero_point"},
        "shape": [24, 40],
        "bias": True,
        "tensors": ["codes", "scale"],
    }
    assert manifest["layers"]["body.8"]["format"] == "fp32"
    assert manifest["normalization"] == {"norm": {"mode": "raw", "tensors": ["norm.shift", "norm.scale"]}}
    codes = stored["body.0.codes"].numpy().tobytes()
    assert manifest["tensors"]["body.0.codes"] == {
        "dtype": "uint8", "shape": [24, 20], "sha256": hashlib.sha256(codes).hexdigest()
    }


@pytest.mark.parametrize(("fmt", "old_options"), [
    ("2", {"activations": "float", "grid": "symmetric"}), ("4", {"activations": "float"}),
    ("bitnet", {"activations": "float"}), ("8", {"activations": "int8"}),
])
def test_an_artifact_written_before_the_activation_and_grid_options_keeps_its_old_meaning(tmp_path, fmt, old_options):
    """Older manifests list no ``activations`` / ``grid``: int2..int7 and ternary ran float activations then, and
    int2 three levels; loading them must not switch to today's defaults (W·A8, four int2 levels)."""
    model = packed_mlp(fmt, **old_options)
    directory = artifact.save(model, tmp_path / "old")

    def drop_options(manifest: dict) -> None:
        for spec in manifest["layers"].values():
            for key in old_options:
                spec["options"].pop(key, None)

    reseal(directory, drop_options)  # a consistent older manifest: checksums match, the new options are absent
    loaded = artifact.load(directory)
    for path in ("body.0", "body.4", "body.8"):
        assert loaded.get_submodule(path).fmt.options() == model.get_submodule(path).fmt.options()
    x = torch.randn(20, 40)
    assert torch.equal(loaded(x), model(x))


def test_mixed_precision_and_ptq_report_survive_a_round_trip(tmp_path):
    torch.manual_seed(0)
    plan = QuantPlan.parse("4", layer_formats=["1", "qesc", "8"])
    packed = ptq(MLPClassifier(40, 5, (24, 12)), plan, torch.randn(30, 40))
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
    register_family("two-experts-test", TwoExperts)
    torch.manual_seed(0)
    model = TwoExperts(20, 3)
    quantize_model(model, QuantPlan.parse("8", layer_formats=["2", "4", "1", "bitnet", "qesc", "8"]))
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
    register_family("tied-test", Tied)
    torch.manual_seed(0)
    packed = pack_model(quantize_model(Tied(), QuantPlan.parse("fp32", layer_formats=["8", "fp32"])))
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
    reseal(a, lambda m: m["architecture"].update(name="transformer-xl"))
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
    with pytest.raises(ArtifactError, match="norm.shift"):
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


# --- Nothing in the files is trusted (issue 13, item 2) ---------------------------------------------------------


def wide_mlp(fmt: str, seed: int = 0) -> nn.Module:
    """40 -> 130 -> 32 -> 10: the 130-wide input of the middle layer needs 3 words of 64 bits per row."""
    torch.manual_seed(seed)
    return pack_model(quantize_model(MLPClassifier(40, 10, (130, 32)), fmt))


def reference_output(model: nn.Module) -> torch.Tensor:
    return model(torch.randn(16, 40, generator=torch.Generator().manual_seed(7)))


def test_any_edit_of_a_saved_manifest_is_refused_by_its_digest(tmp_path):
    a = artifact.save(packed_mlp("8"), tmp_path / "a")
    edit_manifest(a, lambda m: m["architecture"]["config"].update(activation="hardtanh"))
    with pytest.raises(ArtifactError, match="changed after it was saved"):
        artifact.load(a)


@pytest.mark.parametrize("fmt", ["int8", "binary", "qesc", "ternary", "fp16"])
def test_a_flipped_byte_in_any_tensor_is_a_checksum_error_naming_it(tmp_path, fmt):
    source = artifact.save(wide_mlp(fmt), tmp_path / "source")
    for name, (begin, end) in data_offsets(source).items():
        copy = tmp_path / name
        shutil.copytree(source, copy)
        flip_byte(copy, (begin + end) // 2, 0x10)
        with pytest.raises(ArtifactError, match=f"'{name}' does not match its sha256"):
            artifact.load(copy)


@pytest.mark.parametrize("fmt", ["binary", "qesc"])
def test_an_enlarged_layer_shape_is_refused_before_any_kernel_runs(tmp_path, fmt):
    a = artifact.save(wide_mlp(fmt), tmp_path / "a")
    reseal(a, lambda m: (m["layers"]["body.0"].update(shape=[1000000, 40]),
                         m["layers"]["body.3"].update(shape=[32, 1000000])))
    with pytest.raises(ArtifactError, match="body.0"):
        artifact.load(a)


def test_an_enlarged_architecture_is_checked_without_allocating_it(tmp_path):
    a = artifact.save(wide_mlp("binary"), tmp_path / "a")
    huge = 10**12  # 4 TB of float32 weights if the skeleton were allocated
    reseal(a, lambda m: (m["architecture"]["config"].update(hidden=[huge, 32]),
                         m["layers"]["body.0"].update(shape=[huge, 40]),
                         m["layers"]["body.3"].update(shape=[32, huge])))
    with pytest.raises(ArtifactError, match="body.0"):
        artifact.load(a)


def test_a_short_bits_tensor_is_refused(tmp_path):
    a = artifact.save(wide_mlp("binary"), tmp_path / "a")
    reseal(a, tensors_change=lambda t: t.update({"body.3.bits": t["body.3.bits"][:, :1]}))
    with pytest.raises(ArtifactError, match=r"body\.3\.bits.*int64 \[32, 3\]"):
        artifact.load(a)


def test_an_alias_to_a_shorter_bias_is_refused(tmp_path):
    a = artifact.save(wide_mlp("int8"), tmp_path / "a")

    def alias(m: dict) -> None:
        m["aliases"]["body.3.bias"] = "body.6.bias"

    reseal(a, alias, lambda t: t.pop("body.3.bias"))
    with pytest.raises(ArtifactError, match=r"body\.3\.bias"):
        artifact.load(a)


def test_a_one_element_bias_is_refused(tmp_path):
    a = artifact.save(wide_mlp("int8"), tmp_path / "a")
    reseal(a, tensors_change=lambda t: t.update({"body.6.bias": t["body.6.bias"][:1]}))
    with pytest.raises(ArtifactError, match=r"body\.6\.bias"):
        artifact.load(a)


@pytest.mark.parametrize("old, new", [("int8", "int4"), ("int2", "ternary"), ("int4", "int8"), ("binary", "qesc")])
def test_a_relabelled_layer_format_is_refused(tmp_path, old, new):
    a = artifact.save(wide_mlp(old), tmp_path / "a")
    reseal(a, lambda m: [spec.update(format=new, options={}) for spec in m["layers"].values()])
    with pytest.raises(ArtifactError, match="body.0"):
        artifact.load(a)


def test_an_int8_code_of_minus_128_is_outside_the_range_and_refused(tmp_path):
    a = artifact.save(wide_mlp("int8"), tmp_path / "a")
    reseal(a, tensors_change=lambda t: t["body.0.codes"].__setitem__((0, 0), 128))  # uint8 128 = int8 -128
    with pytest.raises(ArtifactError, match=r"code -128 .*\[-127, 127\]"):
        artifact.load(a)


@pytest.mark.parametrize("name, value", [("norm.scale", float("nan")), ("norm.shift", float("inf")),
                                         ("body.0.scale", float("nan")), ("body.0.bias", float("nan")),
                                         ("norm.scale", 0.0)])
def test_non_finite_values_and_a_zero_normaliser_scale_are_refused(tmp_path, name, value):
    torch.manual_seed(0)
    from qwave.data.normalize import fit_normalizer

    model = MLPClassifier(40, 10, (16,), normalize=fit_normalizer(torch.randn(30, 40).numpy(), "standard"))
    a = artifact.save(pack_model(quantize_model(model, "8")), tmp_path / "a")
    reseal(a, tensors_change=lambda t: t[name].view(-1).__setitem__(0, value))
    with pytest.raises(ArtifactError, match=r"norm|body\.0"):
        artifact.load(a)


MALFORMED = {
    "architecture config as a string": lambda m: m["architecture"].update(config="abc"),
    "layers as a list": lambda m: m.update(layers=[1, 2]),
    "shape of strings": lambda m: m["layers"]["body.0"].update(shape=["a", "b"]),
    "3-D shape": lambda m: m["layers"]["body.0"].update(shape=[130, 40, 1]),
    "negative shape": lambda m: m["layers"]["body.0"].update(shape=[-130, 40]),
    "bias not a boolean": lambda m: m["layers"]["body.0"].update(bias="yes"),
    "bad option value": lambda m: m["layers"]["body.0"].update(options={"group_size": "x"}),
    "unknown option": lambda m: m["layers"]["body.0"].update(options={"zero_point": 3}),
    "unknown format": lambda m: m["layers"]["body.0"].update(format="int9"),
    "tensors not a list": lambda m: m["layers"]["body.0"].update(tensors="codes"),
    "unknown config key": lambda m: m["architecture"]["config"].update(depth=3),
    "config value of a wrong type": lambda m: m["architecture"]["config"].update(hidden="wide"),
    "layer at no module": lambda m: m["layers"].update({"body.99": m["layers"]["body.0"]}),
    "classes as a string": lambda m: m.update(classes="abc"),
    "more classes than outputs": lambda m: m.update(classes=[str(i) for i in range(11)]),
    "tensor shape of strings": lambda m: m["tensors"]["body.0.codes"].update(shape=["a"]),
    "aliases as a list": lambda m: m.update(aliases=["x"]),
    "alias to nothing": lambda m: m["aliases"].update({"body.0.bias": "nowhere"}),
    "manifest a list": lambda m: m.clear(),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_manifest_is_one_artifact_error_not_a_traceback(tmp_path, case):
    a = artifact.save(wide_mlp("int8"), tmp_path / "a")
    reseal(a, MALFORMED[case])
    with pytest.raises(ArtifactError) as err:
        artifact.load(a)
    assert "\n" not in str(err.value)


MOE_CONFIG_EDITS = {
    "unknown key": lambda c: c.update(experts=3),
    "curiosity with a wrong key": lambda c: c.update(curiosity={"enabled": True, "temperature": 2.0}),
    "formats not a list": lambda c: c.update(formats="int8"),
    "unknown expert format": lambda c: c.update(formats=["int9", "int8", "int4"]),
    "fewer experts": lambda c: c.update(formats=["ternary", "int4"]),
    "top_k a string": lambda c: c.update(top_k="one"),
}


@pytest.fixture(scope="module")
def moe_model():
    from qwave.moe.model import MoEClassifier, quantize_moe

    torch.manual_seed(0)
    model = MoEClassifier(40, 10, ["bitnet", "4", "8"], (16,), curiosity={"enabled": True, "mc_samples": 2})
    return pack_model(quantize_moe(model))


@pytest.mark.parametrize("case", sorted(MOE_CONFIG_EDITS))
def test_a_moe_config_with_wrong_keys_or_values_is_one_artifact_error(tmp_path, moe_model, case):
    a = artifact.save(moe_model, tmp_path / "moe")
    reseal(a, lambda m: MOE_CONFIG_EDITS[case](m["architecture"]["config"]))
    with pytest.raises(ArtifactError) as err:
        artifact.load(a)
    assert "\n" not in str(err.value)


def test_a_moe_artifact_round_trips_through_the_checks(tmp_path, moe_model):
    loaded = artifact.load(artifact.save(moe_model, tmp_path / "moe"))
    assert torch.equal(reference_output(loaded), reference_output(moe_model))


def test_a_huge_safetensors_header_length_is_one_line_in_size_and_load(tmp_path, capsys):
    from qwave.cli import main

    a = artifact.save(packed_mlp("4"), tmp_path / "a")
    raw = bytearray((a / "model.safetensors").read_bytes())
    raw[:8] = struct.pack("<Q", 2**40)
    (a / "model.safetensors").write_bytes(bytes(raw))
    assert main(["size", str(a)]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.safetensors" in err and "\n" not in err
    with pytest.raises(ArtifactError, match="header"):
        artifact.load(a)


def test_format_version_1_artifacts_without_checksums_load_only_when_allowed(tmp_path):
    model = wide_mlp("int4")
    a = artifact.save(model, tmp_path / "a")
    manifest = json.loads((a / "manifest.json").read_text())
    manifest["format_version"] = 1
    del manifest["integrity"]
    for info in manifest["tensors"].values():
        del info["sha256"]
    (a / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="allow_unverified"):
        artifact.load(a)
    assert torch.equal(reference_output(artifact.load(a, allow_unverified=True)), reference_output(model))


def test_version_2_without_integrity_or_checksums_is_refused(tmp_path):
    a = artifact.save(packed_mlp("4"), tmp_path / "a")
    edit_manifest(a, lambda m: m.pop("integrity"))
    with pytest.raises(ArtifactError, match="integrity"):
        artifact.load(a)
    b = artifact.save(packed_mlp("4"), tmp_path / "b")
    reseal(b, lambda m: m["tensors"]["body.0.codes"].pop("sha256"))
    with pytest.raises(ArtifactError, match="sha256"):
        artifact.load(b)


def test_artifacts_get_the_permissions_the_umask_gives(tmp_path):
    old = os.umask(0o022)
    try:
        a = artifact.save(packed_mlp("4"), tmp_path / "a")
    finally:
        os.umask(old)
    assert stat.S_IMODE(a.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in a.iterdir()} == {0o644}
