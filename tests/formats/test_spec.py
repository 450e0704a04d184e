"""FormatSpec and QuantPlan: user names and options parsed once, old manifests read with their old meaning."""

from __future__ import annotations

import pytest
import torch

from qwave import artifact
from qwave.errors import ConfigError, FormatError
from qwave.formats import FormatSpec, QuantPlan, get_format
from qwave.nn import MLPClassifier, PackedLinear, pack_model, quantize_model

# What each name means, written out by hand (the registry's aliases are not consulted to build it).
NAMES = {"8": "int8", "4": "int4", "2": "int2", "1": "binary", "bitnet": "ternary", "esc": "fp32", "32": "fp32",
         "16": "fp16", "bf16": "bf16", " INT4 ": "int4", "qesc": "qesc", 3: "int3"}


@pytest.mark.parametrize(("value", "name"), NAMES.items())
def test_aliases_parse_to_the_canonical_name(value, name):
    assert FormatSpec.parse(value).name == name
    assert QuantPlan.parse(value).formats == (name,)


@pytest.mark.parametrize(("value", "options", "kept"), [
    ("4", {"group_size": 32, "activations": "float"}, (("activations", "float"), ("group_size", 32))),
    ("fp32", {"group_size": 32, "activations": "float"}, ()),
    ("bitnet", {"group_size": 32, "activations": "float"}, (("activations", "float"),)),
    ("1", {"group_size": 32, "activations": "float"}, ()),
    ("2", {"grid": "symmetric"}, (("grid", "symmetric"),)),
])
def test_a_spec_keeps_only_the_options_its_format_takes(value, options, kept):
    spec = FormatSpec.parse(value, **options)
    assert spec.options == kept
    assert {k: spec.build().options()[k] for k, _ in kept} == dict(kept)


def test_equal_specs_are_equal_and_build_one_shared_format():
    a, b = FormatSpec.parse("4", group_size=16), FormatSpec.parse("int4", group_size=16)
    assert a == b and hash(a) == hash(b) and a.build() is b.build()
    assert a.build().options() == get_format("int4", group_size=16).options()
    assert FormatSpec.parse("4").build() is not a.build()


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_an_option_no_format_takes_is_a_one_line_config_error_naming_it():
    with pytest.raises(ConfigError) as err:
        FormatSpec.parse("4", group_sise=8)
    assert "group_sise" in one_line(err)
    with pytest.raises(ConfigError) as err:
        QuantPlan.parse("8", clip=0.5)
    assert "clip" in one_line(err)


@pytest.mark.parametrize("value", ["int9", "", "ptq", "4-x-8"])
def test_an_unknown_format_is_a_one_line_format_error_naming_it(value):
    with pytest.raises(FormatError) as err:
        QuantPlan.parse(value)
    bad = value[3:] if value == "ptq" else "x" if value == "4-x-8" else value
    assert repr(bad) in one_line(err)


def test_a_non_scalar_option_is_refused_naming_it():
    with pytest.raises(FormatError) as err:
        FormatSpec.from_manifest("int4", {"group_size": [32]})
    assert "group_size" in one_line(err) and "[32]" in str(err.value)


@pytest.mark.parametrize(("name", "stored", "meaning"), [
    ("int4", {}, {"group_size": None, "activations": "float", "grid": "symmetric", "act_recipe": "symmetric"}),
    ("int2", {"group_size": 8}, {"group_size": 8, "activations": "float", "grid": "symmetric",
                                 "act_recipe": "symmetric"}),
    ("int8", {"group_size": None, "activations": "int8", "grid": "symmetric"},
     {"group_size": None, "activations": "int8", "grid": "symmetric", "act_recipe": "symmetric"}),
    ("ternary", {}, {"activations": "float", "act_recipe": "symmetric"}),
    ("int4", {"activations": "int8", "act_recipe": "zero_point"},
     {"group_size": None, "activations": "int8", "grid": "symmetric", "act_recipe": "zero_point"}),
    ("fp32", {}, {}),
    ("binary", {}, {}),
])
def test_a_manifest_without_an_option_means_what_the_format_did_when_it_was_written(name, stored, meaning):
    assert FormatSpec.from_manifest(name, stored).build().options() == meaning


def test_a_manifest_option_its_format_does_not_take_fails_on_build():
    spec = FormatSpec.from_manifest("binary", {"group_size": 8})
    with pytest.raises(FormatError) as err:
        spec.build()
    assert "group_size" in one_line(err)


def test_model_names_become_plans():
    assert QuantPlan.parse("ptq4") == QuantPlan(("int4",), method="ptq")
    assert QuantPlan.parse("1-1-8") == QuantPlan(("binary", "binary", "int8"), per_layer=True)
    assert QuantPlan.parse("ptq2-2-8").method == "ptq"
    mixed = QuantPlan.parse("ptq4", layer_formats=["1", "bitnet", "8"])
    assert (mixed.formats, mixed.per_layer, mixed.method) == (("binary", "ternary", "int8"), True, "ptq")
    assert QuantPlan.parse("1-1-8", layer_formats=["8", "8", "8"]).formats == ("binary", "binary", "int8")


def test_model_options_reach_the_formats_that_take_them():
    plan = QuantPlan.parse("1-bitnet-4-8", group_size=16, weight_only=True, keep_last_fp=True)
    specs = plan.layer_specs(4)
    assert [s.name for s in specs] == ["binary", "ternary", "int4", "fp32"]
    assert [dict(s.options) for s in specs] == [{}, {"activations": "float"},
                                                {"activations": "float", "group_size": 16}, {}]
    assert QuantPlan.parse("4", group_size=None).options == ()
    assert QuantPlan.parse("4", weight_only=False).layer_specs(2)[0].build().activations == "int8"
    assert QuantPlan.parse("4").layer_specs(0) == []


def test_a_plan_of_the_wrong_layer_count_names_both_counts():
    with pytest.raises(ConfigError) as err:
        QuantPlan.parse(None, layer_formats=["1", "8"]).layer_specs(3)
    assert "2 entries" in one_line(err) and "3 Linear layers" in str(err.value)


def test_with_format_keeps_the_options_and_a_plan_without_a_format_has_no_default():
    plan = QuantPlan.parse(None, group_size=16, keep_last_fp=True)
    assert plan.formats == ()
    with pytest.raises(ConfigError):
        plan.default  # noqa: B018
    expert = plan.with_format("4")
    assert expert.layer_specs(2) == [FormatSpec("int4", (("group_size", 16),)), FormatSpec("fp32")]


def test_a_loaded_artifact_builds_each_format_once(tmp_path):
    torch.manual_seed(0)
    packed = pack_model(quantize_model(MLPClassifier(20, 3, (16, 8)), QuantPlan.parse("4", group_size=8)))
    loaded = artifact.load(artifact.save(packed, tmp_path / "m"))
    formats = [m.fmt for m in loaded.modules() if isinstance(m, PackedLinear)]
    assert len(formats) == 3 and all(f is formats[0] for f in formats)
    assert formats[0].options() == {"group_size": 8, "activations": "int8", "grid": "symmetric",
                                    "act_recipe": "zero_point"}
