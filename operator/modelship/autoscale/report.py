"""What the autoscaler tells the user: status.autoscaling, status.latency and the
ScalingLimited condition (contract C4), from its latest decision.

The reconciler writes these (through its `extra_status` seam), so there is one status
writer and the two never fight. Observed numbers move every few seconds under load; writing
each wobble would make a write every tick. `settle` keeps the published view until something
a reader would care about changes: the replica counts, the limit, the capacity source, or a
number moving by more than `RELATIVE_CHANGE`. In steady state, no writes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping

from modelship.api.v1alpha1 import ModelService
from modelship.render import names
from modelship.render.autoscaler import target_per_pod
from modelship.status import conditions as c

SCALING_LIMITED = "ScalingLimited"
SLO_MISSED_AT_MAX = "SLOMissedAtMaxReplicas"
WITHIN_LIMITS = "WithinLimits"
NOT_MEASURED = "NotMeasured"
AUTOSCALER_READY = "AutoscalerReady"
KEDA_NOT_INSTALLED = "KEDANotInstalled"
AUTOSCALING_DISABLED = "AutoscalingDisabled"
RELATIVE_CHANGE = 0.10


@dataclasses.dataclass(frozen=True)
class View:
    engine: str
    capacity_per_replica: float
    capacity_source: str
    reason: str
    desired: int | None = None
    current: int | None = None
    requests_per_second: float | None = None
    latency_seconds: float | None = None
    percentile: str | None = None
    slo_milliseconds: int | None = None
    max_replicas: int | None = None
    limited: bool | None = None  # None: not measured yet
    last_scale_time: str | None = None


def settle(old: View | None, new: View) -> View:
    """`new` when it differs from `old` in a way worth a status write, else `old`."""
    if old is None:
        return new
    exact = ("engine", "capacity_source", "desired", "current", "limited", "last_scale_time", "percentile",
             "slo_milliseconds", "max_replicas")
    if any(getattr(old, f) != getattr(new, f) for f in exact):
        return new
    if _moved(old.requests_per_second, new.requests_per_second) or _moved(old.capacity_per_replica,
                                                                          new.capacity_per_replica):
        return new
    if _moved(old.latency_seconds, new.latency_seconds):
        return new
    slo = (new.slo_milliseconds or 0) / 1000
    if slo and old.latency_seconds is not None and new.latency_seconds is not None and \
            (old.latency_seconds > slo) != (new.latency_seconds > slo):
        return new
    return old


def _moved(old: float | None, new: float | None) -> bool:
    if (old is None) != (new is None):
        return True
    if old is None or new is None:
        return False
    if old == 0 or new == 0:
        return (old == 0) != (new == 0) and max(abs(old), abs(new)) >= 0.5
    return abs(new - old) / abs(old) > RELATIVE_CHANGE


def _round(value: float | None) -> float | None:
    """Three significant digits: what a reader can use, and stable under tiny changes."""
    if value is None or value == 0 or not math.isfinite(value):
        return value
    return round(value, 2 - int(math.floor(math.log10(abs(value)))))


def status_fields(view: View | None) -> dict[str, Any]:
    """status.autoscaling and status.latency (None removes them)."""
    if view is None:
        return {"autoscaling": None, "latency": None}
    autoscaling = {
        "engine": view.engine,
        "desiredReplicas": view.desired,
        "currentReplicas": view.current,
        "observedRequestsPerSecond": _round(view.requests_per_second),
        "capacityPerReplica": _round(view.capacity_per_replica),
        "capacitySource": view.capacity_source,
        "reason": view.reason[:1024],
        "lastScaleTime": view.last_scale_time,
    }
    latency = None
    if view.percentile is not None:
        latency = {
            "percentile": view.percentile,
            "observedMilliseconds": _round(1000 * view.latency_seconds) if view.latency_seconds is not None else None,
            "targetMilliseconds": view.slo_milliseconds,
        }
        latency = {k: v for k, v in latency.items() if v is not None}
    return {"autoscaling": {k: v for k, v in autoscaling.items() if v is not None}, "latency": latency}


def limited_condition(view: View | None) -> list[c.ConditionSpec]:
    """ScalingLimited: True when the SLO is missed at maxReplicas. Messages carry no
    observed numbers, so they do not change with every wobble (those are in status.latency)."""
    if view is None:
        return []
    if view.limited is None:
        return [c.ConditionSpec(SCALING_LIMITED, c.UNKNOWN, NOT_MEASURED,
                                "no decision from measured load yet")]
    if view.limited:
        return [c.ConditionSpec(
            SCALING_LIMITED, c.TRUE, SLO_MISSED_AT_MAX,
            f"the {view.percentile} latency SLO of {view.slo_milliseconds} ms is missed at maxReplicas "
            f"({view.max_replicas}); raise spec.autoscaling.maxReplicas or make each replica faster",
            warning=True)]
    return [c.ConditionSpec(SCALING_LIMITED, c.FALSE, WITHIN_LIMITS,
                            f"the load fits within maxReplicas ({view.max_replicas})")]


def autoscaler_ready(msvc: ModelService, unavailable: frozenset[str]) -> list[c.ConditionSpec]:
    """AutoscalerReady: can the chosen engine act at all? False when KEDA is chosen but its
    CRD is not installed (the ScaledObject's apply answered 404)."""
    engine = msvc.spec.autoscaling.engine
    name = names.deployment(msvc.metadata.name)
    if engine == "keda" and "ScaledObject" in unavailable:
        return [c.ConditionSpec(
            AUTOSCALER_READY, c.FALSE, KEDA_NOT_INSTALLED,
            "engine keda needs KEDA, but the CRD scaledobjects.keda.sh is not installed in this cluster: "
            "install KEDA (its ScaledObject is applied on the next resync) or choose engine builtin or hpa",
            warning=True)]
    what = {"builtin": "the builtin latency loop scales the Deployment",
            "hpa": f"HorizontalPodAutoscaler {name} scales the Deployment",
            "keda": f"KEDA ScaledObject {name} scales the Deployment"}[engine]
    reason = {"builtin": "BuiltinEngine", "hpa": "HPAEngine", "keda": "KEDAEngine"}[engine]
    return [c.ConditionSpec(AUTOSCALER_READY, c.TRUE, reason, what)]


def disabled_conditions(previous: Iterable[Mapping[str, Any]] | None) -> list[c.ConditionSpec]:
    """With autoscaling off, conditions it set before turn False instead of lingering."""
    out = []
    for type_ in (SCALING_LIMITED, AUTOSCALER_READY):
        if c.find(previous, type_) is not None:
            out.append(c.ConditionSpec(type_, c.FALSE, AUTOSCALING_DISABLED, "spec.autoscaling.enabled is false"))
    return out


def static_view(msvc: ModelService, capacity: Any) -> View:
    """What status says for engines hpa and keda: their target, which does not move."""
    engine = msvc.spec.autoscaling.engine
    target = target_per_pod(msvc, capacity.requests_per_second if capacity.source == "optimization" else None)
    what = "HorizontalPodAutoscaler" if engine == "hpa" else "KEDA ScaledObject"
    return View(engine=engine, capacity_per_replica=capacity.requests_per_second, capacity_source=capacity.source,
                reason=f"{what} {names.deployment(msvc.metadata.name)} targets {target:.3g} requests/s per pod",
                slo_milliseconds=msvc.spec.slo.latency_milliseconds if msvc.spec.slo else None,
                max_replicas=msvc.spec.autoscaling.max_replicas)
