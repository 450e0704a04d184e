"""Sequence metrics: greedy CTC decoding by hand, edit distance against a brute-force search over edits."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from qwave.eval.sequence import (
    ctc_greedy_decode,
    edit_distance,
    error_rate,
    parse_tokens,
    sample_error_rates,
    sequence_similarity,
)


def brute_force_distance(a: tuple, b: tuple, alphabet: tuple) -> int:
    """Breadth-first search over single insertions, deletions and substitutions from ``a`` until ``b`` appears."""
    frontier, seen, steps = {a}, {a}, 0
    limit = len(a) + len(b) + 1
    while b not in frontier:
        nxt = set()
        for s in frontier:
            for i in range(len(s) + 1):
                for c in alphabet:
                    nxt.add(s[:i] + (c,) + s[i:])
            for i in range(len(s)):
                nxt.add(s[:i] + s[i + 1 :])
                for c in alphabet:
                    nxt.add(s[:i] + (c,) + s[i + 1 :])
        frontier = {s for s in nxt if s not in seen and len(s) <= limit}
        seen |= frontier
        steps += 1
    return steps


def test_edit_distance_matches_brute_force_on_every_short_pair():
    alphabet = (0, 1, 2)
    words = [w for n in range(4) for w in itertools.product(alphabet, repeat=n)]
    rng = np.random.default_rng(0)
    pairs = [(words[i], words[j]) for i, j in rng.integers(0, len(words), size=(150, 2))]
    for a, b in pairs:
        assert edit_distance(a, b) == brute_force_distance(a, b, alphabet), (a, b)


def test_edit_distance_known_values_and_symmetry():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert edit_distance([1, 2, 3, 4], [2, 3]) == edit_distance([2, 3], [1, 2, 3, 4]) == 2


def test_ctc_greedy_decode_merges_repeats_then_drops_blank():
    # frame argmax path: 1 1 0 1 2 2 0 0 3 -> merge -> 1 0 1 2 0 3 -> drop blank -> 1 1 2 3
    path = [1, 1, 0, 1, 2, 2, 0, 0, 3]
    logits = np.full((len(path), 4), -1.0)
    logits[np.arange(len(path)), path] = 2.0
    assert ctc_greedy_decode(logits) == [[1, 1, 2, 3]]
    assert ctc_greedy_decode(np.stack([logits, logits[::-1]])) == [[1, 1, 2, 3], [3, 2, 1, 1]]
    # a different blank index: class 1 is the blank now
    assert ctc_greedy_decode(logits, blank=1) == [[0, 2, 0, 3]]
    with pytest.raises(ValueError, match="blank index 4"):
        ctc_greedy_decode(logits, blank=4)


def test_similarity_and_error_rates_by_hand():
    assert sequence_similarity([1, 2, 3, 4], [1, 2, 4]) == pytest.approx(0.75)
    assert sequence_similarity([], []) == 1.0
    assert sequence_similarity([1], [2]) == 0.0
    hyps, refs = [[1, 2], [3], []], [[1, 2, 3], [4], [5, 6]]
    # distances 1, 1, 2 over reference lengths 3, 1, 2
    assert error_rate(hyps, refs) == pytest.approx(4 / 6)
    np.testing.assert_allclose(sample_error_rates(hyps, refs), [1 / 3, 1.0, 1.0])
    assert math.isnan(error_rate([[1]], [[]]))


def test_parse_tokens_maps_names_and_rejects_unknown():
    assert parse_tokens("b a  c", ["_", "a", "b", "c"]) == [2, 1, 3]
    with pytest.raises(ValueError, match="'z'"):
        parse_tokens("a z", ["_", "a"])
