"""Replay one load trace (steps and ramps) through simulated replicas under three autoscaling
policies and compare time above the SLO and replica-seconds.

    .venv/bin/python benchmarks/autoscale_trace.py [--json docs/benchmarks/autoscale-trace.json]

Policies, all on the same trace, the same replicas and the same start-up delay:

- builtin: modelship's own decision function (operator/modelship/autoscale/decision.py, the
  code the operator runs), every 2 s, on 6 s rate windows, with the capacity the optimize Job
  would measure (also run with that capacity wrong by 2x either way);
- cpu-hpa: a HorizontalPodAutoscaler on CPU utilization: 15 s sync, CPU averaged over 30 s
  (metrics-server), target 60 % (CPU ~ load), 10 % tolerance, scale-up at most double or +4
  pods per 15 s, 5 min scale-down stabilization, not-ready pods left out of the average;
- keda-30s: KEDA's prometheus trigger at its default 30 s polling interval, rate() over 1 m,
  target capacity x 0.8 per replica (the same target as builtin), the HPA it drives keeping
  its default 5 min scale-down stabilization.

The replicas: each serves like an M/M/1 queue whose service rate is set so that its p95
equals the SLO exactly at the measured capacity (p95 = ln 20 / (mu - lambda) below
saturation); above it a backlog builds and drains at the service rate. Demand is spread
evenly over ready replicas; a new replica is ready `--startup` seconds after it is asked for.
Seeded noise (+-5 % per second) on the demand. Time above SLO: seconds whose p95 exceeds
the SLO. Replica-seconds: replicas asked for (starting ones included) integrated over time.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import random
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from modelship.autoscale.decision import PodSignals, Policy, Snapshot, State, decide  # noqa: E402

SLO = 0.050  # seconds, p95
CAPACITY = 100.0  # requests/s one replica serves at p95 = SLO (what the optimize Job measures)
MU = CAPACITY + math.log(20) / SLO  # the service rate that gives exactly that
MIN_REPLICAS, MAX_REPLICAS = 1, 20

# (seconds, requests/s at the start, requests/s at the end): steps are segments with equal ends.
TRACE = [
    (300, 120, 120),    # quiet
    (300, 450, 450),    # step up x3.75
    (240, 450, 200),    # ramp down
    (180, 200, 200),
    (180, 200, 900),    # ramp up to a peak
    (240, 900, 900),
    (60, 900, 300),     # fast drop
    (240, 300, 300),
    (120, 800, 800),    # a two-minute burst
    (300, 150, 150),    # quiet again
    (120, 150, 650),    # ramp
    (300, 650, 650),
    (300, 100, 100),
]


def demand(seed: int) -> list[float]:
    rng = random.Random(seed)
    out = []
    for seconds, start, end in TRACE:
        for i in range(seconds):
            base = start + (end - start) * i / seconds
            out.append(base * (1 + rng.uniform(-0.05, 0.05)))
    return out


@dataclasses.dataclass
class Second:
    """What happened in one simulated second."""

    demand: float
    served: float
    backlog: float
    ready: int
    replicas: int
    p95: float
    cpu: float  # mean utilization of ready replicas, 0..1


class Cluster:
    """Replicas with a start-up delay, a shared backlog, and an M/M/1 latency per replica."""

    def __init__(self, startup: float, replicas: int = 2) -> None:
        self.startup = startup
        self.ready_at: list[float] = [-1e9] * replicas
        self.backlog = 0.0

    @property
    def replicas(self) -> int:
        return len(self.ready_at)

    def ready(self, t: float) -> int:
        return sum(1 for r in self.ready_at if r <= t)

    def scale(self, t: float, n: int) -> None:
        n = max(MIN_REPLICAS, min(MAX_REPLICAS, n))
        if n > self.replicas:
            self.ready_at += [t + self.startup] * (n - self.replicas)
        elif n < self.replicas:  # the newest (likely still starting) go first
            self.ready_at = sorted(self.ready_at)[:n]

    def step(self, t: float, lam: float) -> Second:
        ready = self.ready(t)
        capacity = ready * MU
        work = lam + self.backlog
        served = min(work, capacity)
        self.backlog = max(0.0, work - served)
        if ready == 0:
            return Second(lam, 0.0, self.backlog, 0, self.replicas, 10.0, 1.0)
        rho = min(lam / capacity, 0.99)
        p95 = self.backlog / capacity + math.log(20) / (MU * (1 - rho))
        return Second(lam, served, self.backlog, ready, self.replicas, p95, min(1.0, served / capacity))


# --- policies: each sees the history of seconds and returns the replicas it wants, or None ---------


def builtin(capacity: float, interval: int = 2, window: int = 6) -> tuple[int, Callable[[float, list[Second], int], int | None]]:
    policy = Policy(slo_seconds=SLO, percentile="p95", capacity_per_replica=capacity,
                    min_replicas=MIN_REPLICAS, max_replicas=MAX_REPLICAS)
    state = {"state": None}

    def decide_now(t: float, history: list[Second], current: int) -> int | None:
        if state["state"] is None:
            state["state"] = State(recommendations=((t, current),))
        recent = history[-window:]
        last = recent[-1]
        if last.ready == 0:
            pods: tuple[PodSignals, ...] = ()
        else:
            served = sum(s.served for s in recent) / len(recent)
            growth = (recent[-1].backlog - recent[0].backlog) / max(1, len(recent) - 1)
            per_pod = served / last.ready
            pods = tuple(PodSignals(name=f"p{i}", ready=True, ready_since=t - 600, scraped_at=t,
                                    requests_per_second=per_pod, backlog_growth=growth / last.ready,
                                    inflight=last.backlog / last.ready, queue_seconds=last.backlog / (last.ready * MU),
                                    samples=int(per_pod * window)) for i in range(last.ready))
        starting = [PodSignals(name=f"s{i}", ready=False) for i in range(current - last.ready)]
        p95 = sum(s.p95 for s in recent) / len(recent)
        snap = Snapshot(pods=pods + tuple(starting), latency_seconds={"p95": p95},
                        latency_samples=int(sum(s.served for s in recent)))
        d = decide(snap, policy, current=current, state=state["state"], now=t)
        state["state"] = d.state
        return d.desired

    return interval, decide_now


def hpa_behavior(recommendations: collections.deque[tuple[float, int]], t: float, want: int, current: int,
                 down_window: int) -> int:
    """The HPA controller's default behaviour, which KEDA's HPA shares: scale up at most to
    max(2x, +4) per step; scale down only to the highest recommendation of the last window."""
    recommendations.append((t, want))
    while recommendations and recommendations[0][0] < t - down_window:
        recommendations.popleft()
    if want > current:
        return min(want, max(2 * current, current + 4))
    return min(current, max(n for _, n in recommendations))


def cpu_hpa(target: float = 0.6, sync: int = 15, cpu_window: int = 30, down_window: int = 300) -> tuple[int, Callable]:
    recommendations: collections.deque[tuple[float, int]] = collections.deque()

    def decide_now(t: float, history: list[Second], current: int) -> int | None:
        recent = history[-cpu_window:]
        ready = recent[-1].ready
        if ready == 0:
            return None
        util = sum(s.cpu for s in recent) / len(recent)
        ratio = util / target
        if abs(ratio - 1) <= 0.1:
            want = current
        else:
            want = math.ceil(ready * ratio)
        want = max(MIN_REPLICAS, min(MAX_REPLICAS, want))
        return hpa_behavior(recommendations, t, want, current, down_window)

    return sync, decide_now


def keda(threshold: float, polling: int = 30, rate_window: int = 60, down_window: int = 300) -> tuple[int, Callable]:
    recommendations: collections.deque[tuple[float, int]] = collections.deque()

    def decide_now(t: float, history: list[Second], current: int) -> int | None:
        recent = history[-rate_window:]
        rate = sum(s.served for s in recent) / len(recent)  # rate() of answered requests
        want = max(MIN_REPLICAS, min(MAX_REPLICAS, math.ceil(rate / threshold)))
        return hpa_behavior(recommendations, t, want, current, down_window)

    return polling, decide_now


def simulate(policy: tuple[int, Callable], trace: list[float], startup: float) -> dict[str, float]:
    every, decide_now = policy
    cluster = Cluster(startup)
    history: list[Second] = []
    above = replica_seconds = 0.0
    scale_events = 0
    for t, lam in enumerate(trace):
        second = cluster.step(float(t), lam)
        history.append(second)
        above += second.p95 > SLO
        replica_seconds += second.replicas
        if t % every == every - 1:
            want = decide_now(float(t), history, cluster.replicas)
            if want is not None and want != cluster.replicas:
                cluster.scale(float(t), want)
                scale_events += 1
    return {"seconds_above_slo": above, "replica_seconds": replica_seconds, "scale_events": scale_events,
            "duration_seconds": len(trace)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--startup", type=float, default=20.0, help="seconds from a scale-up to a ready replica")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    trace = demand(args.seed)
    runs = {
        "builtin": builtin(CAPACITY),
        "builtin (capacity 2x too high)": builtin(2 * CAPACITY),
        "builtin (capacity 2x too low)": builtin(CAPACITY / 2),
        "cpu-hpa": cpu_hpa(),
        "keda-30s": keda(CAPACITY * 0.8),
    }
    results = {name: simulate(policy, trace, args.startup) for name, policy in runs.items()}
    cpu = results["cpu-hpa"]
    print(f"trace: {len(trace)} s, SLO p95 {SLO * 1000:g} ms, capacity {CAPACITY:g} req/s per replica, "
          f"start-up {args.startup:g} s, seed {args.seed}")
    print(f"{'policy':32} {'s above SLO':>12} {'replica-s':>10} {'scalings':>9} {'above/cpu':>10} {'replica-s/cpu':>14}")
    for name, r in results.items():
        r["above_slo_vs_cpu"] = r["seconds_above_slo"] / cpu["seconds_above_slo"] if cpu["seconds_above_slo"] else math.nan
        r["replica_seconds_vs_cpu"] = r["replica_seconds"] / cpu["replica_seconds"]
        print(f"{name:32} {r['seconds_above_slo']:12.0f} {r['replica_seconds']:10.0f} {r['scale_events']:9d} "
              f"{r['above_slo_vs_cpu']:10.2f} {r['replica_seconds_vs_cpu']:14.2f}")
    b = results["builtin"]
    ok = b["above_slo_vs_cpu"] <= 0.5 and b["replica_seconds_vs_cpu"] <= 1.2
    print(f"target (builtin <= 0.5x the CPU policy's time above SLO at <= 1.2x its replica-seconds): "
          f"{'met' if ok else 'NOT met'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"seed": args.seed, "startup_seconds": args.startup, "slo_seconds": SLO,
                                         "capacity": CAPACITY, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
