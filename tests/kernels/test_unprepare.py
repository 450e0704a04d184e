"""Every invertible kernel layout gives back the format's packed tensors bit for bit (``Kernel.unprepare``), in
both variants' layouts, for odd shapes, group sizes and extreme codes; the layouts that are not invertible say so."""

from __future__ import annotations

import pytest
import torch

from qwave import kernels
from qwave.formats import get_format

pytestmark = pytest.mark.skipif(not kernels.FAST_KERNELS, reason=f"fast kernels unavailable: {kernels.REASON}")

# (out, in, group_size): out and in off every tile and step multiple, a single input, groups that do not divide the
# row, groups of 1 and 2, the reference MLP's input width.
SHAPES = [(7, 77, None), (13, 130, 50), (70, 301, 40), (3, 1, None), (17, 5, 2), (65, 64, 32), (1, 9, 1),
          (65, 1536, None)]
INT8_ISAS = ("avx2", "avx512vnni")  # both layouts are built on any CPU (prepare is NumPy only)
CASES = (
    [(f"int{k}", {"grid": "symmetric"}) for k in range(2, 9)]
    + [(f"int{k}", {"grid": "halfstep"}) for k in range(2, 8)]
    + [("ternary", {}), ("binary", {}), ("qesc", {}), ("fp16", {}), ("bf16", {})]
)
GROUPED = {f"int{k}" for k in range(2, 9)}


def _weight(out: int, n: int, seed: int) -> torch.Tensor:
    w = torch.randn(out, n, generator=torch.Generator().manual_seed(seed))
    w[0] = w[0].abs().max() * 4  # a row of extreme (largest) codes
    if out > 1:
        w[-1, ::2] = -1e3  # and of the most negative ones, mixed with small values
    return w


def _prepare_in(name: str, isa: str):
    """The registered kernel for ``name`` and its prepare in the variant ``isa`` (the layout of that CPU)."""
    from qwave.kernels import half, int8, lowbit, popcount

    if name in ("fp16", "bf16"):
        wide = "avx512" if isa == "avx512vnni" else "avx2"
        return half.KERNEL, lambda fmt, packed, shape: half.prepare_weight(packed["weight"], wide)
    if name in ("binary", "qesc"):
        wide = "avx512" if isa == "avx512vnni" else "avx2"
        kernel, prepare = ((popcount.BINARY, popcount.prepare_binary) if name == "binary"
                           else (popcount.QESC, popcount.prepare_qesc))
        return kernel, lambda fmt, packed, shape: prepare(fmt, packed, shape, wide)
    module = int8 if name in int8.FORMATS else lowbit
    return module.KERNEL, lambda fmt, packed, shape: module.prepare(fmt, packed, shape, isa)


def _assert_identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name


@pytest.mark.parametrize("isa", INT8_ISAS)
@pytest.mark.parametrize(("out", "n", "group_size"), SHAPES)
@pytest.mark.parametrize(("name", "options"), CASES, ids=[n + "-" + "-".join(map(str, o.values())) for n, o in CASES])
def test_unprepare_of_prepare_is_the_packed_tensors_bit_for_bit(name, options, out, n, group_size, isa):
    extra = {"group_size": group_size} if name in GROUPED else {}
    fmt = get_format(name, **options, **extra)
    packed = fmt.pack(fmt.quantize(_weight(out, n, seed=out * n)))
    kernel, prepare = _prepare_in(name, isa)
    assert kernel.unprepare is not None
    state = prepare(fmt, packed, (out, n))
    _assert_identical(kernel.unprepare(fmt, state), packed)


def test_unprepare_keeps_negative_zero_and_subnormal_16_bit_values():
    from qwave.kernels import half

    bits = torch.tensor([[0x8000, 0x0001, 0x03FF, 0x7BFF, 0xFBFF]], dtype=torch.int32).to(torch.int16)
    for dtype in (torch.float16, torch.bfloat16):
        weight = bits.view(dtype).repeat(3, 1)
        for isa in ("avx2", "avx512"):
            got = half.unprepare_weight(half.prepare_weight(weight, isa))["weight"]
            assert got.dtype == dtype and torch.equal(got.view(torch.int16), weight.view(torch.int16))


@pytest.mark.parametrize("name", ["int8", "int4", "int2", "ternary", "binary", "qesc", "fp16", "bf16"])
def test_every_default_format_runs_a_cpu_kernel_that_can_invert_its_layout(name):
    kernel = kernels.kernel_for(get_format(name), "cpu")
    assert kernel is not None and kernel.unprepare is not None


@pytest.mark.parametrize("name", ["int8", "int4", "ternary", "fp32"])
def test_float_copies_have_no_inverse_so_their_layers_keep_the_packed_tensors(name):
    fmt = get_format(name, **({} if name == "fp32" else {"activations": "float"}))
    kernel = kernels.kernel_for(fmt, "cpu")
    assert kernel is not None and kernel.name == "dequant-cached-fp32" and kernel.unprepare is None
