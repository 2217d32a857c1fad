"""The builtin autoscaler's decision: how many replicas, and why, from one snapshot of signals.

Pure: the snapshot, the policy, the state carried from the previous decision and the clock
go in; the desired replica count, a sentence that explains it and the next state come out.
Everything that talks to pods, Prometheus or the API server lives elsewhere, so every case
below is a row in tests/autoscale/test_decision.py.

How it decides, in order:

1. Which pods count. Ready pods whose metrics were scraped within `stale_after_seconds`
   are *fresh*. A ready pod with no rate yet (it became ready within the last scrape or
   two) is *young*: the Service already sends it its share, so it counts as serving, but
   its missing numbers are not a gap. A ready pod that is neither is *missing*. When more
   than half the non-young ready pods are missing (a scrape gap, a Prometheus outage),
   the decision holds the current count: a gap must never look like zero load and scale
   down to min.
2. Demand. The mean arrival rate of the fresh pods times the ready pods (the Service
   balances evenly, so the missing ones carry the same share). Arrivals are answers plus
   shed requests plus the growth of the in-flight count: under overload the answers stop
   growing at the pod's capacity, and the backlog is where the rest of the demand shows.
3. Capacity. Per replica, from the optimize report or the spec, times a correction learned
   online (see `_learn`): when the pods break the SLO under real load, the capacity is at
   most what they serve; when latency stays far below the SLO at a good share of the
   capacity, it is higher than modelled. Bounded to [1/4, 4].
4. Replicas wanted, the larger of: demand / (capacity x target utilization), and one more
   than now when latency is over the SLO and no pod is starting.
5. Panic. When demand exceeds `panic_threshold` x what the ready pods can serve, or latency
   exceeds `panic_threshold` x the SLO, the decision scales up at once, at least doubling
   if latency demands it, and does not scale down until the panic window has passed. No
   scale-down either while the SLO is missed (whatever the load model says).
6. Scale-up is immediate; scale-down takes the highest recommendation of the last
   `scale_down_stabilization_seconds`, so the count falls only after the load has stayed
   low for the whole window. Changes within `tolerance` of the current count are ignored,
   so noise in the signals does not move replicas.
7. Bounds: [min, max]; wanting more than max while the SLO is missed is `limited`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, Mapping, Sequence

Percentile = Literal["p50", "p90", "p95", "p99"]
Direction = Literal["up", "down", "hold"]

CORRECTION_MIN, CORRECTION_MAX = 0.25, 4.0
LEARN_UP_BELOW = 0.4  # of the SLO: latency this low at half the modelled load means headroom


@dataclasses.dataclass(frozen=True)
class PodSignals:
    """One serving pod as seen at one scrape. Rates and latencies cover the last rate window;
    None means "not known" (no second scrape yet, or the scrape failed)."""

    name: str
    ready: bool
    ready_since: float | None = None  # when it became ready (its Ready condition's lastTransitionTime)
    scraped_at: float | None = None  # when its metrics were read; None: never or failed
    requests_per_second: float | None = None  # answered or shed requests per second
    backlog_growth: float = 0.0  # in-flight growth per second: arrivals the answers do not show yet
    inflight: float | None = None  # queued or running now
    queue_seconds: float | None = None  # mean time in the queue over the window
    samples: int = 0  # requests observed in the window (how much the latency figures mean)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Every serving pod of one ModelService at one moment, and the service-wide latency
    percentiles (from the summed histogram buckets of the fresh pods; averaging per-pod
    percentiles would be wrong)."""

    pods: tuple[PodSignals, ...]
    latency_seconds: Mapping[str, float] = dataclasses.field(default_factory=dict)  # "p95" -> seconds
    latency_samples: int = 0


@dataclasses.dataclass(frozen=True)
class Policy:
    """What the spec (and the optimize report) say; see docs/autoscaling.md for each knob."""

    slo_seconds: float
    percentile: Percentile
    capacity_per_replica: float  # requests/s one replica serves within the SLO
    min_replicas: int
    max_replicas: int
    target_utilization: float = 0.8
    scale_down_stabilization_seconds: float = 60.0
    panic_threshold: float = 2.0
    panic_window_seconds: float = 60.0
    stale_after_seconds: float = 10.0
    min_latency_samples: int = 20  # fewer requests than this: the percentile is noise
    tolerance: float = 0.1
    learning_rate: float = 0.5


@dataclasses.dataclass(frozen=True)
class State:
    """What one decision hands the next: the recommendations of the stabilization window,
    the learned capacity correction, and when the current panic ends."""

    recommendations: tuple[tuple[float, int], ...] = ()
    correction: float = 1.0
    panic_until: float | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    desired: int
    direction: Direction
    reason: str  # one sentence for status and the ScaledUp/ScaledDown Event
    state: State
    observed_requests_per_second: float | None
    observed_latency_seconds: float | None  # at the SLO's percentile
    capacity_per_replica: float  # corrected
    panic: bool
    limited: bool  # wants more than max while the SLO is missed
    held: bool  # metrics missing: nothing was measured, the count is kept


def decide(snapshot: Snapshot, policy: Policy, *, current: int, state: State, now: float) -> Decision:
    """The replicas `current` (the Deployment's .spec.replicas) should become, and why."""
    lo, hi = policy.min_replicas, policy.max_replicas
    ready = [p for p in snapshot.pods if p.ready]
    starting = max(0, current - len(ready))
    fresh = [p for p in ready if _fresh(p, policy, now) and p.requests_per_second is not None]
    young = [p for p in ready if p not in fresh and _young(p, policy, now)]
    missing = len(ready) - len(fresh) - len(young)
    base_capacity = policy.capacity_per_replica * state.correction

    if current == 0:
        desired = max(lo, 0)
        reason = ("no replica runs, so there is nothing to measure; holding at minReplicas"
                  if desired == 0 else f"no replica runs; starting minReplicas ({desired})")
        return _finish(desired, current, reason, state, rps=None, latency=None,
                       capacity=base_capacity, panic=False, limited=False, held=True)
    if current > hi:  # maxReplicas was lowered: follow the spec now, measured or not
        return _finish(hi, current, f"scale down {current}->{hi}: maxReplicas is {hi}", state, rps=None,
                       latency=None, capacity=base_capacity, panic=False, limited=False, held=True)
    if not ready or not fresh or missing * 2 > len(ready) - len(young):
        if not ready:
            why = f"no ready pod yet ({starting} starting)"
        elif not fresh:
            why = (f"no rate yet from {len(young)} just-started pod(s)" if young and not missing
                   else f"metrics missing or stale for {missing} of {len(ready)} ready pods")
        else:
            why = f"metrics missing or stale for {missing} of {len(ready)} ready pods"
        desired = min(max(current, lo), hi)
        return _finish(desired, current, f"{why}: holding at {desired}", state, rps=None,
                       latency=None, capacity=base_capacity, panic=False, limited=False, held=True)

    serving = len(ready)
    per_pod = sum((p.requests_per_second or 0.0) + max(0.0, p.backlog_growth) for p in fresh) / len(fresh)
    demand = per_pod * serving
    latency = snapshot.latency_seconds.get(policy.percentile)
    if snapshot.latency_samples < policy.min_latency_samples:
        latency = None  # too few requests for a percentile to mean anything
    queue = _mean([p.queue_seconds for p in fresh if p.queue_seconds is not None])
    inflight = sum(p.inflight or 0.0 for p in fresh) / len(fresh) * serving
    queue_ms = f"; mean queue {1000 * queue:.3g} ms" if queue is not None and queue > policy.slo_seconds / 2 else ""

    served = sum(p.requests_per_second or 0.0 for p in fresh) / len(fresh)
    correction = _learn(state.correction, served, latency, policy)
    capacity = policy.capacity_per_replica * correction
    usable = capacity * policy.target_utilization
    over_slo = latency is not None and latency > policy.slo_seconds

    by_load = math.ceil(demand / usable - 1e-9) if demand > 0 else 0
    by_latency = current + 1 if over_slo and starting == 0 else 0
    wanted = max(by_load, by_latency)

    load_ratio = demand / (capacity * serving)
    latency_ratio = latency / policy.slo_seconds if latency is not None else 0.0
    panic_now = load_ratio >= policy.panic_threshold or latency_ratio >= policy.panic_threshold
    panic_until = now + policy.panic_window_seconds if panic_now else state.panic_until
    in_panic = panic_until is not None and now < panic_until
    if panic_now and starting == 0 and latency_ratio >= policy.panic_threshold:
        wanted = max(wanted, math.ceil(serving * min(latency_ratio, 2.0)))  # at least double

    why = _explain(demand, per_pod, capacity, correction, latency, policy, inflight, starting, panic_now) + queue_ms
    limited = wanted > hi and (over_slo or demand > capacity * hi)
    recommendation = min(max(wanted, lo), hi)
    history = tuple((t, n) for t, n in state.recommendations
                    if t > now - policy.scale_down_stabilization_seconds) + ((now, recommendation),)
    new_state = State(recommendations=history, correction=correction,
                      panic_until=panic_until if in_panic else None)

    if recommendation > current:
        if recommendation <= current * (1 + policy.tolerance) and not (over_slo or panic_now):
            return _finish(current, current, f"within tolerance of {current}: {why}", new_state,
                           rps=demand, latency=latency, capacity=capacity, panic=in_panic, limited=limited)
        verb = "panic: scale up" if panic_now else "scale up"
        return _finish(recommendation, current, f"{verb} {current}->{recommendation}: {why}", new_state,
                       rps=demand, latency=latency, capacity=capacity, panic=in_panic, limited=limited)
    if recommendation == current:
        return _finish(current, current, f"steady at {current}: {why}", new_state,
                       rps=demand, latency=latency, capacity=capacity, panic=in_panic, limited=limited)
    # Scale down: the highest recommendation of the window, never during a panic or an SLO miss.
    if over_slo:
        return _finish(current, current, f"no scale-down while the SLO is missed: {why}", new_state,
                       rps=demand, latency=latency, capacity=capacity, panic=in_panic, limited=limited)
    if in_panic:
        return _finish(current, current, f"holding {current} until the panic window ends: {why}", new_state,
                       rps=demand, latency=latency, capacity=capacity, panic=True, limited=limited)
    stable = max(n for _, n in history)
    if stable >= current:
        return _finish(current, current,
                       f"wants {recommendation}, holding {current} for the {policy.scale_down_stabilization_seconds:g} s "
                       f"scale-down window: {why}", new_state,
                       rps=demand, latency=latency, capacity=capacity, panic=False, limited=limited)
    if current - stable < max(1.0, current * policy.tolerance) and stable > lo:
        return _finish(current, current, f"within tolerance of {current}: {why}", new_state,
                       rps=demand, latency=latency, capacity=capacity, panic=False, limited=limited)
    return _finish(stable, current, f"scale down {current}->{stable} after the "
                   f"{policy.scale_down_stabilization_seconds:g} s window: {why}", new_state,
                   rps=demand, latency=latency, capacity=capacity, panic=False, limited=limited)


def _finish(desired: int, current: int, reason: str, state: State, *,
            rps: float | None, latency: float | None, capacity: float, panic: bool, limited: bool,
            held: bool = False) -> Decision:
    direction: Direction = "up" if desired > current else "down" if desired < current else "hold"
    return Decision(desired=desired, direction=direction, reason=reason, state=state,
                    observed_requests_per_second=rps, observed_latency_seconds=latency,
                    capacity_per_replica=capacity, panic=panic, limited=limited, held=held)


def _fresh(pod: PodSignals, policy: Policy, now: float) -> bool:
    return pod.scraped_at is not None and now - pod.scraped_at <= policy.stale_after_seconds


def _young(pod: PodSignals, policy: Policy, now: float) -> bool:
    """Ready so recently that no rate can exist yet (a rate needs two scrapes)."""
    return pod.ready_since is not None and now - pod.ready_since <= policy.stale_after_seconds


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _learn(correction: float, served: float, latency: float | None, policy: Policy) -> float:
    """Move the capacity correction toward what the pods show; unchanged without evidence.

    `served` is the per-pod rate of answered requests. Down: over the SLO while serving at
    least half the modelled capacity, the pods cannot do more than they do now, so the
    capacity is at most `served` (taken at once: a hard upper bound measured under pressure;
    the half-capacity guard keeps a latency blip at low load from teaching anything). Up:
    latency under `LEARN_UP_BELOW` of the SLO at half the modelled capacity or more means
    headroom the model does not know; the queueing curve is unknown, so it steps up by 25 %
    at a time (averaged), and stops as soon as latency comes near the SLO. Anything else
    says nothing about capacity."""
    if latency is None or served <= 0:
        return correction
    capacity = policy.capacity_per_replica * correction
    if served < 0.5 * capacity:
        return correction
    if latency > policy.slo_seconds:
        learned = min(correction, served / policy.capacity_per_replica)
    elif latency < LEARN_UP_BELOW * policy.slo_seconds:
        sample = correction * max(1.25, served / capacity)
        a = policy.learning_rate
        learned = math.exp((1 - a) * math.log(correction) + a * math.log(sample))
    else:
        return correction
    return min(CORRECTION_MAX, max(CORRECTION_MIN, learned))


def _explain(demand: float, per_pod: float, capacity: float, correction: float, latency: float | None,
             policy: Policy, inflight: float, starting: int, panic: bool) -> str:
    parts = [f"{demand:.3g} req/s ({per_pod:.3g} per ready pod) against {capacity:.3g} req/s per replica"
             + (f" (x{correction:.2f} learned)" if abs(correction - 1) > 0.005 else "")
             + f" at {policy.target_utilization:.0%} target"]
    if latency is not None:
        relation = ">" if latency > policy.slo_seconds else "<="
        parts.append(f"{policy.percentile} {1000 * latency:.3g} ms {relation} SLO {1000 * policy.slo_seconds:.3g} ms")
    else:
        parts.append(f"{policy.percentile} unknown (too few requests)")
    if inflight >= 1:
        parts.append(f"{inflight:.3g} in flight")
    if starting:
        parts.append(f"{starting} starting")
    if panic:
        parts.append(f"load or latency >= {policy.panic_threshold:g}x")
    return "; ".join(parts)
