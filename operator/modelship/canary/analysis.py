"""Canary against stable over the same window: pass, fail (naming the metric and the values), or
no verdict yet because too few requests were seen.

Pure: the inputs are counter differences per track (`TrackStats`), summed over the track's pods
from the same scrapes the builtin autoscaler reads (autoscale/signals.py). Latency is read at
spec.slo's percentile (p95 without an SLO) from the summed histogram, as Prometheus'
histogram_quantile would, so a track's latency is that of all its requests, not an average of pods.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Final, Literal, Sequence

from modelship.api.v1alpha1 import ModelService
from modelship.autoscale.signals import PERCENTILES, Scrape, quantile
from modelship.contracts import DEMAND_OUTCOMES

Outcome = Literal["pass", "fail", "wait"]
PASSED: Final = "pass"
FAILED: Final = "fail"
WAITING: Final = "wait"
# Outcomes that count against the canary: the server failed, timed out or was not ready.
ERROR_OUTCOMES = ("error", "timeout", "unavailable")
SHED_OUTCOMES = ("shed",)


@dataclasses.dataclass(frozen=True)
class TrackStats:
    """What one track (canary or stable) answered in the window: demand requests (a client's own
    mistakes, `invalid` and `not_found`, are left out), errors, sheds, and the request-duration
    histogram as cumulative (upper bound, count) pairs, +Inf last."""

    requests: float = 0.0
    errors: float = 0.0
    sheds: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()
    # Output agreement: the canary's answers compared with stable's (mirror.py on the server).
    agreed: float = 0.0
    disagreed: float = 0.0
    mirror_failed: float = 0.0

    @property
    def compared(self) -> float:
        return self.agreed + self.disagreed

    @property
    def output_agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared > 0 else None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    @property
    def shed_rate(self) -> float | None:
        return self.sheds / self.requests if self.requests > 0 else None

    def latency_ms(self, percentile: str) -> float | None:
        seconds = quantile(PERCENTILES[percentile], self.buckets)
        return seconds * 1000.0 if seconds is not None else None


def delta(first: Scrape, last: Scrape) -> TrackStats:
    """One pod's window: the newest scrape less the first one of the window (same process)."""
    def count(scrape: Scrape, names: Sequence[str]) -> float:
        return sum(n for outcome, n in scrape.outcomes if outcome in names)

    old = dict(first.buckets)
    before, after = dict(first.mirror), dict(last.mirror)

    def mirrored(outcome: str) -> float:
        return max(0.0, after.get(outcome, 0.0) - before.get(outcome, 0.0))

    return TrackStats(
        requests=max(0.0, count(last, DEMAND_OUTCOMES) - count(first, DEMAND_OUTCOMES)),
        errors=max(0.0, count(last, ERROR_OUTCOMES) - count(first, ERROR_OUTCOMES)),
        sheds=max(0.0, count(last, SHED_OUTCOMES) - count(first, SHED_OUTCOMES)),
        buckets=tuple((le, max(0.0, n - old.get(le, 0.0))) for le, n in last.buckets),
        agreed=mirrored("agreed"), disagreed=mirrored("disagreed"), mirror_failed=mirrored("failed"),
    )


def combine(tracks: Sequence[TrackStats]) -> TrackStats:
    """The pods of one track summed (histogram buckets bound by bound)."""
    buckets: dict[float, float] = {}
    for track in tracks:
        for le, n in track.buckets:
            buckets[le] = buckets.get(le, 0.0) + n
    return TrackStats(requests=sum(t.requests for t in tracks), errors=sum(t.errors for t in tracks),
                      sheds=sum(t.sheds for t in tracks), buckets=tuple(sorted(buckets.items())),
                      agreed=sum(t.agreed for t in tracks), disagreed=sum(t.disagreed for t in tracks),
                      mirror_failed=sum(t.mirror_failed for t in tracks))


@dataclasses.dataclass(frozen=True)
class Thresholds:
    min_requests: int = 50
    max_error_rate: float = 0.01
    max_shed_rate: float = 0.05
    max_latency_ratio: float = 1.5
    latency_slack_ms: float = 10.0
    slo_ms: float | None = None
    percentile: str = "p95"
    min_output_agreement: float | None = None  # None: output agreement is not judged
    min_compared: int = 10  # answers compared with stable before agreement is judged


# Fewest mirrored answers that judge agreement, whatever the sample rate.
MIN_COMPARED = 10


def min_compared(min_requests: int, sample_rate: float) -> int:
    """Compared answers needed: the share of `min_requests` the sample rate mirrors, at least MIN_COMPARED."""
    return max(MIN_COMPARED, math.ceil(min_requests * sample_rate))


def thresholds_of(msvc: ModelService) -> Thresholds:
    analysis = msvc.spec.rollout.canary_settings.analysis
    slo = msvc.spec.slo
    return Thresholds(min_requests=analysis.min_requests, max_error_rate=analysis.max_error_rate,
                      max_shed_rate=analysis.max_shed_rate, max_latency_ratio=analysis.max_latency_ratio,
                      latency_slack_ms=float(analysis.latency_slack_milliseconds),
                      slo_ms=float(slo.latency_milliseconds) if slo else None,
                      percentile=slo.percentile if slo else "p95",
                      # Triton has no --mirror-to: agreement is judged for modelship-server only
                      min_output_agreement=analysis.min_output_agreement if msvc.spec.runtime != "triton" else None,
                      min_compared=min_compared(analysis.min_requests, analysis.mirror_sample_rate))


@dataclasses.dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    message: str
    metric: str | None = None  # the failing metric: error_rate, shed_rate, latency_slo, latency_vs_stable,
    # output_agreement
    canary: TrackStats = TrackStats()
    stable: TrackStats = TrackStats()


def analyze(canary: TrackStats, stable: TrackStats, t: Thresholds) -> Verdict:
    """The verdict on one window. Nothing is judged before the canary has answered
    `min_requests`; the comparison with stable needs as many stable requests."""
    def verdict(outcome: Outcome, message: str, metric: str | None = None) -> Verdict:
        return Verdict(outcome, message, metric, canary, stable)

    if canary.requests < t.min_requests:
        return verdict(WAITING, f"waiting for {t.min_requests} canary requests, {int(canary.requests)} so far")
    error_rate, shed_rate = canary.error_rate or 0.0, canary.shed_rate or 0.0
    if error_rate > t.max_error_rate:
        return verdict(FAILED, f"error rate {error_rate:.3f} > {t.max_error_rate:g} "
                             f"({int(canary.errors)} of {int(canary.requests)} canary requests)", "error_rate")
    if shed_rate > t.max_shed_rate:
        return verdict(FAILED, f"shed rate {shed_rate:.3f} > {t.max_shed_rate:g} "
                             f"({int(canary.sheds)} of {int(canary.requests)} canary requests)", "shed_rate")
    p = t.percentile
    latency = canary.latency_ms(p)
    if latency is not None and t.slo_ms is not None and latency > t.slo_ms:
        return verdict(FAILED, f"{p} latency {latency:.1f} ms > SLO {t.slo_ms:g} ms "
                             f"over {int(canary.requests)} canary requests", "latency_slo")
    stable_latency = stable.latency_ms(p) if stable.requests >= t.min_requests else None
    if latency is not None and stable_latency is not None:
        limit = stable_latency * t.max_latency_ratio + t.latency_slack_ms
        if latency > limit:
            return verdict(FAILED, f"{p} latency {latency:.1f} ms > stable's {stable_latency:.1f} ms "
                                 f"x {t.max_latency_ratio:g} + {t.latency_slack_ms:g} ms", "latency_vs_stable")
    agreement = ""
    if t.min_output_agreement is not None:
        if canary.compared < t.min_compared:
            return verdict(WAITING, f"waiting for {t.min_compared} canary answers compared with stable's, "
                                    f"{int(canary.compared)} so far ({int(canary.mirror_failed)} mirrored requests "
                                    "failed)")
        share = canary.output_agreement or 0.0
        if share < t.min_output_agreement:
            return verdict(FAILED, f"output agreement {share:.3f} < {t.min_output_agreement:g} ({int(canary.agreed)} "
                                 f"of {int(canary.compared)} answers compared with stable's agreed)",
                           "output_agreement")
        agreement = f", output agreement {share:.3f} of {int(canary.compared)}"
    against = (f"stable {p} {stable_latency:.1f} ms" if stable_latency is not None
               else f"stable has {int(stable.requests)} requests, too few to compare")
    shown = f"{latency:.1f} ms" if latency is not None else "unknown"
    return verdict(PASSED, f"{int(canary.requests)} canary requests: {p} {shown}, error rate {error_rate:.3f}, "
                         f"shed rate {shed_rate:.3f}{agreement}; {against}")
