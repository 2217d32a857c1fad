"""From a ModelService to the decision's Policy: the SLO, the bounds, the knobs, and the
capacity per replica with where it came from.

Capacity, in order: spec.autoscaling.capacityPerReplica (a person said so: it overrides),
status.optimization.capacity.requestsPerSecond (the optimize Job measured it on this model
and hardware, contract C4), else `DEFAULT_CAPACITY`. The default is deliberately low: a
service with no measured capacity gets more replicas than it needs rather than missed SLOs,
and the online correction raises it once pods show headroom. status.autoscaling.capacitySource
says which one is in use.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from modelship.api.v1alpha1 import ModelService
from modelship.autoscale.decision import Policy

DEFAULT_CAPACITY = 10.0  # requests/s per replica when nothing better is known
SPEC, OPTIMIZATION, DEFAULT = "spec", "optimization", "default"


@dataclasses.dataclass(frozen=True)
class Capacity:
    requests_per_second: float
    source: str  # SPEC | OPTIMIZATION | DEFAULT


def capacity_of(msvc: ModelService, status: Mapping[str, Any] | None) -> Capacity:
    """The capacity per replica the autoscaler plans with, and its source."""
    override = msvc.spec.autoscaling.capacity_per_replica
    if override is not None:
        return Capacity(override, SPEC)
    measured = (((status or {}).get("optimization") or {}).get("capacity") or {}).get("requestsPerSecond")
    if isinstance(measured, (int, float)) and not isinstance(measured, bool) and measured > 0:
        return Capacity(float(measured), OPTIMIZATION)
    return Capacity(DEFAULT_CAPACITY, DEFAULT)


def policy_of(msvc: ModelService, capacity: Capacity, *, interval_seconds: float | None = None) -> Policy:
    """The decision's Policy for this spec. The SLO is required for the builtin engine (the
    API refuses the spec without it); `interval_seconds` overrides the spec's (operator flag)."""
    spec = msvc.spec
    autoscaling = spec.autoscaling
    if spec.slo is None:
        raise ValueError("spec.slo.latencyMilliseconds is required by the builtin autoscaler")
    interval = interval_seconds if interval_seconds is not None else autoscaling.interval_seconds
    return Policy(
        slo_seconds=spec.slo.latency_milliseconds / 1000.0,
        percentile=spec.slo.percentile,
        capacity_per_replica=capacity.requests_per_second,
        min_replicas=autoscaling.min_replicas,
        max_replicas=autoscaling.max_replicas,
        target_utilization=autoscaling.target_utilization,
        scale_down_stabilization_seconds=float(autoscaling.scale_down_stabilization_seconds),
        panic_threshold=autoscaling.panic_threshold,
        panic_window_seconds=max(float(autoscaling.scale_down_stabilization_seconds), 6 * interval),
        # Three missed scrapes in a row make a pod's numbers stale (one may be a blip).
        stale_after_seconds=max(3.0 * interval, 5.0),
    )
