"""The canary's weighted routes (Gateway API): an HTTPRoute and a GRPCRoute on the user's Gateway
whose two backends, `<name>-stable` and `<name>-canary`, are Services of one track's pods each
(their HTTP and gRPC ports). Pure. The two kinds are installed independently (GRPCRoute joined
the standard channel in v1.1), so each is applied, and reported, on its own.

Rendered only with `spec.rollout.strategy: Canary` and `spec.rollout.canary.gatewayRef` set: a
route without a parent Gateway routes nothing. The main Service is unchanged (it selects both
tracks, so in-cluster clients of it still see the replica ratio); the route's weights are the
step's, exactly. Where no canary runs, or after a promotion, rollback or abort, stable takes 100.
While stable's pods do not all carry `track: stable` yet (the first rollout after a gatewayRef was
set), the stable Service would miss some of them: the route then sends everything to the main
Service and the split is the replica ratio's, which the status says.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from modelship.api.v1alpha1 import ModelService
from modelship.render import names

GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
HTTP_ROUTE = "HTTPRoute"
GRPC_ROUTE = "GRPCRoute"
# The gRPC services modelship-server answers (its protocol/grpc.py and grpc_monitoring.py; the
# operator cannot import the server, a test keeps the two in step): KServe v2 inference, and
# the monitoring service (feedback, drift and quality).
GRPC_SERVICES = ("inference.GRPCInferenceService", "modelship.monitoring.v1.Monitoring")
# Where the route's weights carry the split, and where the replica ratio does.
ROUTE, REPLICAS = "route", "replicas"


def wants_route(msvc: ModelService) -> bool:
    """A gatewayRef under the Canary strategy: the route and the per-track Services exist."""
    rollout = msvc.spec.rollout
    return rollout.strategy == "Canary" and rollout.canary_settings.gateway_ref is not None


def render_track_services(msvc: ModelService) -> list[dict[str, Any]]:
    """`<name>-stable` and `<name>-canary`, HTTP and gRPC, each selecting one track's pods
    (none when no route is wanted)."""
    if not wants_route(msvc):
        return []
    name = msvc.metadata.name
    out: list[dict[str, Any]] = []
    for service, track in ((names.stable_service(name), names.STABLE_TRACK),
                           (names.canary_service(name), names.CANARY_TRACK)):
        out.append({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": service, "namespace": msvc.metadata.namespace,
                         "labels": {**names.labels(name, msvc.spec.runtime), names.TRACK_LABEL: track}},
            "spec": {
                "type": "ClusterIP",
                "selector": {**names.selector(name), names.TRACK_LABEL: track},
                "ports": [
                    {"name": "http", "port": names.HTTP_PORT, "targetPort": "http", "protocol": "TCP",
                     "appProtocol": "http"},
                    {"name": "grpc", "port": names.GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
                     "appProtocol": "kubernetes.io/h2c"},
                ],
            },
        })
    return out


def stable_pods_labeled(pods: Sequence[Mapping[str, Any]]) -> bool:
    """True when every live pod that is not the canary's carries `track: stable` (and there is
    one): only then does the stable Service reach all of stable's pods."""
    stable = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")
              and ((p.get("metadata") or {}).get("labels") or {}).get(names.TRACK_LABEL) != names.CANARY_TRACK]
    return bool(stable) and all(
        ((p.get("metadata") or {}).get("labels") or {}).get(names.TRACK_LABEL) == names.STABLE_TRACK for p in stable)


def route_backends(msvc_name: str, *, canary_weight: int | None, stable_labeled: bool) -> tuple[str, list[tuple[str, int]]]:
    """(traffic, [(Service, weight)]): the step's weight to the canary while one runs
    (`canary_weight`; None: none runs, or it is promoting or rolled back, so stable takes 100)."""
    if not stable_labeled:
        return REPLICAS, [(names.service(msvc_name), 100)]
    weight = canary_weight or 0
    return ROUTE, [(names.stable_service(msvc_name), 100 - weight), (names.canary_service(msvc_name), weight)]


def _parent(msvc: ModelService, kind: str) -> dict[str, Any]:
    ref = msvc.spec.rollout.canary_settings.gateway_ref
    if ref is None:
        raise ValueError(f"spec.rollout.canary.gatewayRef is required for the canary's {kind}")
    parent: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": ref.name}
    if ref.namespace is not None:
        parent["namespace"] = ref.namespace
    if ref.section_name is not None:
        parent["sectionName"] = ref.section_name
    return parent


def render_http_route(msvc: ModelService, backends: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """The HTTPRoute on spec.rollout.canary.gatewayRef for the model's KServe v2 paths, so several
    ModelServices can share one listener (not finished: the caller adds the ownerReference)."""
    matches = [{"path": {"type": "PathPrefix", "value": f"/v2/models/{msvc.spec.model.name}"}}]
    return _route(msvc, HTTP_ROUTE, names.http_route(msvc.metadata.name), matches, names.HTTP_PORT, backends)


def render_grpc_route(msvc: ModelService, backends: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """The GRPCRoute on spec.rollout.canary.gatewayRef with the same weights, for the server's gRPC
    services (to the Services' gRPC port). gRPC carries the model's name in the message, not the
    method, so the route matches whole services: one model per listener or hostname for gRPC
    (not finished: the caller adds the ownerReference)."""
    matches = [{"method": {"type": "Exact", "service": service}} for service in GRPC_SERVICES]
    return _route(msvc, GRPC_ROUTE, names.grpc_route(msvc.metadata.name), matches, names.GRPC_PORT, backends)


def _route(msvc: ModelService, kind: str, route_name: str, matches: list[dict[str, Any]], port: int,
           backends: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """One rule: these matches to the track Services on `port`, at the weights given."""
    return {
        "apiVersion": GATEWAY_API_VERSION,
        "kind": kind,
        "metadata": {"name": route_name, "namespace": msvc.metadata.namespace,
                     "labels": names.labels(msvc.metadata.name, msvc.spec.runtime)},
        "spec": {
            "parentRefs": [_parent(msvc, kind)],
            "rules": [{
                "matches": matches,
                "backendRefs": [{"group": "", "kind": "Service", "name": service, "port": port,
                                 "weight": weight} for service, weight in backends],
            }],
        },
    }


def backends_of(route: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """[{name, weight}] of a rendered or live route, for status."""
    rules = ((route or {}).get("spec") or {}).get("rules") or []
    return [{"name": ref.get("name"), "weight": ref.get("weight", 1)}
            for rule in rules for ref in rule.get("backendRefs") or []]
