"""The benchmark's model names: one QuantPlan per name under the ``model.*`` options."""

from __future__ import annotations

import pytest

from qwave.bench.config import ModelConfig
from qwave.bench.models import plan_for, resolve_kind
from qwave.errors import ConfigError


@pytest.mark.parametrize(("name", "method"), [("fp32", "fp32"), ("8", "qat"), ("fp32-fp32", "qat"),
                                              ("1-1-8", "qat"), ("ptq4", "ptq"), ("ptq2-2-8", "ptq")])
def test_each_name_resolves_to_its_training_method(name, method):
    assert resolve_kind(name).method == method


def test_the_model_options_shape_the_plan_and_a_mixed_name_wins_over_model_layer_formats():
    m = ModelConfig(group_size=16, weight_only=True, keep_last_fp=True, layer_formats=["1", "bitnet", "8"])
    plan = plan_for("ptq4", m)
    assert (plan.formats, plan.method, plan.keep_last_fp) == (("binary", "ternary", "int8"), "ptq", True)
    assert [(s.name, dict(s.options)) for s in plan.layer_specs(3)] == [
        ("binary", {}), ("ternary", {"activations": "float"}), ("fp32", {})]
    assert plan_for("2-2-8", m).formats == ("int2", "int2", "int8")


def test_an_unknown_model_name_or_layer_format_names_its_key():
    with pytest.raises(ConfigError, match=r"^models: unknown quantization format 'int9'"):
        resolve_kind("int9")
    with pytest.raises(ConfigError, match=r"^model\.layer_formats: unknown quantization format 'x'"):
        plan_for("8", ModelConfig(layer_formats=["1", "x"]))
