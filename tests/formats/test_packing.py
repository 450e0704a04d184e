"""Packing helpers: bit-exact layouts on hand-made examples, and pack -> unpack identity on random inputs."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qwave.formats.packing import (
    pack_bits,
    pack_trits,
    pack_words,
    popcount,
    unpack_bits,
    unpack_trits,
    unpack_words,
)

shapes = st.tuples(st.integers(1, 4), st.integers(1, 200))


def test_pack_bits_int4_puts_the_first_code_in_the_low_nibble():
    codes = torch.tensor([[1, -1, 7]])
    # 1 -> 0x1, -1 -> 0xF, 7 -> 0x7; padding nibble 0
    assert pack_bits(codes, 4).tolist() == [[0xF1, 0x07]]


def test_pack_bits_int8_is_the_uint8_view_of_int8_codes():
    codes = torch.tensor([[-127, 0, 5, 127]], dtype=torch.int8)
    assert torch.equal(pack_bits(codes, 8), codes.view(torch.uint8))


def test_pack_bits_int2_is_a_little_endian_stream():
    codes = torch.tensor([[1, -1, 0, 1, -1]])  # 01, 11, 00, 01 | 11
    assert pack_bits(codes, 2).tolist() == [[0b01_00_11_01, 0b11]]


def test_pack_trits_is_base3_with_padding_digit_one():
    trits = torch.tensor([[-1, 0, 1, 1, -1, 1]])
    first = 0 * 1 + 1 * 3 + 2 * 9 + 2 * 27 + 0 * 81
    second = 2 + 1 * (3 + 9 + 27 + 81)
    assert pack_trits(trits).tolist() == [[first, second]]


def test_pack_words_sets_bit_j_of_word_i_for_element_64i_plus_j():
    mask = torch.zeros(1, 130, dtype=torch.bool)
    mask[0, [0, 63, 64, 129]] = True
    words = pack_words(mask)
    as_uint = words.numpy().view(np.uint64)
    assert as_uint.tolist() == [[1 | (1 << 63), 1, 2]]


@settings(max_examples=40, deadline=None)
@given(shape=shapes, k=st.integers(1, 8), seed=st.integers(0, 2**31))
def test_pack_bits_roundtrip(shape, k, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-(2 ** (k - 1)), 2 ** (k - 1), shape, generator=g).to(torch.int8)
    packed = pack_bits(codes, k)
    assert packed.shape == (shape[0], -(-shape[1] * k // 8)) and packed.dtype == torch.uint8
    assert torch.equal(unpack_bits(packed, k, shape[1]), codes)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31))
def test_pack_trits_roundtrip(shape, seed):
    g = torch.Generator().manual_seed(seed)
    trits = torch.randint(-1, 2, shape, generator=g).to(torch.int8)
    packed = pack_trits(trits)
    assert packed.shape == (shape[0], -(-shape[1] // 5))
    assert torch.equal(unpack_trits(packed, shape[1]), trits)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31))
def test_pack_words_roundtrip(shape, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.randint(0, 2, shape, generator=g).bool()
    packed = pack_words(mask)
    assert packed.shape == (shape[0], -(-shape[1] // 64)) and packed.dtype == torch.int64
    assert torch.equal(unpack_words(packed, shape[1]), mask)


@settings(max_examples=40, deadline=None)
@given(words=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=20))
def test_popcount_matches_python_bin_count(words):
    expected = [bin(w & (2**64 - 1)).count("1") for w in words]
    assert popcount(torch.tensor(words, dtype=torch.int64)).tolist() == expected
