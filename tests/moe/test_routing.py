"""Routing functions against brute-force and closed-form references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from qwave.formats import get_format
from qwave.moe.routing import (
    balance_loss,
    curious_probs,
    gates,
    mutual_information,
    precision_key,
    precision_ranks,
    router_max_softmax,
    routing_variance,
    standardise,
    tied_groups,
    top_k_mask,
    uncertainty,
)


def random_probs(n: int, e: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(2 * torch.randn(n, e, generator=gen), -1)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_top_k_mask_matches_brute_force_ranking(k):
    probs = random_probs(64, 4)
    mask = top_k_mask(probs, k)
    for row, m in zip(probs.tolist(), mask.tolist(), strict=True):
        best = sorted(range(4), key=lambda e: (-row[e], e))[:k]
        assert [e for e in range(4) if m[e]] == sorted(best)


def test_top_k_mask_breaks_ties_toward_the_lower_expert_index():
    probs = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.1, 0.4, 0.4, 0.1]])
    assert top_k_mask(probs, 1).tolist() == [[True, False, False, False], [False, True, False, False]]
    assert top_k_mask(probs, 3).tolist() == [[True, True, True, False], [True, True, True, False]]


def test_gates_renormalise_over_the_routed_experts_only():
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    g = gates(probs, torch.tensor([[True, False, True]]))
    torch.testing.assert_close(g, torch.tensor([[0.5 / 0.7, 0.0, 0.2 / 0.7]]))


def test_balance_loss_matches_its_formula_by_brute_force():
    probs = random_probs(50, 5, seed=3)
    mask = top_k_mask(probs, 2)
    n, e, k = 50, 5, 2
    expected = 0.0
    for j in range(e):
        f_j = sum(bool(mask[i, j]) for i in range(n)) / (n * k)
        p_j = sum(float(probs[i, j]) for i in range(n)) / n
        expected += f_j * p_j
    assert float(balance_loss(probs, mask, 0.07)) == pytest.approx(0.07 * e * expected, rel=1e-6)


def test_balance_loss_is_its_weight_when_uniform_and_weight_times_e_when_collapsed():
    e = 4
    uniform = torch.full((8, e), 1 / e)
    round_robin = torch.eye(e, dtype=torch.bool).repeat(2, 1)
    assert float(balance_loss(uniform, round_robin, 0.5)) == pytest.approx(0.5)
    collapsed = torch.zeros(8, e)
    collapsed[:, 0] = 1
    assert float(balance_loss(collapsed, top_k_mask(collapsed, 1), 0.5)) == pytest.approx(0.5 * e)


def test_balance_loss_gradient_flows_through_mean_probabilities_only():
    probs = random_probs(10, 3).requires_grad_(True)
    mask = top_k_mask(probs.detach(), 1)
    balance_loss(probs, mask, 0.5).backward()
    f = mask.float().mean(0)
    # L = w * E * sum_e f_e * mean_i p_ie with f constant  ->  dL/dp_ie = w * E * f_e / N
    torch.testing.assert_close(probs.grad, (0.5 * 3 * f / 10).expand(10, 3))


def test_mutual_information_matches_numpy_reference_and_is_zero_without_disagreement():
    mc = torch.softmax(torch.randn(6, 20, 3, generator=torch.Generator().manual_seed(1)), -1)
    p = mc.numpy().astype(np.float64)
    mean = p.mean(0)
    h = lambda q: -(q * np.log(q)).sum(-1)  # noqa: E731
    expected = h(mean) - h(p).mean(0)
    np.testing.assert_allclose(mutual_information(mc).numpy(), expected, rtol=1e-4, atol=1e-6)
    same = mc[:1].repeat(6, 1, 1)
    assert float(mutual_information(same).abs().max()) < 1e-6


def test_routing_variance_is_the_summed_population_variance():
    mc = torch.softmax(torch.randn(5, 7, 4, generator=torch.Generator().manual_seed(2)), -1)
    expected = mc.numpy().var(0).sum(-1)
    np.testing.assert_allclose(routing_variance(mc).numpy(), expected, rtol=1e-5, atol=1e-8)


def test_router_max_softmax_is_one_minus_the_largest_mean_probability():
    mc = torch.softmax(torch.randn(4, 9, 3, generator=torch.Generator().manual_seed(3)), -1)
    expected = 1.0 - mc.numpy().mean(0).max(-1)
    np.testing.assert_allclose(router_max_softmax(mc).numpy(), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(uncertainty(mc, "max_softmax").numpy(), expected, rtol=1e-6, atol=1e-7)


def test_standardise_centres_and_scales_and_is_zero_before_statistics_exist():
    u = torch.tensor([0.1, 0.3, 0.5])
    torch.testing.assert_close(standardise(u, torch.tensor(0.3), torch.tensor(0.2)), torch.tensor([-1.0, 0.0, 1.0]))
    assert standardise(u, torch.tensor(0.0), torch.tensor(0.0)).tolist() == [0.0, 0.0, 0.0]


def test_precision_ranks_are_centred_and_share_ties():
    torch.testing.assert_close(precision_ranks([1.6, 4, 8]), torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(precision_ranks([4, 4, 8, 1]), torch.tensor([0.0, 0.0, 1.0, -1.0]))
    assert precision_ranks([8]).tolist() == [0.0]
    assert precision_ranks([(2, 8), (2, 8)]).tolist() == [0.0, 0.0]
    assert tied_groups([(2, 8), (4, 8), (2, 8), (1, 1), (4, 8)]) == [[0, 2], [1, 4]]
    assert tied_groups([1, 2, 3]) == []


def test_precision_key_orders_the_default_pool_by_the_coarser_of_weights_and_activations():
    pool = ["fp32", "binary", "int8", "qesc", "fp16", "int2", "ternary", "int4"]
    ordered = sorted(pool, key=lambda name: precision_key(get_format(name)))
    assert ordered == ["binary", "qesc", "ternary", "int2", "int4", "int8", "fp16", "fp32"]
    assert len({precision_key(get_format(n)) for n in pool}) == len(pool), "no two pool formats tie"
    assert precision_key(get_format("int2")) != precision_key(get_format("qesc")), "both store 2 bits"


# --- the curiosity cascade ------------------------------------------------------------------------------------------

RANKS = torch.tensor([-1.0, 0.0, 1.0])


def test_alpha_zero_returns_the_plain_routing_probabilities_exactly():
    probs = random_probs(40, 3)
    out = curious_probs(probs, 0.0, torch.randn(40), RANKS)
    assert torch.equal(out, probs)
    assert torch.equal(top_k_mask(out, 1), top_k_mask(probs, 1))


def test_cascade_matches_its_closed_form_ratio():
    probs, s, alpha = random_probs(30, 3, seed=4), torch.randn(30), 0.7
    out = curious_probs(probs, alpha, s, RANKS)
    for i, j in itertools.combinations(range(3), 2):
        expected = probs[:, i] / probs[:, j] * torch.exp(alpha * s * (RANKS[i] - RANKS[j]))
        torch.testing.assert_close(out[:, i] / out[:, j], expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.sum(-1), torch.ones(30))


def test_a_typical_sample_keeps_its_route_confident_ones_go_cheaper_uncertain_ones_more_precise():
    probs = random_probs(3000, 3, seed=6)
    plain = top_k_mask(probs, 1).float().argmax(1)
    for s, direction in ((0.0, 0), (-1.5, -1), (1.5, 1)):
        routed = top_k_mask(curious_probs(probs, 1.0, torch.full((3000,), s), RANKS), 1).float().argmax(1)
        moved = routed != plain
        if direction == 0:
            assert not bool(moved.any())
        else:
            assert bool(moved.any())
            assert bool((torch.sign(RANKS[routed[moved]] - RANKS[plain[moved]]) == direction).all())


def test_cascade_is_monotone_in_alpha_for_uncertain_samples():
    probs, s = random_probs(200, 3, seed=6), torch.rand(200) * 2
    alphas = [0.0, 0.1, 0.3, 1.0, 3.0, 10.0]
    expected_rank = [(curious_probs(probs, a, s, RANKS) * RANKS).sum(-1) for a in alphas]
    to_top = [top_k_mask(curious_probs(probs, a, s, RANKS), 1)[:, 2] for a in alphas]
    for lo, hi in itertools.pairwise(expected_rank):
        assert bool((hi >= lo - 1e-6).all())
    for lo, hi in itertools.pairwise(to_top):
        assert bool((hi | ~lo).all()), "a sample routed to the most precise expert must stay there as alpha grows"
    assert int(to_top[-1].sum()) > int(to_top[0].sum())


def changed_route_fraction(rule_out: torch.Tensor, probs: torch.Tensor) -> float:
    """Fraction of samples whose top-1 expert differs from plain routing: the detector used below."""
    return float((top_k_mask(rule_out, 1) != top_k_mask(probs, 1)).any(-1).float().mean())


def test_varying_uncertainty_changes_more_routes_the_further_it_is_from_typical():
    probs = random_probs(2000, 3, seed=8)
    s = torch.linspace(-2, 2, 2000)
    out = curious_probs(probs, 1.0, s, RANKS)
    changed = (top_k_mask(out, 1) != top_k_mask(probs, 1)).any(-1)
    assert 0 < changed_route_fraction(out, probs) < 1
    far, near = s.abs() > 1.5, s.abs() < 0.5
    assert changed[far].float().mean() > changed[near].float().mean()
    assert not bool(changed[1000]), "a typical sample (s = 0) keeps its route"


def test_a_uniform_per_sample_factor_is_detected_as_a_no_op():
    probs = random_probs(500, 3, seed=9)
    s = torch.rand(500) * 5
    naive = probs * torch.exp(2.0 * s)[:, None]
    naive = naive / naive.sum(-1, keepdim=True)
    assert changed_route_fraction(naive, probs) == 0.0
    torch.testing.assert_close(naive, probs)
    real = curious_probs(probs, 2.0, s, RANKS)
    assert changed_route_fraction(real, probs) > 0.0
    assert not torch.allclose(real, probs)


def test_curious_probs_stay_finite_under_extreme_uncertainty():
    probs = random_probs(10, 3)
    for s in (1e3, -1e3):
        out = curious_probs(probs, 50.0, torch.full((10,), s), RANKS)
        assert torch.isfinite(out).all() and math.isclose(float(out.sum()), 10.0, rel_tol=1e-5)
