"""Size accounting: closed-form byte counts, artifact bytes read from disk, tied and shared storage once."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from qwave import artifact
from qwave.nn import MLPClassifier, pack_model, quantize_model
from qwave.size import SizeSpec, artifact_report, build_mlp, report, resident_bytes, size_table

REFERENCE = [(640, 1536), (320, 640), (50, 320)]  # (out, in) of the reference MLP 1536 -> 640 -> 320 -> 50
NORM_BYTES = 2 * 1536 * 4  # normaliser shift and scale, float32


def weight_bytes(fmt: str, out: int, n: int) -> int:
    """Packed bytes of one [out, n] weight, from the layouts in qwave.formats.base, per-channel fp16 scales."""
    if fmt == "fp32":
        return 4 * out * n
    if fmt in ("fp16", "bf16"):
        return 2 * out * n
    if fmt.startswith("int"):
        return out * math.ceil(n * int(fmt[3:]) / 8) + 2 * out
    words = 8 * out * math.ceil(n / 64)
    return {"binary": words, "qesc": 2 * words, "ternary": out * math.ceil(n / 5)}[fmt] + 2 * out


FORMATS = ["fp32", "fp16", "bf16", "int8", "int4", "int2", "binary", "ternary", "qesc"]


def expected_reference_bytes(fmt: str) -> int:
    return NORM_BYTES + sum(weight_bytes(fmt, o, i) + 4 * o for o, i in REFERENCE)


def test_reference_mlp_rows_match_the_closed_form_and_saved_artifacts_byte_for_byte(tmp_path):
    rows = size_table(SizeSpec(), FORMATS)
    weights = sum(o * i for o, i in REFERENCE)
    assert [r["format"] for r in rows] == FORMATS
    fp32 = expected_reference_bytes("fp32")
    for row in rows:
        fmt = row["format"]
        assert row["stored_bytes"] == expected_reference_bytes(fmt), fmt
        assert row["weights"] == weights and row["bits_per_weight"] == row["stored_bytes"] * 8 / weights
        assert row["reduction_vs_fp32"] == fp32 / row["stored_bytes"]
        saved = artifact.save(build_mlp(SizeSpec(), fmt), tmp_path / fmt)
        assert artifact_report(saved).stored_bytes == row["stored_bytes"], fmt


def test_group_size_keep_last_fp_and_mixed_rows_follow_the_closed_form():
    spec = SizeSpec(group_size=64, keep_last_fp=True, layer_formats=("1", "1", "8"))
    rows = {r["format"]: r for r in size_table(spec, ["4"])}
    groups = sum(o * math.ceil(i / 64) for o, i in REFERENCE[:2])
    int4 = NORM_BYTES + sum(o * i // 2 + 4 * o for o, i in REFERENCE[:2]) + 2 * groups + 4 * 50 * 321
    assert rows["int4"]["stored_bytes"] == int4
    mixed = NORM_BYTES + sum(weight_bytes("binary", o, i) + 4 * o for o, i in REFERENCE[:2]) + 4 * 50 * 321
    assert rows["mixed[binary,binary,int8]"]["stored_bytes"] == mixed  # keep_last_fp overrides the last entry


@pytest.mark.parametrize("fmt", ["fp32", "fp16", "int4", "binary", "ternary", "qesc"])
def test_report_of_a_loaded_artifact_equals_the_file_bytes(tmp_path, fmt):
    torch.manual_seed(0)
    model = pack_model(quantize_model(MLPClassifier(70, 6, (33,), layer_norm=True), fmt, group_size=None))
    directory = artifact.save(model, tmp_path / "a")
    sizes = artifact_report(directory)
    from_tensors = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert report(artifact.load(directory)).stored_bytes == sizes.stored_bytes == from_tensors
    path = directory / "model.safetensors"
    with open(path, "rb") as f:
        header_length = int.from_bytes(f.read(8), "little")
    assert sizes.header_bytes == header_length
    assert sizes.file_bytes == os.path.getsize(path) == 8 + sizes.header_bytes + sizes.stored_bytes
    assert sizes.manifest_bytes == os.path.getsize(directory / "manifest.json")
    assert sizes.weight_count == 70 * 33 + 33 * 6


class ToyTransformer(nn.Module):
    """Embedding 5000 x 256 tied to the output head; 3 blocks of 256->768, 256->256, 256->1024, 1024->256."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5000, 256)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "qkv": nn.Linear(256, 768),
                    "proj": nn.Linear(256, 256),
                    "up": nn.Linear(256, 1024),
                    "down": nn.Linear(1024, 256),
                }
            )
            for _ in range(3)
        )
        self.head = nn.Linear(256, 5000, bias=False)
        self.head.weight = self.embed.weight


def test_tied_embedding_transformer_with_16bit_linears_is_1_48x_smaller_not_34x():
    float_model = ToyTransformer()
    block_linear = 256 * 768 + 256 * 256 + 256 * 1024 + 1024 * 256
    biases = 3 * (768 + 256 + 1024 + 256) * 4
    fp32 = report(float_model)
    assert fp32.stored_bytes == 5000 * 256 * 4 + 3 * block_linear * 4 + biases  # tied head counted once
    quantized = pack_model(quantize_model(float_model, "fp16", layer_formats=["fp16"] * 12 + ["fp32"]))
    half = report(quantized)
    assert half.stored_bytes == 5000 * 256 * 4 + 3 * block_linear * 2 + biases
    assert round(fp32.stored_bytes / half.stored_bytes, 2) == 1.48
    shared = [r for r in half.rows if r.shared_with is not None]
    assert [(r.name, r.shared_with, r.bytes) for r in shared] == [("head.weight", "embed.weight", 0)]


def test_a_module_used_twice_is_counted_once_and_bytes_under_splits_by_prefix():
    shared = nn.Linear(10, 10)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.LayerNorm(10))
    model.register_buffer("counter", torch.zeros(3, dtype=torch.int64))
    rep = report(model)
    assert rep.stored_bytes == (100 + 10) * 4 + 20 * 4 + 3 * 8
    assert rep.bytes_under("0") == 110 * 4 and rep.bytes_under("2") == 0 and rep.bytes_under("3") == 80
    assert rep.weight_count == 100 and rep.bits_per_weight == rep.stored_bytes * 8 / 100


def test_overlapping_views_of_one_storage_count_each_byte_once():
    class Views(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            base = torch.zeros(100)
            self.register_buffer("a", base[:60])
            self.register_buffer("b", base[40:])
            self.register_buffer("c", base[10:20])

    rows = {r.name: r for r in report(Views()).rows}
    assert (rows["a"].bytes, rows["b"].bytes, rows["c"].bytes) == (240, 160, 0)
    assert rows["b"].shared_with == "a" and report(Views()).stored_bytes == 400


def test_embedding_conv_gru_and_norm_tensors_all_count():
    model = nn.ModuleDict(
        {"emb": nn.Embedding(7, 3), "conv": nn.Conv1d(3, 4, 5), "gru": nn.GRU(4, 6), "bn": nn.BatchNorm1d(4)}
    )
    expected = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert report(model).stored_bytes == expected and report(model).weight_count == 0


def test_resident_bytes_count_the_arrays_held_after_the_first_forward_including_kernel_copies():
    from qwave import kernels

    model = build_mlp(SizeSpec(in_dim=130, num_classes=7, hidden=(33,)), "int4")
    layers = [(33, 130), (7, 33)]
    packed = 2 * 130 * 4 + sum(weight_bytes("int4", o, i) + 4 * o for o, i in layers)  # closed form, as stored
    assert resident_bytes(model) == packed  # nothing prepared yet
    with torch.no_grad():
        model(torch.randn(3, 130))
    # int4 (W4A8) keeps its codes in the kernel's layout when the fast kernels are on: 4 bits per weight over the
    # columns padded to the register tile and the inputs padded to 4, plus a float32 scale per padded column.
    copies = 0
    if kernels.status()["fast_kernels"]:
        from qwave.kernels.int8 import ISA, TILES

        columns = [math.ceil(o / TILES[ISA]) * TILES[ISA] for o, _ in layers]
        copies = sum(c * math.ceil(i / 4) * 4 // 2 + 4 * c for c, (_, i) in zip(columns, layers, strict=True))
    assert resident_bytes(model) == packed + copies
