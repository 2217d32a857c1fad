"""Timing: the statistics and the `beats`/`choose` decisions, on recorded figures (never wall time)."""

from __future__ import annotations

import pytest

from modelship_server.optimize.search import choose
from modelship_server.optimize.timing import (TimingStats, beats, cost_seconds, outpaced, plan, speedup, stats,
                                              time_interleaved)


def t(median: float, spread: float) -> TimingStats:
    return TimingStats(median_ms=median, spread=spread, rounds_ms=[median])


def test_stats_median_and_relative_spread():
    s = stats([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s.median_ms == 3.0
    assert s.spread == pytest.approx((4.0 - 2.0) / 3.0)
    assert stats([2.0, 2.0, 2.0]).spread == 0.0


@pytest.mark.parametrize("base, cand, wins", [
    (t(10.0, 0.02), t(5.0, 0.02), True),     # 2x, tiny noise
    (t(10.0, 0.02), t(9.9, 0.02), False),    # 1 % gain within 2 % noise
    (t(10.0, 0.10), t(9.0, 0.01), True),     # 11 % gain beyond the larger 10 % spread
    (t(10.0, 0.01), t(9.0, 0.20), False),    # candidate's own noise hides its gain
    (t(10.0, 0.0), t(10.0, 0.0), False),     # equal is not faster
    (t(10.0, 0.0), t(12.0, 0.0), False),     # slower never wins
])
def test_beats_only_beyond_measured_spread(base, cand, wins):
    assert beats(base, cand) is wins


def test_speedup():
    assert speedup(t(10.0, 0), t(4.0, 0)) == pytest.approx(2.5)


@pytest.mark.parametrize("timings, passed, chosen", [
    # the fastest gated candidate that beats the baseline
    ({"baseline": t(10, .02), "a": t(6, .02), "b": t(4, .02)}, {"a", "b"}, "b"),
    # b is fastest but failed the gate
    ({"baseline": t(10, .02), "a": t(6, .02), "b": t(4, .02)}, {"a"}, "a"),
    # nothing beats the baseline beyond noise: keep the original
    ({"baseline": t(10, .05), "a": t(9.8, .02)}, {"a"}, "baseline"),
    # everything slower: baseline
    ({"baseline": t(10, .01), "a": t(12, .01), "b": t(20, .01)}, {"a", "b"}, "baseline"),
    # nothing passed the gate
    ({"baseline": t(10, .01)}, set(), "baseline"),
])
def test_choose_never_slower_than_baseline(timings, passed, chosen):
    winner, reasons = choose("baseline", timings, passed)
    assert winner == chosen
    assert timings[winner].median_ms <= timings["baseline"].median_ms
    assert "baseline" in reasons


def test_time_interleaved_runs_every_variant_each_round_in_rotating_order():
    calls: list[str] = []
    runners = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    result = time_interleaved(runners, rounds=3, calls=2, warmup=1)
    assert set(result) == {"a", "b", "c"}
    assert all(len(s.rounds_ms) == 3 for s in result.values())
    timed = calls[3:]  # after one warmup call each
    firsts = [timed[i * 6] for i in range(3)]  # first runner of each round (2 calls x 3 runners per round)
    assert firsts == ["a", "b", "c"]


@pytest.mark.parametrize("budget, per_call, expected", [
    (100.0, [1.0, 1.0], (7, 20)),  # 0.6 s needed: as asked
    (0.2, [1.0, 1.0], (7, 13)),  # fewer calls per round first
    (0.05, [1.0, 1.0], (7, 3)),
    (0.02, [1.0, 1.0], (3, 2)),  # then fewer rounds, down to the minimum
    (0.0, [1.0, 1.0], (3, 2)),  # never below it, even with no time left
    (1.0, [0.0], (7, 20)),  # nothing measurable: as asked
])
def test_plan_scales_calls_then_rounds_to_the_budget(budget, per_call, expected):
    assert plan(budget, per_call, rounds=7, calls=20) == expected
    rounds, calls = expected
    if expected != (3, 2):
        assert cost_seconds(per_call, rounds, calls) <= max(budget, 0.0) or sum(per_call) == 0


@pytest.mark.parametrize("rounds, expected", [
    ({"baseline": [10, 10, 10], "fast": [5, 5, 5], "slow": [9, 9, 9]}, {"slow"}),  # 9 > 5 beyond 0 % noise
    ({"baseline": [10, 10, 10], "fast": [5, 5.5, 6], "close": [5.2, 5.6, 6.1]}, set()),  # within noise
    ({"baseline": [30, 30, 30], "fast": [5, 5, 5]}, set()),  # the baseline is never dropped
    ({"fast": [5, 5, 5], "slow": [9, 9, 9]}, {"slow"}),
])
def test_outpaced_drops_only_variants_slower_than_the_lead_beyond_noise(rounds, expected):
    assert outpaced(rounds, {"baseline"}) == expected


def test_racing_stops_timing_an_outpaced_variant_but_never_the_baseline():
    import time as _time

    runners = {"baseline": lambda: _time.sleep(0.002), "fast": lambda: None,
               "slow": lambda: _time.sleep(0.004)}
    result = time_interleaved(runners, rounds=8, calls=2, warmup=0, protected={"baseline"}, race_after=3)
    assert len(result["baseline"].rounds_ms) == 8 and len(result["fast"].rounds_ms) == 8
    assert len(result["slow"].rounds_ms) == 3  # dropped after the third round
    assert len(time_interleaved(runners, rounds=4, calls=1, warmup=0)["slow"].rounds_ms) == 4  # no racing: all
