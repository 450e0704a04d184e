"""Size accounting: closed-form byte counts, artifact bytes read from disk, tied and shared storage once."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from qwave import artifact, kernels
from qwave.formats import QuantPlan
from qwave.nn import MLPClassifier, QuantLinear, pack_model, quantize_model
from qwave.nn.mlp import size_model as build_mlp
from qwave.size import SizeSpec, artifact_report, report, resident_bytes, resident_fields, size_table

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


def kernels_on() -> bool:
    return kernels.status()["fast_kernels"]


FORMATS = ["fp32", "fp16", "bf16", "int8", "int4", "int2", "binary", "ternary", "qesc"]


def expected_reference_bytes(fmt: str) -> int:
    return NORM_BYTES + sum(weight_bytes(fmt, o, i) + 4 * o for o, i in REFERENCE)


def test_reference_mlp_rows_match_the_closed_form_and_saved_artifacts_byte_for_byte(tmp_path):
    rows = size_table(SizeSpec(), [QuantPlan.parse(f) for f in FORMATS])
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
    plans = [QuantPlan.parse(f, group_size=64, keep_last_fp=True) for f in ("4", "1-1-8")]
    rows = {r["format"]: r for r in size_table(SizeSpec(), plans)}
    groups = sum(o * math.ceil(i / 64) for o, i in REFERENCE[:2])
    int4 = NORM_BYTES + sum(o * i // 2 + 4 * o for o, i in REFERENCE[:2]) + 2 * groups + 4 * 50 * 321
    assert rows["int4"]["stored_bytes"] == int4
    mixed = NORM_BYTES + sum(weight_bytes("binary", o, i) + 4 * o for o, i in REFERENCE[:2]) + 4 * 50 * 321
    assert rows["mixed[binary,binary,int8]"]["stored_bytes"] == mixed  # keep_last_fp overrides the last entry


@pytest.mark.parametrize("fmt", ["fp32", "fp16", "int4", "binary", "ternary", "qesc"])
def test_report_of_a_loaded_artifact_equals_the_file_bytes(tmp_path, fmt):
    torch.manual_seed(0)
    model = pack_model(quantize_model(MLPClassifier(70, 6, (33,), layer_norm=True), fmt))
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
    quantized = pack_model(quantize_model(float_model, QuantPlan.parse("fp16", layer_formats=["fp16"] * 12 + ["fp32"])))
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


def kernel_layout_bytes(fmt: str, out: int, n: int) -> int:
    """Closed form of the bytes one [out, n] layer's fast-kernel layout holds (per-channel scales), from the
    layouts in the kernel modules' docstrings: columns padded to the variant's register tile, inputs to its step."""
    from qwave.kernels import half, int8

    if fmt in ("fp16", "bf16"):
        return 2 * n * math.ceil(out / half.TILES[half.ISA]) * half.TILES[half.ISA]
    if fmt in ("binary", "qesc"):
        planes = 1 if fmt == "binary" else 2
        return 8 * planes * math.ceil(n / 64) * math.ceil(out / 16) * 16 + 4 * out  # uint64 planes, float32 scales
    columns = math.ceil(out / int8.TILES[int8.ISA]) * int8.TILES[int8.ISA]
    scales = 4 * columns + 4 * columns  # float32 scale and int32 column sum of the codes per padded column
    if fmt in ("int8", "int7", "int6", "int5"):  # one byte per code, inputs padded to 4
        return columns * math.ceil(n / 4) * 4 + scales
    if fmt in ("int4", "int3"):  # 4-bit fields, inputs padded to 4
        return columns * math.ceil(n / 4) * 4 // 2 + scales
    step = 8 if int8.ISA == "avx2" else 4  # 2-bit fields (int2, ternary), inputs padded to the step
    return columns * math.ceil(n / step) * step // 4 + scales


def state_array_bytes(state) -> int:
    """Bytes of the NumPy arrays a kernel state holds, enumerated from its dataclass fields (independently of the
    kernel's own ``cached_bytes``)."""
    total = 0
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        for array in value if isinstance(value, tuple) else (value,):
            total += array.nbytes if isinstance(array, np.ndarray) else 0
    return total


def test_resident_bytes_count_the_arrays_held_after_the_first_forward_and_drop_the_released_buffers():
    from qwave import kernels

    model = build_mlp(SizeSpec(in_dim=130, num_classes=7, hidden=(33,)), "int4")
    layers = [(33, 130), (7, 33)]
    packed = sum(weight_bytes("int4", o, i) for o, i in layers)  # closed form, as stored
    held = 2 * 130 * 4 + sum(4 * o for o, _ in layers)  # normaliser and biases
    assert resident_bytes(model) == held + packed  # nothing prepared yet
    with torch.no_grad():
        model(torch.randn(3, 130))
    if not kernels.status()["fast_kernels"]:  # the reference recipe reads the stored tensors
        assert resident_bytes(model) == held + packed
        return
    # int4 (W4A8) then holds its codes only in the kernel's layout: its packed buffers are released.
    assert resident_bytes(model) == held + sum(kernel_layout_bytes("int4", o, i) for o, i in layers)


@pytest.mark.parametrize("fmt", ["int8", "binary", "fp16"])
def test_the_size_report_is_the_same_before_and_after_the_first_forward_with_same_shaped_layers(fmt):
    model = build_mlp(SizeSpec(in_dim=64, num_classes=64, hidden=(64, 64)), fmt)  # three 64 x 64 layers
    before = report(model)
    with torch.no_grad():
        model(torch.randn(2, 64))
    after = report(model)
    assert (after.stored_bytes, after.weight_count, after.params) == (before.stored_bytes, 3 * 64 * 64, before.params)
    assert [vars(r) for r in after.rows] == [vars(r) for r in before.rows]


DENSE = ["int8", "int4", "int2", "binary", "qesc", "fp16", "bf16"]  # the kernel layout has the stored bits/weight
WIDER = {"ternary": 2 / 1.6, "int3": 4 / 3, "int5": 8 / 5, "int6": 8 / 6, "int7": 8 / 7}  # its bits / stored bits


@pytest.mark.skipif(not kernels_on(), reason="fast kernels unavailable: the layers keep their stored tensors")
@pytest.mark.parametrize("fmt", DENSE + list(WIDER))
def test_a_1536x640_layer_holds_only_its_kernel_layout_within_1_1x_stored_where_the_layout_is_as_dense(fmt):
    out, n = 640, 1536
    torch.manual_seed(0)
    layer = pack_model(QuantLinear(n, out, fmt=fmt))
    stored = weight_bytes(fmt, out, n) + 4 * out  # packed weight and float32 bias, closed form
    assert report(layer).stored_bytes == stored
    layer(torch.randn(2, n))
    _, kernel, state = layer._kernel_state
    assert sum(t.nbytes for t in layer.buffers()) == 4 * out  # the bias: the packed buffers are released
    assert state_array_bytes(state) == layer.kernel_cached_bytes == kernel_layout_bytes(fmt, out, n)
    resident = resident_bytes(layer)
    assert resident == 4 * out + kernel_layout_bytes(fmt, out, n)
    fields = resident_fields(resident, stored)
    if fmt in DENSE:
        assert resident <= 1.1 * stored and fields["resident_flag"] == ""
    else:  # the kernel runs wider fields than the format stores: reported and flagged, never hidden
        assert fields["resident_vs_stored"] == pytest.approx(WIDER[fmt], rel=0.03) and fields["resident_flag"]


@pytest.mark.parametrize("fmt", ["int8", "int4", "ternary"])
def test_the_weight_only_float_option_holds_its_stored_tensors_and_a_float_copy_and_is_flagged(fmt):
    out, n = 64, 96
    layer = pack_model(QuantLinear(n, out, fmt=fmt, activations="float"))
    stored = weight_bytes(fmt, out, n) + 4 * out
    layer(torch.randn(2, n))
    copy = 4 * out * n if kernels_on() else 0
    assert resident_bytes(layer) == stored + copy
    assert bool(resident_fields(resident_bytes(layer), stored)["resident_flag"]) == kernels_on()


def test_size_table_resident_bytes_are_those_after_a_real_forward_and_only_wider_layouts_are_flagged():
    spec = SizeSpec()  # the reference MLP (a small one pads its last layer to a whole register tile)
    plans = [QuantPlan.parse(f) for f in ("fp32", "int8", "ternary", "binary")]
    rows = {r["format"]: r for r in size_table(spec, plans)}
    for fmt, row in rows.items():
        torch.manual_seed(spec.seed)
        model = build_mlp(spec, fmt)
        with torch.no_grad():
            model(torch.randn(3, spec.in_dim))
        assert row["resident_bytes"] == resident_bytes(model), fmt
        assert row["resident_vs_stored"] == row["resident_bytes"] / row["stored_bytes"]
    flagged = {fmt for fmt, row in rows.items() if row["resident_flag"]}
    assert flagged == ({"ternary"} if kernels_on() else set())
