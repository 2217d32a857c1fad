"""The sequential test: paired per-round ratios, a confidence interval on their median, and which
candidates stay open for more rounds. Pure functions on recorded figures (never wall time)."""

from __future__ import annotations

import pytest

from modelship_server.optimize.search import choose
from modelship_server.optimize.timing import (TimingStats, median_interval, open_verdicts, paired_ratios,
                                              paired_verdict, stats)

# A loaded machine: the baseline's rounds swing by 2x with the neighbours' load.
LOAD = [1.0, 1.6, 1.1, 2.0, 1.2, 1.7, 1.0, 1.9, 1.3, 1.5]
BASE = [100.0 * f for f in LOAD]


def test_paired_ratios_pair_rounds_by_index_over_the_rounds_both_ran():
    assert paired_ratios([50.0, 80.0], [100.0, 160.0, 120.0]) == [0.5, 0.5]


def test_median_interval_needs_six_values_at_95_percent_and_narrows_with_more():
    assert median_interval([1.0] * 5) is None
    assert median_interval([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) == (0.1, 0.6)
    wide = median_interval([0.80 + 0.01 * i for i in range(6)])
    narrow = median_interval([0.80 + 0.01 * (i % 6) for i in range(30)])
    assert wide is not None and narrow is not None and narrow[1] - narrow[0] < wide[1] - wide[0]


def test_a_gain_within_the_spread_but_steady_in_paired_rounds_is_faster():
    candidate = [b * 0.88 for b in BASE]  # 12 % faster in every round; the spread is ~40 %
    assert stats(BASE).spread > 0.3
    assert paired_verdict(candidate, BASE) == "faster"
    timings = {"baseline": stats(BASE), "a": stats(candidate)}
    assert choose("baseline", timings, {"a"})[0] == "baseline"  # the spread rule alone cannot see it
    chosen, reasons = choose("baseline", timings, {"a"}, {"a": "faster"})
    assert chosen == "a" and "paired rounds" in reasons["a"]


@pytest.mark.parametrize("ratios, verdict", [
    ([0.9] * 5, "undecided"),  # too few rounds for any interval
    ([0.9, 0.95, 0.92, 0.97, 0.93, 0.91], "faster"),
    ([1.0, 1.02, 0.99, 1.01, 1.03, 1.0], "not_faster"),  # shown within 3 % of the baseline
    ([1.1, 1.2, 1.05, 1.15, 1.3, 1.1], "not_faster"),  # slower
    ([0.9, 1.05, 0.95, 1.02, 0.93, 1.04], "undecided"),  # straddles: needs more rounds
])
def test_paired_verdict_table(ratios, verdict):
    assert paired_verdict([r * b for r, b in zip(ratios, BASE)], BASE) == verdict


def test_open_verdicts_keeps_the_undecided_and_close_winners_open():
    per_round = {
        "baseline": BASE[:6],
        "clear": [b * 0.5 for b in BASE[:6]],  # faster, far ahead of everything
        "close": [b * r for b, r in zip(BASE, [0.52, 0.47, 0.55, 0.45, 0.5, 0.53])],  # as fast as "clear"?
        "straddles": [b * r for b, r in zip(BASE, [0.9, 1.05, 0.95, 1.02, 0.93, 1.04])],
        "slower": [b * 1.2 for b in BASE[:6]],
        "failed-gate": [b * 0.9 for b in BASE[:6]],  # not passed: never reopened
    }
    # "straddles" is undecided against the baseline, but shown slower than the winner "clear":
    # more rounds could not change the choice, so it is not timed again
    assert open_verdicts(per_round, "baseline", {"clear", "close", "straddles", "slower"}) == {"clear", "close"}
    decided = dict(per_round, close=[b * 0.8 for b in BASE[:6]])  # clearly behind "clear" now
    assert open_verdicts(decided, "baseline", {"clear", "close", "straddles", "slower"}) == set()
    # without a winner, the undecided one stays open
    assert open_verdicts(per_round, "baseline", {"straddles", "slower"}) == {"straddles"}


def test_choose_without_paired_verdicts_is_the_spread_rule():
    t = lambda m, s: TimingStats(median_ms=m, spread=s, rounds_ms=[m])  # noqa: E731
    assert choose("baseline", {"baseline": t(1.0, 0.3), "a": t(0.8, 0.1)}, {"a"}, {"a": "undecided"})[0] == "baseline"
    # a paired "faster" never makes a slower median win
    assert choose("baseline", {"baseline": t(1.0, 0.3), "a": t(1.05, 0.1)}, {"a"}, {"a": "faster"})[0] == "baseline"


def test_a_spread_win_that_paired_rounds_contradict_is_not_chosen():
    """Seen on a loaded machine: by medians 1.37x beyond a 32 % spread, head to head 0.82x."""
    timings = {"baseline": TimingStats(median_ms=112.7, spread=0.32, rounds_ms=[112.7]),
               "a": TimingStats(median_ms=82.3, spread=0.28, rounds_ms=[82.3])}
    assert choose("baseline", timings, {"a"})[0] == "a"
    chosen, reasons = choose("baseline", timings, {"a"}, {"a": "not_faster"})
    assert chosen == "baseline" and "not per round" in reasons["a"]
