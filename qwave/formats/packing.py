"""Bit-level packing of integer codes, row by row (one row per output channel, rows padded independently).

Every function is pure and works on CPU or GPU tensors; ``pack_*`` and ``unpack_*`` are exact inverses.
The layouts are the ones documented in ``qwave.formats.base``.
"""

from __future__ import annotations

import torch

_TRIT_POWERS = (1, 3, 9, 27, 81)
# Bit j of a 64-bit word as an int64 value (bit 63 is the sign bit of the uint64 pattern stored as int64).
_WORD_BITS = [1 << j for j in range(63)] + [-(1 << 63)]


def _pad_columns(t: torch.Tensor, multiple: int, value: int) -> torch.Tensor:
    """Pad the last dimension of ``t`` with ``value`` up to a multiple of ``multiple``."""
    extra = -t.shape[-1] % multiple
    return torch.nn.functional.pad(t, (0, extra), value=value) if extra else t


def pack_bits(codes: torch.Tensor, k: int) -> torch.Tensor:
    """Pack signed k-bit codes into a little-endian bit stream per row.

    Args:
        codes: integer tensor ``[rows, n]`` with values in ``[-2^(k-1), 2^(k-1) - 1]``.
        k: bits per code, 1..8.
    Returns:
        uint8 tensor ``[rows, ceil(n*k/8)]``; code ``i`` occupies bits ``i*k .. i*k+k-1`` of the row (two's
        complement, least significant bit first); trailing padding bits are 0.
    """
    rows, n = codes.shape
    if 8 % k == 0:  # whole codes per byte: combine them directly instead of bit by bit
        per_byte = 8 // k
        unsigned = _pad_columns(codes.to(torch.int32) & ((1 << k) - 1), per_byte, 0)
        shifts = torch.arange(0, 8, k, device=codes.device, dtype=torch.int32)
        return (unsigned.reshape(rows, -1, per_byte) << shifts).sum(-1).to(torch.uint8)
    unsigned = codes.to(torch.int32) & ((1 << k) - 1)
    shifts = torch.arange(k, device=codes.device, dtype=torch.int32)
    bits = ((unsigned.unsqueeze(-1) >> shifts) & 1).reshape(rows, n * k)
    bits = _pad_columns(bits, 8, 0)
    bits = bits.reshape(rows, bits.shape[1] // 8, 8)
    weights = torch.tensor([1 << j for j in range(8)], device=codes.device, dtype=torch.int32)
    return (bits * weights).sum(-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, k: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`.

    Args:
        packed: uint8 tensor ``[rows, ceil(n*k/8)]``.
        k: bits per code, 1..8.
        n: number of codes per row.
    Returns:
        int8 tensor ``[rows, n]`` of sign-extended codes.
    """
    rows = packed.shape[0]
    if 8 % k == 0:
        shifts = torch.arange(0, 8, k, device=packed.device, dtype=torch.int32)
        unsigned = ((packed.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << k) - 1)).reshape(rows, -1)[:, :n]
        return torch.where(unsigned >= 1 << (k - 1), unsigned - (1 << k), unsigned).to(torch.int8)
    shifts = torch.arange(8, device=packed.device, dtype=torch.int32)
    bits = ((packed.to(torch.int32).unsqueeze(-1) >> shifts) & 1).reshape(rows, packed.shape[1] * 8)[:, : n * k]
    weights = torch.tensor([1 << j for j in range(k)], device=packed.device, dtype=torch.int32)
    unsigned = (bits.reshape(rows, n, k) * weights).sum(-1)
    return torch.where(unsigned >= 1 << (k - 1), unsigned - (1 << k), unsigned).to(torch.int8)


def pack_trits(trits: torch.Tensor) -> torch.Tensor:
    """Pack ternary codes five per byte (base 3, 3^5 = 243 <= 256: 1.6 bits per trit).

    Args:
        trits: integer tensor ``[rows, n]`` with values in {-1, 0, +1}.
    Returns:
        uint8 tensor ``[rows, ceil(n/5)]``, byte = ``sum_i (t_i + 1) * 3**i``; padding trits are 0 (digit 1).
    """
    rows = trits.shape[0]
    digits = _pad_columns(trits.to(torch.int32) + 1, 5, 1)
    digits = digits.reshape(rows, digits.shape[1] // 5, 5)
    powers = torch.tensor(_TRIT_POWERS, device=trits.device, dtype=torch.int32)
    return (digits * powers).sum(-1).to(torch.uint8)


def unpack_trits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_trits`.

    Args:
        packed: uint8 tensor ``[rows, ceil(n/5)]``.
        n: number of trits per row.
    Returns:
        int8 tensor ``[rows, n]`` with values in {-1, 0, +1}.
    """
    rows = packed.shape[0]
    powers = torch.tensor(_TRIT_POWERS, device=packed.device, dtype=torch.int32)
    digits = (packed.to(torch.int32).unsqueeze(-1) // powers) % 3
    return (digits.reshape(rows, packed.shape[1] * 5)[:, :n] - 1).to(torch.int8)


def pack_words(mask: torch.Tensor) -> torch.Tensor:
    """Pack a boolean matrix into 64-bit words per row.

    Args:
        mask: bool (or 0/1 integer) tensor ``[rows, n]``.
    Returns:
        int64 tensor ``[rows, ceil(n/64)]`` holding the uint64 bit pattern: bit ``j`` of word ``i`` is element
        ``64*i + j``; padding bits are 0.
    """
    rows = mask.shape[0]
    bits = _pad_columns(mask.to(torch.int64), 64, 0)
    bits = bits.reshape(rows, bits.shape[1] // 64, 64)
    weights = torch.tensor(_WORD_BITS, device=mask.device, dtype=torch.int64)
    # The set bits are distinct powers of two, so their sum is their bitwise OR (and never overflows).
    return (bits * weights).sum(-1)


def unpack_words(words: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_words`.

    Args:
        words: int64 tensor ``[rows, ceil(n/64)]``.
        n: number of bits per row.
    Returns:
        bool tensor ``[rows, n]``.
    """
    rows = words.shape[0]
    shifts = torch.arange(64, device=words.device, dtype=torch.int64)
    return ((words.unsqueeze(-1) >> shifts) & 1).reshape(rows, words.shape[1] * 64)[:, :n].bool()


def popcount(words: torch.Tensor) -> torch.Tensor:
    """Number of set bits of each int64 word (its uint64 bit pattern), as int64, by the SWAR method."""
    # Every intermediate is non-negative (bit 63 is masked off first), so no step can overflow int64.
    x = (words & 0x5555555555555555) + ((words >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    x = x + (x >> 8)
    x = x + (x >> 16)
    x = x + (x >> 32)
    return x & 0x7F
