"""Table tests of the builtin autoscaler's decision (operator/modelship/autoscale/decision.py).

Every row: a snapshot, the current replicas and carried state, and the answer it must give,
with a comment on why that answer is right. Numbers are chosen so a wrong rule gives a
different count: capacity 100 req/s per replica at a 50 ms p95 SLO, target utilization 0.8
(so one replica is planned for 80 req/s), min 1, max 10, a 60 s scale-down window.
"""

from __future__ import annotations

import dataclasses

import pytest

from modelship.autoscale.decision import Decision, PodSignals, Policy, Snapshot, State, decide

NOW = 1000.0
POLICY = Policy(slo_seconds=0.050, percentile="p95", capacity_per_replica=100.0, min_replicas=1, max_replicas=10)


def pods(n: int, rps: float, *, backlog: float = 0.0, inflight: float = 1.0, queue: float = 0.001, ready: bool = True,
         scraped_at: float | None | str = "fresh", prefix: str = "p", at: float = NOW) -> list[PodSignals]:
    """`n` ready pods serving `rps` each, scraped a second before `at` unless told otherwise."""
    scraped = at - 1 if scraped_at == "fresh" else scraped_at
    return [PodSignals(name=f"{prefix}{i}", ready=ready, ready_since=at - 600, scraped_at=scraped,
                       requests_per_second=rps, backlog_growth=backlog, inflight=inflight, queue_seconds=queue, samples=int(rps * 6))
            for i in range(n)]


def snap(pod_list: list[PodSignals], p95_ms: float | None = 25.0, samples: int = 1000) -> Snapshot:
    latency = {} if p95_ms is None else {"p95": p95_ms / 1000, "p99": 1.5 * p95_ms / 1000}
    return Snapshot(pods=tuple(pod_list), latency_seconds=latency, latency_samples=samples)


def run(snapshot: Snapshot, current: int, state: State = State(), policy: Policy = POLICY,
        now: float = NOW) -> Decision:
    return decide(snapshot, policy, current=current, state=state, now=now)


def history(*pairs: tuple[float, int]) -> State:
    return State(recommendations=tuple(pairs))


def test_steady_at_target() -> None:
    d = run(snap(pods(3, 70)), 3)
    # 210 req/s over 80 req/s planned per replica = 2.625 -> 3: exactly what runs.
    assert (d.desired, d.direction, d.held) == (3, "hold", False)
    assert d.observed_requests_per_second == pytest.approx(210)


def test_load_grows_scales_up_immediately() -> None:
    d = run(snap(pods(2, 150)), 2)
    # 300 req/s / 80 = 3.75 -> 4, latency fine: the load path alone, no waiting.
    assert (d.desired, d.direction, d.panic) == (4, "up", False)
    assert "scale up 2->4" in d.reason


def test_idle_at_min() -> None:
    d = run(snap(pods(1, 0, inflight=0), p95_ms=None, samples=0), 1)
    # 0 req/s wants 0, min is 1; no latency is needed to know that.
    assert (d.desired, d.direction) == (1, "hold")


def test_step_to_2x_capacity_panics_and_scales_past_the_load_estimate() -> None:
    # One replica, load steps to 240 req/s (2.4x its capacity): the queue grows, p95 is 8x
    # the SLO. Completed requests understate demand under overload; in-flight (40, where one
    # replica at the SLO holds 100 x 0.8 x 0.05 = 4) and the doubling rule do not.
    d = run(snap(pods(1, 240, inflight=40, queue=0.2), p95_ms=400), 1)
    assert d.panic and d.direction == "up"
    assert d.desired >= 3  # load alone: ceil(240 / 80) = 3
    assert "panic" in d.reason
    assert d.state.panic_until == NOW + POLICY.panic_window_seconds


def test_scale_down_held_within_window() -> None:
    # Load fell to 80 req/s (wants 1), but 30 s ago 4 were wanted: the 60 s window holds 4,
    # so a brief dip does not make the count flap.
    d = run(snap(pods(4, 20)), 4, history((NOW - 30, 4)))
    assert (d.desired, d.direction) == (4, "hold")
    assert "scale-down window" in d.reason


def test_scale_down_after_window_goes_to_window_max() -> None:
    # The 4 is older than the window and drops out; the highest left is 2 (40 s ago), so the
    # count falls to 2 now, and to 1 only once the 2 has aged out too.
    d = run(snap(pods(4, 20)), 4, history((NOW - 70, 4), (NOW - 40, 2), (NOW - 10, 1)))
    assert (d.desired, d.direction) == (2, "down")
    later = run(snap(pods(2, 40, at=NOW + 41)), 2, d.state, now=NOW + 41)
    assert (later.desired, later.direction) == (1, "down")


def test_no_scale_down_during_panic() -> None:
    # A panic began 40 s ago and ends in 20 s: no scale-down yet, however quiet it is now.
    d = run(snap(pods(4, 20)), 4, State(panic_until=NOW + 20))
    assert (d.desired, d.direction, d.panic) == (4, "hold", True)
    after = run(snap(pods(4, 20, at=NOW + 61)), 4, State(panic_until=NOW + 20), now=NOW + 61)
    assert after.direction == "down"  # the window has no entry above 1 by then


def test_all_metrics_missing_holds_instead_of_scaling_to_min() -> None:
    # Every scrape failed (a network blip, a Prometheus outage): nothing is known. Reading it
    # as zero load would take 3 replicas down to 1 in the middle of whatever is happening.
    d = run(snap(pods(3, 0, scraped_at=None), p95_ms=None, samples=0), 3, history((NOW - 5, 3)))
    assert (d.desired, d.direction, d.held) == (3, "hold", True)
    assert "missing" in d.reason
    assert d.state == history((NOW - 5, 3))  # a held decision records no recommendation


def test_stale_metrics_hold() -> None:
    # The newest scrape is a minute old (stale after 10 s): as good as missing.
    d = run(snap(pods(3, 0, scraped_at=NOW - 60)), 3)
    assert (d.desired, d.held) == (3, True)


def test_most_pods_missing_holds() -> None:
    # 2 of 3 ready pods have no metrics: one pod's view is not the service's. Hold.
    d = run(snap(pods(1, 5) + pods(2, 0, scraped_at=None, prefix="gone")), 3)
    assert (d.desired, d.held) == (3, True)


def test_one_pod_missing_extrapolates_from_the_others() -> None:
    # 1 of 4 missing: the Service balances evenly, so demand is 70 x 4 = 280 req/s -> 4.
    # Summing only the fresh pods (210 -> 3) would read the gap as a 25 % load drop.
    d = run(snap(pods(3, 70) + pods(1, 0, scraped_at=None, prefix="gone")), 4)
    assert d.observed_requests_per_second == pytest.approx(280)
    assert (d.desired, d.held) == (4, False)


def test_noisy_latency_from_few_requests_is_ignored() -> None:
    # A 900 ms p95 out of 5 requests is one slow request, not a trend (min 20 samples): the
    # load says 3, and 3 it stays; no panic, no learned correction.
    d = run(snap(pods(3, 70), p95_ms=900, samples=5), 3)
    assert (d.desired, d.panic, d.observed_latency_seconds) == (3, False, None)
    assert d.state.correction == 1.0


def test_noisy_rate_does_not_flap() -> None:
    # Demand wobbles +-20 % around 2.5 replicas' worth: it scales up on the first peak (fast
    # up is the point), then holds for the whole window through the troughs.
    state, current, counts = State(), 3, []
    for i, rps in enumerate([55, 80, 50, 75, 60, 78, 52, 70] * 3):
        d = run(snap(pods(current, rps * 3 / current, at=NOW + 2 * i)), current, state, now=NOW + 2 * i)
        state, current = d.state, d.desired
        counts.append(current)
    assert max(counts) == 3 and counts[-1] == 3, counts
    assert len({c for c in counts}) == 1, counts  # never moved: every rate fits 3 replicas


def test_just_ready_pod_is_young_not_missing() -> None:
    # The third pod turned ready 2 s ago and has one scrape, so no rate yet. It is young, not
    # missing: no hold. The Service already sends it a share, so demand = mean x 3 ready pods.
    young = PodSignals("new", ready=True, ready_since=NOW - 2, scraped_at=NOW - 1)
    d = run(snap(pods(2, 100) + [young]), 3)
    assert d.held is False
    assert d.observed_requests_per_second == pytest.approx(300)
    assert d.desired == 4  # 300 / 80 = 3.75


def test_ready_long_ago_without_a_rate_is_missing() -> None:
    # Same as above, but ready for 10 minutes: no rate means its scrapes fail. Counted missing
    # (1 of 3, so the decision still goes ahead on the other two).
    old = PodSignals("old", ready=True, ready_since=NOW - 600, scraped_at=None)
    d = run(snap(pods(2, 100) + [old]), 3)
    assert d.held is False and d.observed_requests_per_second == pytest.approx(300)


def test_starting_pods_prevent_piling_on() -> None:
    # Over the SLO, but 2 of 3 replicas are still starting: the latency rule adds none (help
    # is on the way); load 150 wants 2 <= 3, and the count holds instead of climbing each tick.
    d = run(snap(pods(1, 150, inflight=3, queue=0.01), p95_ms=80), 3)
    assert (d.desired, d.direction) == (3, "hold")
    assert "2 starting" in d.reason


def test_over_slo_with_no_pod_starting_adds_one() -> None:
    # The same latency with every replica ready: the load model says 2 are enough, but the SLO
    # is missed, so one more is added (and the correction learns capacity down).
    d = run(snap(pods(2, 60, inflight=3, queue=0.01), p95_ms=80), 2)
    assert (d.desired, d.direction) == (3, "up")
    assert d.state.correction < 1.0


def test_no_ready_pod_yet_holds() -> None:
    # Two replicas requested, none ready (a rollout): nothing to measure, hold.
    d = run(snap([]), 2)
    assert (d.desired, d.held) == (2, True)


def test_at_max_with_slo_missed_is_limited() -> None:
    # At max 10 with p95 at 6x the SLO: stays at 10 and says it is limited.
    d = run(snap(pods(10, 150, inflight=20, queue=0.2), p95_ms=300), 10)
    assert (d.desired, d.limited) == (10, True)


def test_lowered_max_applies_at_once() -> None:
    # maxReplicas went from 10 to 3 while 5 run: the spec is the bound, no window to wait out,
    # and it does not need metrics (here: none) to know that.
    d = run(snap(pods(5, 0, scraped_at=None), p95_ms=None, samples=0), 5, policy=dataclasses.replace(POLICY, max_replicas=3))
    assert (d.desired, d.direction) == (3, "down")


def test_within_limits_is_not_limited() -> None:
    d = run(snap(pods(3, 70)), 3)
    assert d.limited is False


def test_scaled_to_zero_stays_at_min() -> None:
    # min 0 and no replica: nothing to measure, nothing wakes it (documented limitation).
    policy = dataclasses.replace(POLICY, min_replicas=0)
    d = run(snap([]), 0, policy=policy)
    assert (d.desired, d.held) == (0, True)


# --- the capacity model is wrong by 2x --------------------------------------------------------


def converge(true_capacity: float, model_capacity: float, demand: float, current: int,
             ticks: int = 30) -> tuple[int, State, list[int]]:
    """Run the decision against replicas whose p95 follows a queueing curve around their
    true capacity (M/M/1-like: latency = 10 ms / (1 - utilization), capped at 1 s)."""
    policy = dataclasses.replace(POLICY, capacity_per_replica=model_capacity)
    state, counts = State(), []
    for i in range(ticks):
        per_pod = demand / current
        served = min(per_pod, true_capacity)
        utilization = per_pod / true_capacity
        p95 = 1000.0 if utilization >= 0.99 else min(1000.0, 10.0 / (1 - utilization))
        inflight = served * p95 / 1000
        d = run(snap(pods(current, served, backlog=per_pod - served, inflight=inflight, queue=p95 / 2000, at=NOW + 2 * i), p95_ms=p95),
                current, state,
                policy=policy, now=NOW + 2 * i)
        state, current = d.state, d.desired
        counts.append(current)
    return current, state, counts


def test_capacity_model_2x_too_high_learns_down_at_once_and_meets_the_slo() -> None:
    # The report says 200 req/s per replica; the pods really do 100. At 300 req/s the model
    # alone plans ceil(300 / 160) = 2 replicas, which saturate: each answers 100 req/s, the
    # rest piles up, p95 hits 1 s. The first decision learns the capacity is at most the
    # 100 req/s the pods answer (correction 0.5) and, in panic, goes to 4. 4 is right:
    # p95 = 10 ms / (1 - 75/100) = 40 ms <= 50 ms, and 3 would run at 100 % (no SLO).
    final, state, counts = converge(true_capacity=100, model_capacity=200, demand=300, current=2, ticks=60)
    assert counts[0] == 4, counts
    assert set(counts) == {4}, counts  # and no oscillation after the panic window ends
    assert state.correction == pytest.approx(0.5)


def test_capacity_model_2x_too_low_learns_up_and_gives_back_the_extra_replica() -> None:
    # The report says 50 req/s; the pods really do 100. At 120 req/s the model plans
    # ceil(120 / 40) = 3 replicas, which run at 40 % of their true capacity with p95 = 17 ms,
    # a third of the SLO: headroom the model does not know. The correction steps up, the plan
    # falls to 2, and after the 60 s window the count follows; at 2 replicas p95 is
    # 10 / (1 - 0.6) = 25 ms, still within the SLO, so it stays there.
    final, state, counts = converge(true_capacity=100, model_capacity=50, demand=120, current=2, ticks=60)
    assert counts[0] == 3, counts  # first the model is trusted
    assert final == 2, counts
    assert state.correction > 1.5, state
    assert counts.index(2) >= 30, counts  # not before the scale-down window has passed


def test_correction_is_bounded() -> None:
    # A wildly wrong model cannot push the correction past 4x either way.
    _, state, _ = converge(true_capacity=100, model_capacity=5000, demand=300, current=1, ticks=60)
    assert state.correction >= 0.25
