"""Sequence-model metrics over per-frame logits: greedy CTC decoding, edit distance, similarity, error rate.

Greedy CTC: per frame take the argmax class, merge consecutive repeats, then drop the blank. The error rate is
the edit distance to the reference divided by the reference length (phoneme/word error rate when the tokens are
phonemes/words), summed over samples before dividing (the corpus-level rate speech toolkits report).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ctc_greedy_decode(logits: np.ndarray, blank: int = 0) -> list[list[int]]:
    """Decoded token sequences of per-frame logits ``[n, T, C]`` (or one ``[T, C]``): argmax, merge, drop blank."""
    arr = np.asarray(logits)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"per-frame logits must be [n, T, C] or [T, C], got shape {np.shape(logits)}.")
    if not 0 <= blank < arr.shape[2]:
        raise ValueError(f"blank index {blank} is outside the {arr.shape[2]} classes.")
    decoded = []
    for path in arr.argmax(axis=2):
        keep = np.ones(len(path), dtype=bool)
        keep[1:] = path[1:] != path[:-1]
        decoded.append([int(t) for t in path[keep] if t != blank])
    return decoded


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance: fewest insertions, deletions and substitutions turning ``a`` into ``b``."""
    a, b = list(a), list(b)
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def sequence_similarity(a: Sequence, b: Sequence) -> float:
    """``1 - edit_distance(a, b) / max(len(a), len(b))``: 1 for equal sequences (two empty ones too), 0 for disjoint."""
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else 1.0 - edit_distance(a, b) / longest


def error_rate(hypotheses: Sequence[Sequence], references: Sequence[Sequence]) -> float:
    """Corpus error rate ``sum_i edit_distance(hyp_i, ref_i) / sum_i len(ref_i)`` (NaN if all references are empty)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references.")
    total = sum(len(r) for r in references)
    if total == 0:
        return float("nan")
    return sum(edit_distance(h, r) for h, r in zip(hypotheses, references, strict=True)) / total


def sample_error_rates(hypotheses: Sequence[Sequence], references: Sequence[Sequence]) -> np.ndarray:
    """Per-sample ``edit_distance(hyp, ref) / len(ref)`` (NaN for an empty reference)."""
    return np.array(
        [edit_distance(h, r) / len(r) if len(r) else float("nan") for h, r in zip(hypotheses, references, strict=True)],
        dtype=np.float64,
    )


def parse_tokens(text: str, classes: Sequence[str]) -> list[int]:
    """Class indices of a space-separated reference such as ``"3 1 4"`` (tokens are class names)."""
    index = {name: i for i, name in enumerate(classes)}
    tokens = str(text).split()
    unknown = [t for t in tokens if t not in index]
    if unknown:
        raise ValueError(f"reference token {unknown[0]!r} is not one of the model's classes")
    return [index[t] for t in tokens]
