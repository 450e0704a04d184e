"""The MoE classifier on fixed weights: mixture output vs a per-sample brute force, gradients, curiosity, artifacts."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch

from qwave import artifact
from qwave.errors import ArtifactError, ConfigError
from qwave.moe.config import CuriosityConfig
from qwave.moe.model import MoEClassifier, quantize_moe
from qwave.moe.routing import balance_loss, mutual_information, top_k_mask
from qwave.nn.surgery import pack_model
from qwave.size import report

FORMATS = ["bitnet", "4", "8"]


def make(top_k: int = 1, curiosity: CuriosityConfig | None = None, dropout: float = 0.0, router_dropout: float = 0.0,
         seed: int = 0, formats: list[str] = FORMATS) -> MoEClassifier:
    torch.manual_seed(seed)
    return MoEClassifier(6, 4, formats, hidden=[12], dropout=dropout, top_k=top_k, router_hidden=16,
                         router_dropout=router_dropout, balance_weight=0.1, curiosity=curiosity, mask_seed=5)


def inputs(n: int = 40, seed: int = 1) -> torch.Tensor:
    return 2 * torch.randn(n, 6, generator=torch.Generator().manual_seed(seed))


def brute_force_log_proba(model: MoEClassifier, x: torch.Tensor) -> torch.Tensor:
    """Per sample: router probabilities, its k best experts by sorting, renormalised gates, mixture of softmaxes."""
    rows = []
    with torch.no_grad():
        for xi in x:
            p = model.router(xi[None])[0].tolist()
            chosen = sorted(range(len(p)), key=lambda e: (-p[e], e))[: model.top_k]
            total = sum(p[e] for e in chosen)
            mix = sum(p[e] / total * torch.softmax(model.experts[e](xi[None])[0], -1) for e in chosen)
            rows.append(mix.log())
    return torch.stack(rows)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_eval_output_is_the_top_k_mixture_computed_sample_by_sample(k):
    model = make(top_k=k).eval()
    x = inputs()
    torch.testing.assert_close(model(x), brute_force_log_proba(model, x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(x).exp().sum(-1), torch.ones(len(x)))


def test_training_forward_value_equals_the_deployed_top_k_mixture():
    model = make(top_k=2)
    x = inputs()
    model.eval()
    deployed = model(x)
    model.train()
    torch.testing.assert_close(model(x), deployed, rtol=1e-5, atol=1e-5)


def test_router_learns_from_the_dense_mixture_and_only_routed_experts_learn_at_top_1():
    model = make(top_k=1).train()
    x, y = inputs(), torch.arange(40) % 4
    torch.nn.functional.nll_loss(model(x), y).backward()
    got = model.router.fc1.weight.grad.clone()
    # reference: the router's gradient of the dense mixture likelihood with experts detached
    model.zero_grad()
    z = model.norm(x)
    p = model.router(z)
    with torch.no_grad():
        q = torch.stack([torch.softmax(expert(z), -1) for expert in model.experts], 1)
    dense = (p[..., None] * q).sum(1).log()
    torch.nn.functional.nll_loss(dense, y).backward()
    torch.testing.assert_close(got, model.router.fc1.weight.grad, rtol=1e-4, atol=1e-7)
    assert got.abs().sum() > 0
    # an expert no sample is routed to gets no gradient
    model.zero_grad()
    with torch.no_grad():
        model.router.fc2.bias.copy_(torch.tensor([50.0, 0.0, 0.0]))
    torch.nn.functional.nll_loss(model(x), y).backward()
    assert model.experts[0][0].weight.grad.abs().sum() > 0
    for e in (1, 2):
        grad = model.experts[e][0].weight.grad
        assert grad is None or float(grad.abs().sum()) == 0.0


def test_aux_loss_is_the_balance_loss_of_the_last_training_forward():
    model = make(top_k=1).train()
    x = inputs()
    model(x)
    p = model.router(model.norm(x))
    expected = balance_loss(p, top_k_mask(p, 1), 0.1)
    torch.testing.assert_close(model.aux_loss(), expected)
    model.eval()
    model(x)
    assert float(model.aux_loss()) == 0.0


def training_grads(balance_weight: float) -> dict[str, torch.Tensor]:
    """Gradients of the training loss (NLL + aux_loss, as qwave.train adds them) for one batch."""
    model = make(top_k=1)
    model.balance_weight = balance_weight
    model.train()
    x, y = inputs(), torch.arange(40) % 4
    (torch.nn.functional.nll_loss(model(x), y) + model.aux_loss()).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_the_balancing_term_adds_its_own_gradient_to_the_router_and_none_to_the_experts():
    off, on = training_grads(0.0), training_grads(3.0)
    # reference: the gradient of 3 * E * sum_e f_e * mean_i p_ie, f_e counted from the top-1 choices by hand
    model = make(top_k=1).train()
    x = inputs()
    p = model.router(model.norm(x))
    first = [max(range(3), key=lambda e, i=i: (float(p[i, e].detach()), -e)) for i in range(len(x))]
    f = torch.tensor([first.count(e) / len(x) for e in range(3)])
    (3.0 * 3 * (f * p.mean(0)).sum()).backward()
    for name in ("router.fc1.weight", "router.fc2.weight", "router.fc2.bias"):
        expected = model.get_parameter(name).grad
        assert float(expected.abs().sum()) > 0
        torch.testing.assert_close(on[name] - off[name], expected, rtol=1e-4, atol=1e-6)
    for name in off:
        if name.startswith("experts."):
            torch.testing.assert_close(on[name], off[name], rtol=0, atol=0)


def curious(alpha: float, measure: str = "mutual_info", formats: list[str] = FORMATS) -> MoEClassifier:
    cfg = CuriosityConfig(enabled=True, alpha=alpha, mc_samples=8, measure=measure)
    return make(top_k=1, curiosity=cfg, router_dropout=0.5, formats=formats).eval()


def test_alpha_zero_reproduces_plain_routing_exactly():
    model = curious(0.0)
    x = inputs(200)
    r = model.route(model.norm(x))
    assert torch.equal(r.probs, r.base)
    assert torch.equal(r.mask, top_k_mask(r.base, 1))
    plain = brute_force_log_proba_from_base(model, x, r.base)
    torch.testing.assert_close(model(x), plain, rtol=1e-5, atol=1e-5)


def brute_force_log_proba_from_base(model: MoEClassifier, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        z = model.norm(x)
        first = [sorted(range(3), key=lambda e, i=i: (-float(base[i, e]), e))[0] for i in range(len(x))]
        return torch.stack([torch.log_softmax(model.experts[e](z[i : i + 1])[0], -1) for i, e in enumerate(first)])


@pytest.mark.parametrize("measure", ["mutual_info", "variance", "max_softmax"])
def test_the_cascade_sends_uncertain_samples_to_precise_experts_and_confident_ones_to_cheap_ones(measure):
    x = inputs(400)
    models = [curious(a, measure) for a in (0.0, 0.5, 2.0, 8.0)]
    state = models[0].state_dict()
    u = models[0].route(models[0].norm(x)).u
    state["u_mean"], state["u_std"] = u.median(), u.std()
    routes = []
    for model in models:
        model.load_state_dict(state)
        routes.append(model.route(model.norm(x)))
    uncertain = routes[0].u > u.median()
    most_precise = 2  # int8 among [ternary, int4, int8]
    for lo, hi in itertools.pairwise(routes):
        top_lo, top_hi = lo.mask[uncertain, most_precise], hi.mask[uncertain, most_precise]
        assert bool((top_hi | ~top_lo).all()), "an uncertain sample on the most precise expert stays there"
    changed = (routes[-1].mask != routes[0].mask).any(-1)
    assert 0 < float(changed.float().mean()) < 1
    before, after = routes[0].mask.float().argmax(1), routes[-1].mask.float().argmax(1)
    ranks = models[0].ranks
    up = ranks[after] > ranks[before]
    assert bool((up[changed] == uncertain[changed]).all()), "uncertain -> more precise, confident -> cheaper"
    assert bool(up[changed].any()) and bool((~up[changed]).any())


def test_uncertainty_statistics_are_learned_in_training_only():
    model = curious(1.0).train()
    assert float(model.u_mean) == 0.0 and float(model.u_std) == 0.0
    torch.manual_seed(7)
    model(inputs())
    torch.manual_seed(7)
    with torch.no_grad():
        u = mutual_information(model.router(model.norm(inputs())))
    torch.testing.assert_close(model.u_mean, u.mean())
    torch.testing.assert_close(model.u_std, u.std(unbiased=False))
    first_mean = float(model.u_mean)
    torch.manual_seed(8)
    model(inputs(seed=5))
    torch.manual_seed(8)
    with torch.no_grad():
        u2 = mutual_information(model.router(model.norm(inputs(seed=5))))
    assert float(model.u_mean) == pytest.approx(0.9 * first_mean + 0.1 * float(u2.mean()), rel=1e-5)
    learned = model.state_dict()["u_std"].clone()
    model.eval()
    model(inputs(seed=2))
    assert torch.equal(model.u_std, learned)


def test_a_supplied_u_replaces_the_routers_own_and_never_updates_the_statistics():
    model = curious(2.0)
    model.load_state_dict({**model.state_dict(), "u_mean": torch.tensor(0.01), "u_std": torch.tensor(0.005)})
    z = model.norm(inputs(300))
    typical = model.route(z, u=torch.full((300,), 0.01))
    assert torch.equal(typical.mask, top_k_mask(typical.base, 1)), "u at its mean: plain routing"
    high = model.route(z, u=torch.full((300,), 0.03))
    assert bool(high.mask[:, 2].sum() > typical.mask[:, 2].sum())
    model.train()
    model.route(z, u=torch.full((300,), 5.0))
    assert float(model.u_mean) != 5.0 and float(model.u_std) != 0.0


def test_tied_precision_ranks_are_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="qwave.moe.model"):
        curious(1.0, formats=["int4", "int8", "4"])
    assert "experts 0 (int4), 2 (int4) share one precision rank" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="qwave.moe.model"):
        curious(1.0, formats=["int2", "qesc", "bitnet"])
        make(formats=["4", "4"])  # no curiosity: nothing to warn about
    assert caplog.text == ""


def test_experts_get_the_activation_their_format_needs_unless_one_is_named():
    model = MoEClassifier(6, 4, ["binary", "int4", "qesc", "bitnet"], hidden=[8], router_format="binary")
    assert model.activations == ["hardtanh", "relu", "hardtanh", "relu"]
    assert [type(e[1]).__name__ for e in model.experts] == ["Hardtanh", "ReLU", "Hardtanh", "ReLU"]
    assert model.router_activation == "hardtanh" and type(model.router.act).__name__ == "Hardtanh"
    assert MoEClassifier(6, 4, ["binary", "int4"], hidden=[8], activation="relu").activations == ["relu", "relu"]
    with pytest.raises(ConfigError, match="activation='gelu'"):
        MoEClassifier(6, 4, ["int4"], hidden=[8], activation="gelu")


def test_a_config_of_the_earlier_curiosity_rule_is_refused_and_an_older_plain_one_loads_with_relu():
    config = make(curiosity=CuriosityConfig(enabled=True), router_dropout=0.2).config()
    for key in ("activation", "router_format", "router_activation"):
        config.pop(key)
    plain = {**config, "curiosity": {**config["curiosity"], "enabled": False, "rule": "precision"}}
    assert MoEClassifier.from_config(plain).activations == ["relu"] * 3
    config["curiosity"]["rule"] = "precision"
    with pytest.raises(ArtifactError, match="earlier curiosity rule"):
        MoEClassifier.from_config(config)


@pytest.mark.parametrize("curiosity", [None, CuriosityConfig(enabled=True, alpha=1.0, mc_samples=4)])
def test_packed_moe_survives_an_artifact_round_trip(tmp_path, curiosity):
    model = quantize_moe(make(top_k=2, curiosity=curiosity, router_dropout=0.3, dropout=0.1))
    model.train()
    model(inputs())  # sets the uncertainty statistics of the curious model
    model.eval()
    x = inputs(64, seed=3)
    reference = model(x)
    artifact.save(pack_model(model), tmp_path / "a", classes=list("abcd"))
    loaded = artifact.load(tmp_path / "a")
    assert isinstance(loaded, MoEClassifier) and loaded.formats == ["ternary", "int4", "int8"]
    torch.testing.assert_close(loaded(x), reference, rtol=1e-4, atol=1e-4)
    assert torch.equal(loaded(x).argmax(1), reference.argmax(1))
    torch.testing.assert_close(loaded(x), loaded(x), rtol=0, atol=0)


def test_active_bytes_count_the_router_and_the_routed_experts_by_usage():
    packed = pack_model(quantize_moe(make()))
    size = report(packed)
    state = packed.state_dict()
    expert = [sum(t.nbytes for k, t in state.items() if k.startswith(f"experts.{e}.")) for e in range(3)]
    rest = sum(t.nbytes for k, t in state.items() if not k.startswith("experts."))
    assert size.stored_bytes == rest + sum(expert)
    assert expert[0] < expert[1] < expert[2]
    assert packed.active_bytes(size, [1.0, 0.0, 0.0]) == rest + expert[0]
    mixed = rest + 0.5 * expert[0] + 0.25 * (expert[1] + expert[2])
    assert packed.active_bytes(size, [0.5, 0.25, 0.25]) == round(mixed)
    assert packed.active_bytes(size) == round(rest + sum(expert) / 3)


def test_macs_include_every_mc_pass_and_the_routed_experts():
    plain = make()
    bayes = curious(1.0)
    expert_macs = 6 * 12 + 12 * 4
    assert plain.macs([1.0, 0.0, 0.0]) == 6 * 16 + 16 * 3 + expert_macs
    assert bayes.macs([0.0, 0.0, 1.0]) == 6 * 16 + 8 * 16 * 3 + expert_macs


def test_a_moe_artifact_loads_in_a_fresh_process_without_importing_qwave_moe(tmp_path):
    import subprocess
    import sys

    model = make()
    x = inputs()
    artifact.save(pack_model(model), tmp_path / "a", classes=list("abcd"))
    expected = artifact.load(tmp_path / "a")(x)
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch, qwave; m = qwave.load(sys.argv[1]); torch.save(m(torch.load(sys.argv[2])), sys.argv[3])"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "a"), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                   check=True)
    assert torch.equal(torch.load(tmp_path / "y.pt"), expected)
