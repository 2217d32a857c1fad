"""The canary's weighted HTTPRoute (spec.rollout.canary.gatewayRef): what is rendered, the track label
on stable's pods (which is no new revision), the weights at each phase, and what status says. Pure;
the same on the real API server with the Gateway API's CRDs is in test_canary_route_cluster.py."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from modelship.api.v1alpha1 import GatewayRef, ModelService
from modelship.canary.report import route_status
from modelship.render import names, render_canary, render_children, render_route, template_revision
from modelship.render.route import REPLICAS, ROUTE, backends_of, route_backends, stable_pods_labeled
from msvc_samples import SHA, body

CANARY = {"strategy": "Canary", "canary": {"steps": [{"weight": 20, "pauseSeconds": 5}],
                                           "gatewayRef": {"name": "edge", "namespace": "gw", "sectionName": "http"}}}
SPEC = {"model": {"uri": "https://h.example/m.onnx", "sha256": SHA, "name": "m"}, "replicas": 2, "rollout": CANARY}


def msvc_of(spec: dict[str, Any]) -> ModelService:
    return ModelService.from_body(body("svc", spec=spec))


def by_name(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in render_children(msvc_of(spec)).objects}


def pod(track: str | None, *, deleting: bool = False) -> dict[str, Any]:
    labels = {names.SERVICE_LABEL: "svc", **({names.TRACK_LABEL: track} if track else {})}
    meta: dict[str, Any] = {"name": f"p-{track}", "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta}


def test_stable_pods_carry_the_track_label_only_with_a_gateway_ref_and_it_is_no_new_revision() -> None:
    with_ref = by_name(SPEC)
    without = by_name({**SPEC, "rollout": {"strategy": "Canary"}})
    rolling = by_name({**SPEC, "rollout": {"strategy": "RollingUpdate"}})
    stable = with_ref[("Deployment", "svc")]
    assert stable["spec"]["template"]["metadata"]["labels"][names.TRACK_LABEL] == names.STABLE_TRACK
    assert stable["spec"]["selector"]["matchLabels"] == {names.SERVICE_LABEL: "svc"}  # immutable, unchanged
    for other in (without, rolling):
        assert names.TRACK_LABEL not in other[("Deployment", "svc")]["spec"]["template"]["metadata"]["labels"]
    # the same pods serve the same model: one revision, so adding the label rolls stable directly
    revisions = {template_revision(r[("Deployment", "svc")]) for r in (with_ref, without, rolling)}
    assert len(revisions) == 1
    # ... but the Deployment as applied differs, so stable's pods do get the label
    assert stable["metadata"]["annotations"][names.DESIRED_HASH_ANNOTATION] != \
        without[("Deployment", "svc")]["metadata"]["annotations"][names.DESIRED_HASH_ANNOTATION]
    # the canary's copy is on its own track, with the same revision
    msvc = msvc_of(SPEC)
    canary = render_canary(msvc, render_children(msvc), replicas=1)[1]
    assert canary["spec"]["template"]["metadata"]["labels"][names.TRACK_LABEL] == names.CANARY_TRACK
    assert template_revision(canary) == template_revision(stable)


def test_a_service_per_track_exists_with_a_gateway_ref_and_is_listed_absent_without() -> None:
    objects = by_name(SPEC)
    stable, canary = objects[("Service", "svc-stable")], objects[("Service", "svc-canary")]
    assert stable["spec"]["selector"] == {names.SERVICE_LABEL: "svc", names.TRACK_LABEL: "stable"}
    assert canary["spec"]["selector"] == {names.SERVICE_LABEL: "svc", names.TRACK_LABEL: "canary"}
    assert stable["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert objects[("Service", "svc")]["spec"]["selector"] == {names.SERVICE_LABEL: "svc"}  # the main one unchanged
    rendered = render_children(msvc_of({**SPEC, "rollout": {"strategy": "RollingUpdate"}}))
    assert {(r.kind, r.name) for r in rendered.absent} >= {("Service", "svc-stable"), ("Service", "svc-canary")}
    assert not any(o["metadata"]["name"] in ("svc-stable", "svc-canary") for o in rendered.objects)


def test_the_route_attaches_to_the_named_gateway_for_the_models_paths_with_exact_weights() -> None:
    msvc = msvc_of(SPEC)
    route = render_route(msvc, [("svc-stable", 80), ("svc-canary", 20)])
    assert (route["apiVersion"], route["kind"], route["metadata"]["name"]) == (
        "gateway.networking.k8s.io/v1", "HTTPRoute", "svc")
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge",
                                            "namespace": "gw", "sectionName": "http"}]
    rule = route["spec"]["rules"][0]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v2/models/m"}}]
    assert backends_of(route) == [{"name": "svc-stable", "weight": 80}, {"name": "svc-canary", "weight": 20}]
    assert all(ref["port"] == names.HTTP_PORT for ref in rule["backendRefs"])
    assert route["metadata"]["ownerReferences"][0]["kind"] == "ModelService"  # ours, garbage-collected with it
    bare = msvc_of({**SPEC, "rollout": {**CANARY, "canary": {**CANARY["canary"], "gatewayRef": {"name": "edge"}}}})
    assert render_route(bare, [("svc", 100)])["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"}]


def test_weights_follow_the_step_and_fall_back_to_the_main_service_until_stable_is_labeled() -> None:
    assert route_backends("svc", canary_weight=20, stable_labeled=True) == (
        ROUTE, [("svc-stable", 80), ("svc-canary", 20)])
    # no canary running (before, promoting, promoted, rolled back, aborted): stable 100
    assert route_backends("svc", canary_weight=None, stable_labeled=True) == (
        ROUTE, [("svc-stable", 100), ("svc-canary", 0)])
    # stable's pods not all labeled yet: the stable Service would miss some, so the main Service takes all
    assert route_backends("svc", canary_weight=20, stable_labeled=False) == (REPLICAS, [("svc", 100)])


def test_stable_is_labeled_when_every_live_non_canary_pod_carries_the_track() -> None:
    assert stable_pods_labeled([pod("stable"), pod("canary")])
    assert stable_pods_labeled([pod("stable"), pod(None, deleting=True)])  # a terminating old pod does not count
    assert not stable_pods_labeled([pod("stable"), pod(None)])  # mid-rollout: one old pod left
    assert not stable_pods_labeled([pod("canary")])
    assert not stable_pods_labeled([])


def test_status_says_whether_the_route_or_the_replica_ratio_splits_and_why() -> None:
    msvc = msvc_of(SPEC)
    ref = msvc.spec.rollout.canary_settings.gateway_ref
    route = render_route(msvc, [("svc-stable", 80), ("svc-canary", 20)])
    used = route_status(route, traffic=ROUTE, installed=True, gateway=ref)
    assert used["traffic"] == "route" and used["message"] == "HTTPRoute svc on Gateway gw/edge: svc-stable 80%, svc-canary 20%"
    missing = route_status(route, traffic=ROUTE, installed=False, gateway=ref)
    assert missing["traffic"] == "replicas"
    assert "no CRD httproutes.gateway.networking.k8s.io" in missing["message"] and "replica ratio" in missing["message"]
    unlabeled = route_status(render_route(msvc, [("svc", 100)]), traffic=REPLICAS, installed=True, gateway=ref)
    assert "modelship.dev/track=stable" in unlabeled["message"] and unlabeled["backends"] == [{"name": "svc", "weight": 100}]


@pytest.mark.parametrize(("ref", "message"), [
    ({"name": "Edge_GW"}, "spec.rollout.canary.gatewayRef.name must be a Gateway name"),
    ({"name": ""}, "spec.rollout.canary.gatewayRef.name must be a Gateway name"),
    ({"name": "edge", "namespace": "a.b"}, "spec.rollout.canary.gatewayRef.namespace must be a namespace name"),
    ({"name": "edge", "sectionName": "HTTP"}, "spec.rollout.canary.gatewayRef.sectionName must be a listener name"),
    ({"namespace": "gw"}, "Field required")])
def test_a_bad_gateway_ref_is_refused_with_the_field_named(ref: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        GatewayRef.model_validate(ref)


def test_the_grpc_route_has_the_same_weights_to_the_grpc_ports_for_the_servers_grpc_services() -> None:
    from modelship.render import render_grpc
    from modelship.render.route import GRPC_SERVICES
    from modelship_server.protocol import grpc as server_grpc
    from modelship_server.protocol import grpc_monitoring

    msvc = msvc_of(SPEC)
    backends = route_backends("svc", canary_weight=20, stable_labeled=True)[1]
    grpc, http = render_grpc(msvc, backends), render_route(msvc, backends)
    assert (grpc["apiVersion"], grpc["kind"], grpc["metadata"]["name"]) == ("gateway.networking.k8s.io/v1", "GRPCRoute", "svc")
    assert grpc["metadata"]["ownerReferences"][0]["kind"] == "ModelService"
    assert grpc["spec"]["parentRefs"] == http["spec"]["parentRefs"]
    assert backends_of(grpc) == backends_of(http) == [{"name": "svc-stable", "weight": 80}, {"name": "svc-canary", "weight": 20}]
    assert {r["port"] for r in grpc["spec"]["rules"][0]["backendRefs"]} == {names.GRPC_PORT}
    assert GRPC_SERVICES == (server_grpc.SERVICE, grpc_monitoring.SERVICE)  # what the server answers
    assert [m["method"] for m in grpc["spec"]["rules"][0]["matches"]] == [
        {"type": "Exact", "service": service} for service in GRPC_SERVICES]
    shown = route_status(grpc, traffic=REPLICAS, installed=False, gateway=GatewayRef(name="edge"))
    assert "no CRD grpcroutes.gateway.networking.k8s.io" in shown["message"] and "gRPC traffic" in shown["message"]
