"""The W·A8 kernels (4-bit and 2-bit unsigned codes, both variants) against a brute-force int64 reference, and
every format they serve against its own reference recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qwave import kernels
from qwave.formats import get_format

from .brute import ACTS, variants, wa8

pytestmark = pytest.mark.skipif(not kernels.FAST_KERNELS, reason=f"fast kernels unavailable: {kernels.REASON}")

CASES = [(7, 77, 1, None), (13, 130, 6, 50), (70, 301, 9, 40), (37, 301, 300, None), (3, 1, 2, None),
         (17, 5, 5, 2), (65, 64, 4, 32), (5, 1000, 7, None)]
# (bits, alpha, beta): int4 symmetric, 4-bit half-step, int3 symmetric, int2 symmetric, int2 half-step, ternary.
MAPS = [(4, 1, 8), (4, 2, 15), (4, 1, 4), (2, 1, 2), (2, 2, 3), (2, 1, 1)]


@pytest.mark.parametrize("isa", variants())
@pytest.mark.parametrize(("bits", "alpha", "beta"), MAPS)
@pytest.mark.parametrize(("out", "n", "batch", "group_size"), CASES)
def test_lowbit_kernel_equals_brute_force_integer_reference(isa, bits, alpha, beta, out, n, batch, group_size):
    from qwave.kernels import lowbit

    rng = np.random.default_rng(out * 1000 + n + bits)
    u = rng.integers(0, 2**bits, (out, n))
    u[0, :] = 2**bits - 1  # extreme codes: every product at its largest, the int16 chains at their bound
    u[-1, ::2] = 0
    groups = -(-n // (n if group_size is None else min(group_size, n)))
    scale = rng.uniform(0.01, 2.0, (out, groups)).astype(np.float16).astype(np.float32)
    x = rng.standard_normal((batch, n)).astype(np.float32)
    x[0, :] = 127.0  # activation codes all 127 on one row, all -127 on another
    x[-1, :] = -1.0
    bias = rng.standard_normal(out).astype(np.float32)
    state = lowbit.prepare_unsigned(u, torch.from_numpy(scale).half(), (out, n), group_size, bits, alpha, beta, isa)
    act = "hardtanh" if batch % 2 else "relu"  # both epilogues over the cases (batch sizes 1 and odd: hardtanh)
    got = lowbit.KERNEL.run_np(state, x, bias, ACTS[act])
    assert np.array_equal(got, wa8(x, alpha * u - beta, scale, group_size, bias, act=act))


@pytest.mark.parametrize("isa", variants())
@pytest.mark.parametrize("bits", [4, 2])
def test_lowbit_long_groups_are_summed_exactly_across_accumulator_blocks(isa, bits):
    from qwave.kernels import lowbit

    n = 140_000  # more than two int32 blocks of 65,536 inputs
    u = np.full((3, n), 2**bits - 1)
    u[1, ::3] = 0
    x = np.full((2, n), 127.0, dtype=np.float32)
    x[1, ::2] = -127.0
    state = lowbit.prepare_unsigned(u, torch.ones(3, 1).half(), (3, n), None, bits, 2, 2**bits - 1, isa)
    got = lowbit.KERNEL.run_np(state, x, np.empty(0, np.float32), 0)
    assert np.array_equal(got, wa8(x, 2 * u - (2**bits - 1), np.ones((3, 1), np.float32), None))


FORMATS = [("int4", {}), ("int4", {"group_size": 32}), ("int4", {"grid": "halfstep"}), ("int3", {}),
           ("int2", {}), ("int2", {"grid": "symmetric"}), ("int2", {"group_size": 50}), ("ternary", {})]


@pytest.mark.parametrize("isa", variants())
@pytest.mark.parametrize(("name", "options"), FORMATS)
@pytest.mark.parametrize("batch", [1, 9])
def test_lowbit_formats_equal_their_reference_recipe_bit_for_bit(isa, name, options, batch):
    from qwave.kernels import lowbit

    fmt = get_format(name, **options)
    gen = torch.Generator().manual_seed(batch)
    w, x = torch.randn(37, 301, generator=gen), torch.randn(batch, 301, generator=gen)
    packed = fmt.pack(fmt.quantize(w))
    got = lowbit.KERNEL.run_np(lowbit.prepare(fmt, packed, (37, 301), isa), x.numpy(), np.empty(0, np.float32), 0)
    assert torch.equal(torch.from_numpy(got), fmt.matmul(x, packed, (37, 301)))
    q = fmt.unpack(packed, (37, 301))
    size = getattr(fmt, "group_size", None)
    assert np.array_equal(got, wa8(x.numpy(), q.codes.numpy(), q.scale.float().numpy(), size))


@pytest.mark.parametrize("name", ["int4", "int3", "int2", "ternary"])
def test_the_registered_kernel_serves_the_default_w_a8_formats_and_leaves_weight_only_ones(name):
    assert kernels.kernel_for(get_format(name), "cpu").name.startswith("lowbit-a8")
    assert kernels.kernel_for(get_format(name, activations="float"), "cpu").name == "dequant-cached-fp32"
