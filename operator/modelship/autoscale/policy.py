"""From a ModelService to the decision's Policy: the SLO, the bounds and the knobs. The
capacity per replica comes from `render/capacity.py`, the rule the HPA/KEDA render uses too.
"""

from __future__ import annotations

from modelship.api.v1alpha1 import ModelService
from modelship.autoscale.decision import Policy
from modelship.render.capacity import Capacity


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
