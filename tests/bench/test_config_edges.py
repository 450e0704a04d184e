"""``qwave bench`` configuration at its edges: every value checked before any output or training (each job of
a sweep included), tags are plain names, and no run writes inside another live run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from qwave.bench import provenance, runner
from qwave.bench.config import validate
from qwave.cli import main
from qwave.errors import ConfigError


def _with(cfg, key: str, value):
    """``cfg`` with the dotted ``key`` set to ``value`` (a copy)."""
    head, _, rest = key.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})
    return dataclasses.replace(cfg, **{head: _with(getattr(cfg, head), rest, value)})


BAD_VALUES = [
    ("train.lr", float("nan"), "train.lr"),
    ("train.lr", float("inf"), "train.lr"),
    ("model.hidden", [-5], "model.hidden[0]"),
    ("model.dropout", -0.5, "model.dropout"),
    ("model.dropout", 1.0, "model.dropout"),
    ("threads", -1, "threads"),
    ("seed", -1, "seed"),
    ("seed", 2**40, "seed"),
    ("seeds", [0, 2**40], "seeds[1]"),
    ("model.group_size", 0, "model.group_size"),
    ("data.drop", ["label"], "data.drop"),
    ("models", ["fp32", "fp32"], "fp32 more than once"),
    ("models", ["fp32", "int9"], "int9"),
    ("tag", "../x", "tag"),
    ("tag", "/tmp/x", "tag"),
    ("tag", "a/b", "tag"),
    ("tag", "", "tag"),
    ("cv.val_fraction", 0.0, "cv.val_fraction"),
]


@pytest.mark.parametrize("key, value, word", BAD_VALUES, ids=[f"{k}={v}" for k, v, _ in BAD_VALUES])
def test_every_bad_value_is_one_config_error_naming_its_key(fast_config, key, value, word):
    validate(fast_config)  # the base config is valid
    with pytest.raises(ConfigError) as info:
        validate(_with(fast_config, key, value))
    assert word in str(info.value) and "\n" not in str(info.value)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


@pytest.mark.parametrize("override, word", [
    ("train.lr=nan", "train.lr"),
    ("model.hidden=[-5]", "model.hidden[0]"),
    ("+hydra_x=1", "hydra_x"),
    ("tag=${oc.env:HOME}", "interpolation"),
    ("tag=../elsewhere", "tag"),
    ("models=[fp32,fp32]", "more than once"),
])
def test_bad_overrides_are_refused_before_anything_is_written(separable_table, tmp_path, capsys, override, word):
    out = tmp_path / "out"
    assert main(["bench", f"data.path={separable_table}", f"output_dir={out}", override]) == 2
    assert word in _one_line(capsys)
    assert not out.exists() and not (tmp_path / "elsewhere").exists()


def test_a_multirun_checks_every_jobs_config_before_the_first_job_trains(separable_table, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["bench", "-m", f"data.path={separable_table}", f"output_dir={out}", "models=[fp32],[int9]",
            "train.epochs=1"]
    assert main(argv) == 2
    err = _one_line(capsys)
    assert "int9" in err and "job" in err
    assert not out.exists()


def test_a_run_inside_a_live_runs_tag_is_refused_and_the_outer_run_is_refused_while_it_lives(tmp_path):
    outer = tmp_path / "out" / "t"
    with provenance.tag_lock(outer):
        with pytest.raises(ConfigError, match="lies inside"):
            with provenance.tag_lock(outer / "fp32"):
                pass
    inner = tmp_path / "out" / "t" / "fp32"
    with provenance.tag_lock(inner):
        with pytest.raises(ConfigError, match="being written"):
            with provenance.tag_lock(outer):
                pass


def test_the_tag_is_locked_before_the_table_is_read(fast_config, monkeypatch):
    read = []
    monkeypatch.setattr(runner, "load_dataset", lambda cfg: read.append(cfg))
    root = Path(fast_config.output_dir) / fast_config.tag
    with provenance.tag_lock(root):
        with pytest.raises(ConfigError, match="being written"):
            runner.run_benchmark(fast_config)
    assert read == []
