"""The canary analysis: pure, so a table of windows and the verdict each must get."""

from __future__ import annotations

import math

import pytest

from modelship.autoscale.signals import Scrape
from modelship.canary.analysis import (
    FAILED, PASSED, WAITING, Thresholds, TrackStats, analyze, combine, delta, min_compared,
)

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


# -- output agreement (the canary's answers compared with stable's, mirror.py on the server) -------

AGREE = Thresholds(min_requests=50, slo_ms=100, min_output_agreement=0.95, min_compared=10)


def agreeing(requests: int, agreed: int, disagreed: int, failed: int = 0) -> TrackStats:
    base = track(requests, ms=3)
    return TrackStats(requests=base.requests, buckets=base.buckets, agreed=agreed, disagreed=disagreed,
                      mirror_failed=failed)


@pytest.mark.parametrize(("canary", "thresholds", "outcome", "metric", "words"), [
    # off: a canary that answers wrong but as fast passes (what the agreement check is for)
    (agreeing(100, 0, 40), T, PASSED, None, "100 canary requests"),
    # on: too few answers compared is no verdict, even when all failed to reach stable
    (agreeing(100, 9, 0, failed=30), AGREE, WAITING, None,
     "waiting for 10 canary answers compared with stable's, 9 so far (30 mirrored requests failed)"),
    (agreeing(100, 10, 0), AGREE, PASSED, None, "output agreement 1.000 of 10"),
    (agreeing(100, 19, 1), AGREE, PASSED, None, "output agreement 0.950 of 20"),
    (agreeing(100, 18, 2), AGREE, FAILED, "output_agreement",
     "output agreement 0.900 < 0.95 (18 of 20 answers compared with stable's agreed)"),
    (agreeing(100, 0, 40), AGREE, FAILED, "output_agreement", "output agreement 0.000 < 0.95"),
    # the older checks still come first: a canary that errors fails on its error rate
    (TrackStats(requests=100, errors=5, buckets=track(100, ms=3).buckets, disagreed=20), AGREE, FAILED,
     "error_rate", "error rate 0.050"),
    # agreement is judged only once the canary has min_requests
    (agreeing(40, 0, 40), AGREE, WAITING, None, "waiting for 50 canary requests"),
])
def test_output_agreement_verdicts(canary, thresholds, outcome, metric, words) -> None:
    verdict = analyze(canary, track(500, ms=3), thresholds)
    assert (verdict.outcome, verdict.metric) == (outcome, metric), verdict
    assert words in verdict.message, verdict.message


def test_min_compared_follows_the_sample_rate_with_a_floor() -> None:
    assert min_compared(50, 0.1) == 10 and min_compared(1000, 0.1) == 100 and min_compared(1000, 1.0) == 1000


def test_delta_and_combine_carry_the_mirror_counters() -> None:
    def at(t: float, mirror: dict[str, float]) -> Scrape:
        return Scrape(at=t, requests=0, buckets=(), queue_sum=0, queue_count=0, inflight=0,
                      outcomes=(("success", 0.0),), mirror=tuple(sorted(mirror.items())))

    one = delta(at(0, {"agreed": 5, "disagreed": 1}), at(10, {"agreed": 12, "disagreed": 4, "failed": 2, "dropped": 9}))
    two = delta(at(0, {}), at(10, {"agreed": 3}))
    both = combine([one, two])
    assert (both.agreed, both.disagreed, both.mirror_failed) == (10, 3, 2)
    assert both.output_agreement == pytest.approx(10 / 13)
    assert TrackStats().output_agreement is None


def test_the_mirror_counter_is_parsed_from_the_servers_metrics() -> None:
    from modelship.autoscale.signals import parse

    text = "\n".join([
        "# TYPE modelship_inference_requests counter",
        'modelship_inference_requests_total{model="m",version="1",protocol="http",outcome="success"} 7.0',
        "# TYPE modelship_mirror_requests counter",
        'modelship_mirror_requests_total{model="m",outcome="agreed"} 4.0',
        'modelship_mirror_requests_total{model="m",outcome="disagreed"} 2.0',
        'modelship_mirror_requests_total{model="other",outcome="agreed"} 100.0',
    ]) + "\n"
    assert dict(parse(text, model="m", at=0).mirror) == {"agreed": 4.0, "disagreed": 2.0}
