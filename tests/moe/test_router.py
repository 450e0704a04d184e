"""Routers: MC-dropout passes against a hand-written reference, determinism of eval-mode MC routing."""

from __future__ import annotations

import torch

from qwave.moe.router import BayesianRouter, Router, keep_masks


def test_keep_masks_are_reproducible_from_the_seed_and_keep_about_one_minus_dropout():
    a, b = keep_masks(64, 128, 0.25, seed=3), keep_masks(64, 128, 0.25, seed=3)
    assert torch.equal(a, b) and a.dtype == torch.uint8
    assert not torch.equal(a, keep_masks(64, 128, 0.25, seed=4))
    assert abs(a.float().mean().item() - 0.75) < 0.02


def test_masked_probs_match_an_explicit_inverted_dropout_computation():
    torch.manual_seed(0)
    router = Router(5, 3, hidden=8, dropout=0.5).eval()
    x = torch.randn(4, 5)
    keep = keep_masks(6, 8, 0.5, seed=1)
    got = router.masked_probs(x, keep)
    for s in range(6):
        h = torch.relu(x @ router.fc1.weight.T + router.fc1.bias) * keep[s].float() / 0.5
        expected = torch.softmax(h @ router.fc2.weight.T + router.fc2.bias, -1)
        torch.testing.assert_close(got[s], expected)


def test_bayesian_router_eval_is_deterministic_and_independent_of_batching():
    torch.manual_seed(0)
    router = BayesianRouter(5, 3, hidden=16, dropout=0.3, mc_samples=7, mask_seed=11).eval()
    x = torch.randn(30, 5)
    full = router(x)
    assert full.shape == (7, 30, 3)
    torch.testing.assert_close(router(x), full, rtol=0, atol=0)
    pieces = torch.cat([router(x[i : i + 7]) for i in range(0, 30, 7)], 1)
    torch.testing.assert_close(pieces, full, rtol=1e-6, atol=1e-7)
    single = torch.cat([router(x[i : i + 1]) for i in range(30)], 1)
    torch.testing.assert_close(single, full, rtol=1e-6, atol=1e-7)


def test_bayesian_router_masks_survive_a_state_dict_round_trip():
    torch.manual_seed(0)
    a = BayesianRouter(5, 3, hidden=16, dropout=0.3, mc_samples=4, mask_seed=11).eval()
    b = BayesianRouter(5, 3, hidden=16, dropout=0.3, mc_samples=4, mask_seed=99).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(10, 5)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_bayesian_router_passes_disagree_so_there_is_uncertainty_to_measure():
    torch.manual_seed(0)
    router = BayesianRouter(5, 3, hidden=32, dropout=0.5, mc_samples=8).eval()
    with torch.no_grad():
        mc = router(torch.randn(10, 5))
    assert float(mc.var(0).sum()) > 0


def test_bayesian_router_training_draws_fresh_masks():
    torch.manual_seed(0)
    router = BayesianRouter(5, 3, hidden=32, dropout=0.5, mc_samples=4).train()
    x = torch.randn(10, 5)
    assert not torch.equal(router(x), router(x))


def test_macs_count_the_first_layer_once_and_the_output_layer_per_pass():
    assert Router(10, 3, hidden=8).macs() == 10 * 8 + 8 * 3
    assert BayesianRouter(10, 3, hidden=8, mc_samples=5).macs() == 10 * 8 + 5 * 8 * 3
