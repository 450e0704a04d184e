"""Pure routing functions: top-k masks, the Switch balancing loss, MC uncertainty, and the curiosity rule.

Shapes: ``probs`` is ``[N, E]`` (N samples, E experts); ``mc_probs`` is ``[S, N, E]`` (S MC-dropout passes).
"""

from __future__ import annotations

import torch
from torch import Tensor

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


def expert_variance(mc_probs: Tensor) -> Tensor:
    """``[N, E]`` variance over MC passes of each expert's routing probability (population variance)."""
    return mc_probs.var(0, unbiased=False)


def routing_variance(mc_probs: Tensor) -> Tensor:
    """Total variance of the routing probabilities per sample: ``sum_e Var_s(p_{s,e})``."""
    return expert_variance(mc_probs).sum(-1)


def uncertainty(mc_probs: Tensor, measure: str) -> Tensor:
    """Per-sample uncertainty ``[N]``: ``mutual_info`` (BALD) or ``variance`` (total routing variance)."""
    if measure == "mutual_info":
        return mutual_information(mc_probs)
    if measure == "variance":
        return routing_variance(mc_probs)
    raise ValueError(f"unknown uncertainty measure {measure!r}")


def precision_ranks(bits: list[float]) -> Tensor:
    """Centred precision rank ``c_e`` in [-1, 1] of each expert's format (ties share their mean rank).

    The most precise expert gets +1, the least precise -1; with a single expert, or all equal, every ``c_e`` is 0.
    """
    b = torch.tensor([float(x) for x in bits])
    rank = (b[None, :] < b[:, None]).sum(1).float() + 0.5 * ((b[None, :] == b[:, None]).sum(1).float() - 1)
    half = (len(bits) - 1) / 2
    return (rank - half) / half if half > 0 else torch.zeros(len(bits))


def curious_probs(
    probs: Tensor,
    alpha: float,
    rule: str,
    u: Tensor | None = None,
    ranks: Tensor | None = None,
    u_expert: Tensor | None = None,
) -> Tensor:
    """Routing probabilities after the curiosity rule; each rule reweights experts *differently* per sample.

    ``precision``: ``p'_e ∝ p_e * exp(alpha * u(x) * c_e)`` (``u [N]``, ``ranks = c [E]``): as uncertainty grows,
    mass moves toward higher-precision experts. ``penalty``: ``p'_e ∝ p_e * exp(-alpha * u_e(x))`` (``u_expert
    [N, E]``): each expert is discounted by its own uncertainty. A factor common to all experts of a row would
    cancel in the renormalisation, which is why both factors depend on ``e``. ``alpha = 0`` returns ``probs``
    itself, so routing is exactly unchanged.
    """
    if alpha == 0:
        return probs
    if rule == "precision":
        shift = alpha * u[:, None] * ranks.to(probs)[None, :]
    elif rule == "penalty":
        shift = -alpha * u_expert
    else:
        raise ValueError(f"unknown curiosity rule {rule!r}")
    weighted = probs * torch.exp(shift - shift.amax(-1, keepdim=True))
    return weighted / weighted.sum(-1, keepdim=True)
