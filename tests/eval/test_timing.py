"""The timing rules (``eval.timing``): warm-up and interleaving order, budgets, clocks, percentiles and the
batched logits every timed call runs, checked against closed forms on a fake clock."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qwave.errors import ConfigError
from qwave.eval import timing


def test_latency_stats_percentiles_and_throughput():
    stats = timing.latency_stats(np.array([0.001, 0.002, 0.003, 0.004, 0.010]), batch=8)
    assert stats.p50_ms == pytest.approx(3.0)
    assert stats.p99_ms <= 10.0 and stats.p95_ms >= stats.p50_ms
    assert stats.samples_per_s == pytest.approx(8 / 0.003)


def test_round_robin_counts_warmup_apart_and_interleaves_rotating_methods():
    calls = []
    times = timing.time_calls({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=2,
                                   repeats=3)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert calls == ["a", "a", "b", "b", "a", "b", "b", "a", "a", "b"]


def test_round_robin_rejects_bad_repeats_and_clocks():
    with pytest.raises(ConfigError):
        timing.time_calls({"a": lambda: None}, repeats=0)
    with pytest.raises(ConfigError, match="clock"):
        timing.time_calls({"a": lambda: None}, clock="sundial")


def test_cpu_clock_does_not_count_time_spent_waiting():
    import time

    times = timing.time_calls({"sleep": lambda: time.sleep(0.02)}, warmup=0, repeats=3, clock="cpu")
    assert times["sleep"].max() < 0.01


def test_blocks_time_each_method_alone_after_its_own_warmup():
    calls = []
    times = timing.time_calls({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=2,
                              repeats=3, interleaved=False)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert calls == ["a"] * 5 + ["b"] * 5
    with pytest.raises(ConfigError):
        timing.time_calls({"a": lambda: None}, repeats=0, interleaved=False)




class FakeClock:
    """A clock that moves only when a timed call says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_time_calls_returns_exactly_what_each_call_took_on_a_fake_clock_and_skips_the_warmup():
    clock, costs = FakeClock(), iter([100.0, 1.0, 2.0, 3.0, 4.0, 5.0])  # the first call of "b" is its warm-up

    def take(seconds: float) -> None:
        clock.now += seconds

    times = timing.time_calls({"a": lambda: take(0.5), "b": lambda: take(next(costs))}, warmup=1, repeats=5,
                              clock=clock)
    assert times["a"].tolist() == [0.5] * 5 and times["b"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    stats = timing.latency_stats(times["b"], batch=4)
    assert (stats.p50_ms, stats.mean_ms, stats.repeats) == (3000.0, 3000.0, 5)
    assert stats.p95_ms == pytest.approx(4800.0) and stats.p99_ms == pytest.approx(4960.0)  # linear interpolation
    assert stats.samples_per_s == pytest.approx(4 / 3.0)


def test_time_calls_stops_at_the_wall_budget_after_three_rounds():
    times = timing.time_calls({"a": lambda: None, "b": lambda: None}, warmup=0, repeats=10**9, max_seconds=0.0)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    times = timing.time_calls({"a": lambda: None}, warmup=0, repeats=2, min_seconds=0.05, max_seconds=5.0)
    assert len(times["a"]) > 2  # kept going until min_seconds passed


class Costly(nn.Module):
    """A linear model whose every forward advances the fake clock by ``rows x (1 + pass)`` seconds (a pass = a
    whole sweep of ``rows_total`` rows), so pass ``p`` takes ``rows_total x (1 + p)``."""

    def __init__(self, clock: FakeClock, rows_total: int, grow: bool) -> None:
        super().__init__()
        self.clock, self.rows_total, self.grow, self.seen = clock, rows_total, grow, 0
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.seen // self.rows_total if self.grow else 0
        self.clock.now += len(x) * (1 + p)
        self.seen += len(x)
        return self.linear(x)


def test_time_pair_reports_median_and_percentiles_per_sample_against_the_closed_form():
    clock, X = FakeClock(), torch.randn(8, 4)
    models = {"flat": Costly(clock, 8, grow=False), "growing": Costly(clock, 8, grow=True)}
    out = timing.time_pair(models, X, warmup=1, repeats=5, batch_size=3, clock=clock)
    assert out["flat"]["seconds_per_sample"] == 1.0 and out["flat"]["p90_seconds_per_sample"] == 1.0
    per_sample = np.array([2.0, 3.0, 4.0, 5.0, 6.0])  # passes 1..5 after the warm-up pass 0
    assert out["growing"]["seconds_per_sample"] == pytest.approx(np.median(per_sample))
    assert out["growing"]["p10_seconds_per_sample"] == pytest.approx(2.4)
    assert out["growing"]["p90_seconds_per_sample"] == pytest.approx(5.6)
    assert {k: out["growing"][k] for k in ("repeats", "warmup", "batch_size", "samples")} == {
        "repeats": 5, "warmup": 1, "batch_size": 3, "samples": 8}
    assert models["growing"].seen == 6 * 8  # every pass covers all rows: 1 warm-up + 5 timed


def test_predict_logits_batches_without_gradients_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5)).train()
    X = torch.randn(11, 5)
    out = timing.predict_logits(model, X, batch_size=4)
    assert not model.training and not out.requires_grad
    torch.testing.assert_close(out, X @ model[0].weight.T + model[0].bias)
    empty = torch.zeros(0, 5)
    assert timing.predict_logits(model, empty) is empty
