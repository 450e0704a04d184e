"""MoE configuration errors, command-line overrides, and the expert selection rules."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from qwave.bench.config import BenchConfig
from qwave.errors import ConfigError
from qwave.moe.config import CuriosityConfig, MoEConfig
from qwave.moe.selection import choose, eligible, rank


def test_defaults_are_valid():
    MoEConfig().validate()


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (MoEConfig(pool=["bitnet", "4"], num_experts=3), "moe.num_experts=3"),
        (MoEConfig(pool=["bitnet", "4"]), "moe.num_experts is not"),
        (MoEConfig(experts=["bitnet", "int9"]), "moe.experts: unknown quantization format 'int9'"),
        (MoEConfig(pool=["4", "int4"], num_experts=1), "names a format twice"),
        (MoEConfig(experts=["4", "8"], top_k=3), "moe.top_k=3"),
        (MoEConfig(experts=["4", "8"], num_experts=3), "set moe.pool"),
        (MoEConfig(pool=["4", "8"], num_experts=1, selection="best"), "moe.selection='best'"),
        (MoEConfig(curiosity=CuriosityConfig(measure="entropy")), "moe.curiosity.measure='entropy'"),
        (MoEConfig(router_format="int9"), "moe.router_format: unknown quantization format 'int9'"),
        (MoEConfig(pool=["4", "8"], num_experts=1, selection_floor=1.5), "moe.selection_floor must be in"),
        (MoEConfig(curiosity=CuriosityConfig(mc_samples=1)), "moe.curiosity.mc_samples"),
        (MoEConfig(curiosity=CuriosityConfig(alpha=-1)), "moe.curiosity.alpha"),
        (MoEConfig(router_dropout=0.0, curiosity=CuriosityConfig(enabled=True)), "moe.router_dropout > 0"),
        (MoEConfig(experts=[]), "moe.experts is empty"),
    ],
)
def test_invalid_settings_are_one_line_errors_naming_the_option(cfg, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")) as err:
        cfg.validate()
    assert "\n" not in str(err.value)


def test_command_line_overrides_reach_the_moe_config():
    schema = OmegaConf.structured(BenchConfig)
    overrides = OmegaConf.from_dotlist([
        "moe.pool=[bitnet,1,2,4,8,16,qesc]", "moe.num_experts=3", "moe.curiosity.enabled=true",
        "moe.curiosity.alpha=0.3", "moe.top_k=1",
    ])
    cfg: BenchConfig = OmegaConf.to_object(OmegaConf.merge(schema, overrides))
    assert cfg.moe.pool == ["bitnet", "1", "2", "4", "8", "16", "qesc"]
    assert cfg.moe.num_experts == 3 and cfg.moe.curiosity.enabled and cfg.moe.curiosity.alpha == 0.3
    cfg.moe.validate()


def test_selection_rules_rank_probes_by_their_documented_score():
    f1, size = [0.50, 0.70, 0.72, 0.40], [100, 400, 800, 50]
    assert rank(f1, size, "f1") == f1
    assert rank(f1, size, "f1_per_byte") == pytest.approx([0.005, 0.00175, 0.0009, 0.008])
    assert choose(rank(f1, size, "f1"), 2) == [1, 2]
    assert choose(rank(f1, size, "f1_per_byte"), 2) == [0, 3]
    assert choose(rank([None] * 4, [None] * 4, "order"), 3) == [0, 1, 2]


def test_the_floor_makes_probes_far_below_the_best_ineligible_for_f1_per_byte():
    f1, size = [0.50, 0.70, 0.72, 0.40], [100, 400, 800, 50]
    ok = eligible(f1, "f1_per_byte", 0.9)  # threshold 0.9 * 0.72 = 0.648
    assert ok == [False, True, True, False]
    scores = rank(f1, size, "f1_per_byte")
    assert choose(scores, 2, ok, f1) == [1, 2]
    assert choose(scores, 3, ok, f1) == [0, 1, 2], "topped up with the best-F1 ineligible probe"
    assert eligible(f1, "f1_per_byte", 0.0) == [True] * 4 and eligible(f1, "f1", 0.9) == [True] * 4
    # the case: a 1-bit probe just above chance no longer beats an int8 probe with F1 = 1.0
    one_bit, int8 = (0.16, 85_000), (1.0, 570_000)
    f1, size = [one_bit[0], int8[0]], [one_bit[1], int8[1]]
    assert choose(rank(f1, size, "f1_per_byte"), 1) == [0]
    assert choose(rank(f1, size, "f1_per_byte"), 1, eligible(f1, "f1_per_byte", 0.9), f1) == [1]


def test_selection_ties_keep_pool_order():
    assert choose([0.5, 0.7, 0.7, 0.7], 2) == [1, 2]
