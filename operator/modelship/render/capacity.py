"""Requests/s one replica serves within the SLO, and where that figure came from: the one rule
the builtin autoscaler (`autoscale/policy.py`) and the HPA/KEDA targets (`render/autoscaler.py`)
both plan with.

In order: spec.autoscaling.capacityPerReplica (a person said so: it overrides), the optimize
Job's measurement in status.optimization.capacity.requestsPerSecond (on this model and
hardware, contract C4), else `DEFAULT_CAPACITY`. The default is deliberately low: a service with
no measured capacity gets more replicas than it needs rather than missed SLOs, and the builtin
engine's online correction raises it once pods show headroom. status.autoscaling.capacitySource
says which one is in use.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from modelship.api.v1alpha1 import ModelService

DEFAULT_CAPACITY = 10.0  # requests/s per replica when nothing better is known
SPEC, OPTIMIZATION, DEFAULT = "spec", "optimization", "default"


@dataclasses.dataclass(frozen=True)
class Capacity:
    requests_per_second: float
    source: str  # SPEC | OPTIMIZATION | DEFAULT


def measured_capacity(optimization_status: Mapping[str, Any] | None) -> float | None:
    """requests/s per replica from status.optimization (C4), or None when it holds no usable figure."""
    value = ((optimization_status or {}).get("capacity") or {}).get("requestsPerSecond")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def resolve(msvc: ModelService, measured: float | None) -> Capacity:
    """The capacity per replica to plan with, given the optimize Job's `measured` figure."""
    override = msvc.spec.autoscaling.capacity_per_replica
    if override is not None:
        return Capacity(override, SPEC)
    if measured is not None and measured > 0:
        return Capacity(measured, OPTIMIZATION)
    return Capacity(DEFAULT_CAPACITY, DEFAULT)


def capacity_of(msvc: ModelService, status: Mapping[str, Any] | None) -> Capacity:
    """`resolve` with the measurement read from a ModelService's status."""
    return resolve(msvc, measured_capacity((status or {}).get("optimization")))
