"""Pure routing functions: top-k masks, the Switch balancing loss, MC uncertainty, and the curiosity cascade.

Shapes: ``probs`` is ``[N, E]`` (N samples, E experts); ``mc_probs`` is ``[S, N, E]`` (S MC-dropout passes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from qwave.formats import QuantFormat

EPS = 1e-12


def top_k_mask(probs: Tensor, k: int) -> Tensor:
    """Boolean ``[N, E]`` mask of each row's ``k`` largest probabilities (ties go to the lower expert index)."""
    index = torch.sort(probs, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, index, True)


def gates(probs: Tensor, mask: Tensor) -> Tensor:
    """Routing probabilities renormalised over the routed experts: ``g_e = m_e p_e / sum_j m_j p_j``."""
    kept = probs * mask
    return kept / kept.sum(-1, keepdim=True).clamp_min(EPS)


def balance_loss(probs: Tensor, mask: Tensor, weight: float) -> Tensor:
    """Switch-Transformer load-balancing loss ``weight * E * sum_e f_e * P_e``.

    ``f_e`` is the fraction of routing assignments that went to expert ``e`` (``mask`` summed over samples,
    divided by ``N * k`` so that ``sum_e f_e = 1``; not differentiable), ``P_e`` the mean routing probability of
    ``e`` (differentiable). It equals ``weight`` for perfectly uniform routing and ``weight * E`` when every
    sample goes to one expert with probability 1.
    """
    n, experts = probs.shape
    if n == 0:
        return probs.sum() * 0.0
    f = mask.float().sum(0) / mask.float().sum()
    return weight * experts * (f.detach() * probs.mean(0)).sum()


def entropy(probs: Tensor) -> Tensor:
    """Shannon entropy (nats) over the last dimension."""
    return -(probs * probs.clamp_min(EPS).log()).sum(-1)


def mutual_information(mc_probs: Tensor) -> Tensor:
    """BALD epistemic uncertainty per sample: ``H(mean_s p_s) - mean_s H(p_s)`` (nats, in [0, log E])."""
    return (entropy(mc_probs.mean(0)) - entropy(mc_probs).mean(0)).clamp_min(0.0)


def routing_variance(mc_probs: Tensor) -> Tensor:
    """Total variance of the routing probabilities per sample: ``sum_e Var_s(p_{s,e})`` (population variance)."""
    return mc_probs.var(0, unbiased=False).sum(-1)


def router_max_softmax(mc_probs: Tensor) -> Tensor:
    """Router confidence deficit per sample: ``1 - max_e mean_s p_{s,e}`` (0 = one expert certain)."""
    return 1.0 - mc_probs.mean(0).amax(-1)


def uncertainty(mc_probs: Tensor, measure: str) -> Tensor:
    """Per-sample uncertainty ``[N]``: ``mutual_info`` (BALD), ``variance`` (total routing variance) or
    ``max_softmax`` (one minus the largest mean routing probability)."""
    if measure == "mutual_info":
        return mutual_information(mc_probs)
    if measure == "variance":
        return routing_variance(mc_probs)
    if measure == "max_softmax":
        return router_max_softmax(mc_probs)
    raise ValueError(f"unknown uncertainty measure {measure!r}")


def standardise(u: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(u - mean) / std``: how far a sample's uncertainty is from the typical one, in standard deviations.

    ``std <= 0`` means the statistics were never estimated (or every sample was equally uncertain): the score is
    then 0 for every sample, so the curiosity rule leaves routing unchanged.
    """
    return torch.where(std > 0, (u - mean) / std.clamp_min(EPS), torch.zeros_like(u))


# Bits of one activation code under each activation handling of a format (``QuantFormat.activations``).
ACTIVATION_BITS = {"binary": 1.0, "ternary": math.log2(3), "int8": 8.0, "float": 32.0}


def precision_key(fmt: QuantFormat) -> tuple[float, float]:
    """Sort key of a format's numerical precision: ``(min, max)`` of its weight and activation bits.

    A layer is as coarse as its coarser operand, so binary (1, 1) < qesc (1.58, 2) < ternary (1.6, 32) < int2 <
    int4 < int8 < fp16 < fp32, and int2 with float activations ranks above qesc although both store 2 bits.
    """
    activation = ACTIVATION_BITS[fmt.activations]
    return (min(fmt.bits, activation), max(fmt.bits, activation))


def precision_ranks(keys: Sequence) -> Tensor:
    """Centred precision rank ``c_e`` in [-1, 1] of each expert from its sortable key (ties share their mean rank).

    The most precise expert gets +1, the least precise -1; with a single expert, or all equal, every ``c_e`` is 0.
    """
    keys = list(keys)
    rank = torch.tensor([sum(k < key for k in keys) + 0.5 * (sum(k == key for k in keys) - 1) for key in keys],
                        dtype=torch.float32)
    half = (len(keys) - 1) / 2
    return (rank - half) / half if half > 0 else torch.zeros(len(keys))


def tied_groups(keys: Sequence) -> list[list[int]]:
    """Indices of experts sharing a precision key, one list per key held by more than one expert."""
    groups: dict = {}
    for e, key in enumerate(keys):
        groups.setdefault(key, []).append(e)
    return [g for g in groups.values() if len(g) > 1]


def curious_probs(probs: Tensor, alpha: float, score: Tensor, ranks: Tensor) -> Tensor:
    """Routing probabilities after the curiosity cascade: ``p'_e ∝ p_e * exp(alpha * s(x) * c_e)``.

    ``score = s [N]`` is the sample's standardised uncertainty (``standardise``): a sample more uncertain than
    the typical one (``s > 0``) moves toward higher-precision experts (``c_e > 0``), a more confident one
    (``s < 0``) toward cheaper ones, and a typical one (``s = 0``) keeps its routing. ``ranks = c [E]``. A factor
    common to all experts of a row would cancel in the renormalisation, which is why the factor depends on ``e``.
    ``alpha = 0`` returns ``probs`` itself, so routing is exactly unchanged.
    """
    if alpha == 0:
        return probs
    shift = alpha * score[:, None] * ranks.to(probs)[None, :]
    weighted = probs * torch.exp(shift - shift.amax(-1, keepdim=True))
    return weighted / weighted.sum(-1, keepdim=True)
