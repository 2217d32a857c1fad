"""The canary analysis: pure, so a table of windows and the verdict each must get."""

from __future__ import annotations

import math

import pytest

from modelship.autoscale.signals import Scrape
from modelship.canary.analysis import FAILED, PASSED, WAITING, Thresholds, TrackStats, analyze, combine, delta

BOUNDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, math.inf)


def track(requests: int, *, ms: float, errors: int = 0, sheds: int = 0) -> TrackStats:
    """`requests` answered, all in the histogram bucket that holds `ms`."""
    buckets = tuple((le, float(requests) if le * 1000 >= ms else 0.0) for le in BOUNDS)
    return TrackStats(requests=requests, errors=errors, sheds=sheds, buckets=buckets)


T = Thresholds(min_requests=50, max_error_rate=0.01, max_shed_rate=0.05, max_latency_ratio=1.5,
               latency_slack_ms=10, slo_ms=100, percentile="p95")


@pytest.mark.parametrize(("canary", "stable", "outcome", "metric", "words"), [
    # not enough data: no verdict, whatever the numbers say
    (track(0, ms=3), track(500, ms=3), WAITING, None, "waiting for 50 canary requests, 0 so far"),
    (track(49, ms=900, errors=49), track(500, ms=3), WAITING, None, "49 so far"),
    # healthy
    (track(50, ms=3), track(500, ms=3), PASSED, None, "50 canary requests"),
    (track(200, ms=20, errors=1), track(500, ms=20), PASSED, None, "error rate 0.005"),
    # errors and sheds
    (track(100, ms=3, errors=2), track(500, ms=3), FAILED, "error_rate", "error rate 0.020 > 0.01 (2 of 100"),
    (track(100, ms=3, sheds=6), track(500, ms=3), FAILED, "shed_rate", "shed rate 0.060 > 0.05 (6 of 100"),
    # latency against the SLO
    (track(100, ms=400), track(500, ms=3), FAILED, "latency_slo", "p95 latency 487.5 ms > SLO 100 ms"),
    # against stable: more than 1.5x + 10 ms, under the SLO
    (track(100, ms=60), track(500, ms=8), FAILED, "latency_vs_stable", "p95 latency 97.5 ms > stable's 9.8 ms x 1.5 + 10 ms"),
    # within the slack: a small absolute difference is noise, not a regression
    (track(100, ms=8), track(500, ms=4), PASSED, None, "p95 9.8 ms, error rate 0.000, shed rate 0.000; stable p95 4.8 ms"),
    # stable too quiet to compare against: only the absolute thresholds apply
    (track(100, ms=60), track(10, ms=4), PASSED, None, "stable has 10 requests, too few to compare"),
])
def test_verdicts(canary, stable, outcome, metric, words) -> None:
    verdict = analyze(canary, stable, T)
    assert (verdict.outcome, verdict.metric) == (outcome, metric), verdict
    assert words in verdict.message, verdict.message


def test_without_an_slo_only_the_comparison_with_stable_judges_latency() -> None:
    loose = Thresholds(min_requests=10, slo_ms=None)
    assert analyze(track(100, ms=400), track(100, ms=300), loose).outcome == PASSED
    assert analyze(track(100, ms=400), track(100, ms=30), loose).metric == "latency_vs_stable"


def scrape(*, at: float, outcomes: dict[str, float], buckets: dict[float, float]) -> Scrape:
    return Scrape(at=at, requests=sum(outcomes.values()), buckets=tuple(sorted(buckets.items())), queue_sum=0,
                  queue_count=0, inflight=0, outcomes=tuple(sorted(outcomes.items())))


def test_delta_counts_demand_only_and_combine_sums_pods_bound_by_bound() -> None:
    first = scrape(at=0, outcomes={"success": 10, "invalid": 5, "error": 1}, buckets={0.01: 10, math.inf: 11})
    last = scrape(at=5, outcomes={"success": 40, "invalid": 50, "error": 3, "shed": 2, "timeout": 1},
                  buckets={0.01: 30, math.inf: 46})
    one = delta(first, last)
    # success 30 + error 2 + shed 2 + timeout 1; the client's own mistakes (invalid) are not demand
    assert (one.requests, one.errors, one.sheds) == (35, 3, 2)
    assert one.buckets == ((0.01, 20.0), (math.inf, 35.0))
    both = combine([one, one])
    assert (both.requests, both.errors, both.sheds) == (70, 6, 4)
    assert both.buckets == ((0.01, 40.0), (math.inf, 70.0))
    assert combine([]).requests == 0 and combine([]).latency_ms("p95") is None
