"""What a canary shows: status.canary (the `Canary` column of `kubectl get msvc` reads its
stepSummary) and the conditions it decides. Pure.

Progressing and Degraded keep their meaning: Progressing is True while a canary runs and False
once it ended (RolledBack, Aborted); Degraded is True when a person should look (CanaryFailed,
CanaryAborted), with the failing metric and its values in the message. Ready stays False while
the spec's revision is not what serves, as it does in a rolling update.
"""

from __future__ import annotations

from typing import Any, Sequence

from modelship.api.v1alpha1 import CanaryStep, GatewayRef
from modelship.canary.analysis import TrackStats, Verdict
from modelship.canary.machine import ABORTED, PROGRESSING, PROMOTED, PROMOTING, ROLLED_BACK, CanaryState
from modelship.render.route import REPLICAS, ROUTE, backends_of
from modelship.status import conditions as c

CANARY_PROGRESSING = "CanaryProgressing"
CANARY_PROMOTING = "CanaryPromoting"
ROLLED_BACK_REASON = "RolledBack"
ABORTED_REASON = "Aborted"
CANARY_FAILED = "CanaryFailed"
CANARY_ABORTED = "CanaryAborted"
ROUTE_NOT_USED = "CanaryRouteNotUsed"  # Event: a gatewayRef is set, but the replica ratio splits the traffic
ROUTE_CRD = "httproutes.gateway.networking.k8s.io"
CRDS = {"HTTPRoute": ROUTE_CRD, "GRPCRoute": "grpcroutes.gateway.networking.k8s.io"}


def conditions_of(state: CanaryState | None) -> list[c.ConditionSpec]:
    """Conditions that replace the rollout's own while a canary runs or after it failed; none
    otherwise (a promoted canary ends in an ordinary complete rollout)."""
    if state is None or state.phase == PROMOTED:
        return []
    if state.phase == PROGRESSING:
        return [c.ConditionSpec(c.PROGRESSING, c.TRUE, CANARY_PROGRESSING, state.message)]
    if state.phase == PROMOTING:
        return [c.ConditionSpec(c.PROGRESSING, c.TRUE, CANARY_PROMOTING, state.message)]
    failed = state.phase == ROLLED_BACK
    reason = CANARY_FAILED if failed else CANARY_ABORTED
    message = f"{state.message}; the previous spec serves at full strength"
    return [
        c.ConditionSpec(c.READY, c.FALSE, reason, message, warning=True),
        c.ConditionSpec(c.PROGRESSING, c.FALSE, ROLLED_BACK_REASON if failed else ABORTED_REASON, message),
        c.ConditionSpec(c.DEGRADED, c.TRUE, reason, message, warning=True),
    ]


def status_of(state: CanaryState | None, steps: Sequence[CanaryStep], *, canary_replicas: int, stable_replicas: int,
              verdict: Verdict | None, percentile: str) -> dict[str, Any] | None:
    """status.canary, or None (removed) when no canary was run for this revision."""
    if state is None:
        return None
    step = min(state.step, len(steps) - 1)
    weight = steps[step].weight if state.phase in (PROGRESSING, PROMOTING) else (100 if state.phase == PROMOTED else 0)
    summary = {PROGRESSING: f"{step + 1}/{len(steps)} {weight}%", PROMOTING: "promoting",
               PROMOTED: "promoted", ROLLED_BACK: f"rolled back at {step + 1}/{len(steps)}",
               ABORTED: f"aborted at {step + 1}/{len(steps)}"}.get(state.phase, state.phase)
    out: dict[str, Any] = {**state.to_status(), "steps": len(steps), "stepSummary": summary, "weight": weight,
                           "canaryReplicas": canary_replicas, "stableReplicas": stable_replicas}
    if verdict is not None:
        out["canary"] = _track(verdict.canary, percentile)
        out["stable"] = _track(verdict.stable, percentile)
        speedup = online_speedup(verdict, percentile)
        if speedup is not None:
            out["onlineSpeedup"] = speedup
    return out


def online_speedup(verdict: Verdict, percentile: str) -> float | None:
    """Stable's latency over the canary's, at the same per-pod load (the Service spreads requests
    evenly): the online counterpart of the optimize Job's offline speedup."""
    canary, stable = verdict.canary.latency_ms(percentile), verdict.stable.latency_ms(percentile)
    if not canary or not stable or verdict.canary.requests <= 0 or verdict.stable.requests <= 0:
        return None
    return round(stable / canary, 3)


def _track(stats: TrackStats, percentile: str) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": int(stats.requests)}
    if stats.compared > 0:
        out["mirrored"] = int(stats.compared)
    for key, value in (("errorRate", stats.error_rate), ("shedRate", stats.shed_rate),
                       ("latencyMilliseconds", stats.latency_ms(percentile)),
                       ("outputAgreement", stats.output_agreement)):
        if value is not None:
            out[key] = round(value, 4)
    return out


def route_status(route: dict[str, Any], *, traffic: str, installed: bool, gateway: GatewayRef | None) -> dict[str, Any]:
    """status.canary.route (or grpcRoute): the HTTPRoute (GRPCRoute), its weights, and whether they
    or the replica ratio split the traffic (and why not the route)."""
    name = route["metadata"]["name"]
    kind = route.get("kind", "HTTPRoute")
    crd = CRDS.get(kind, ROUTE_CRD)
    backends = backends_of(route)
    where = f"{gateway.namespace}/{gateway.name}" if gateway is not None and gateway.namespace else \
        (gateway.name if gateway is not None else "?")
    if not installed:
        traffic = REPLICAS
        message = (f"the Gateway API's {kind} is not installed in this cluster (no CRD {crd}): {kind} {name} was not "
                   f"applied and the replica ratio splits the {'gRPC' if kind == 'GRPCRoute' else 'HTTP'} traffic; the "
                   "route is applied on a later resync once the CRD exists")
    elif traffic == ROUTE:
        message = f"{kind} {name} on Gateway {where}: " + ", ".join(
            f"{b['name']} {b['weight']}%" for b in backends)
    else:
        message = (f"{kind} {name} on Gateway {where} sends to the main Service: stable's pods do not all carry "
                   "modelship.dev/track=stable yet (they get it at stable's next rollout), so the replica ratio "
                   "splits the traffic")
    return {"name": name, "traffic": traffic, "backends": backends, "message": message}
