"""The canary's HTTPRoute and GRPCRoute on the real API server, with the Gateway API's published CRDs
(from the Go module proxy, `devcluster/gatewayapi.py`) installed by the test: absent and the replica
ratio used before they exist; the HTTPRoute alone while only its CRD is installed (the GRPCRoute is
detected apart), then both with the step's weights, through the steps, back to stable 100 on
rollback and abort; deleted with the gatewayRef; a bad gatewayRef refused by the CRD's rules.

The reconciler runs in-process with the chart's ServiceAccount token (so the chart's RBAC is proven
too). Its analysis verdict comes in through the `canary_verdict` seam, as the analysis loop's would:
the analysis itself is proven against real servers in test_canary_analysis.py, tests/server/test_mirror.py
and tests/e2e/test_canary.py. No kubelet runs here: the controller-manager's pods stay Pending, which
is enough, the route follows the pods' labels, not their readiness.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import pathlib
from typing import Any, Callable

import pytest

from modelship.canary.analysis import FAILED, PASSED, Verdict
from modelship.controller.main import prime
from modelship.controller.reconcile import Reconciler
from modelship.devcluster.gatewayapi import standard_crds
from modelship.kube.cache import Store
from modelship.render import names

ROUTE_CRD = "httproutes.gateway.networking.k8s.io"
GRPC_CRD = "grpcroutes.gateway.networking.k8s.io"
GATEWAY_REF = {"name": "edge", "namespace": "gateways", "sectionName": "http"}


def spec(pre_stop: int = 10, *, strategy: str = "Canary", gateway_ref: dict[str, Any] | None = None) -> dict[str, Any]:
    canary: dict[str, Any] = {"steps": [{"weight": 20, "pauseSeconds": 5}, {"weight": 50, "pauseSeconds": 5}]}
    if gateway_ref is not None:
        canary["gatewayRef"] = gateway_ref
    return {
        "model": {"uri": "https://models.example/m.onnx", "sha256": "cd" * 32, "name": "m"},
        "resources": {"cpu": "100m", "memory": "128Mi"},
        "replicas": 2,
        "rollout": {"strategy": strategy, "preStopDelaySeconds": pre_stop, "canary": canary},
    }


class Clock:
    """The reconciler's clock, moved by the test so a step's pause is over without sleeping."""

    def __init__(self) -> None:
        self.now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)

    def __call__(self) -> str:
        return self.now.strftime("%Y-%m-%dT%H:%M:%SZ")

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


def route_weights(cluster: Any, namespace: str, name: str, kind: str = "httproute") -> dict[str, int] | None:
    got = cluster.kubectl("-n", namespace, "get", kind, name, "-o", "json", check=False)
    if got.returncode != 0:
        return None
    route = json.loads(got.stdout)
    assert route["metadata"]["ownerReferences"][0]["kind"] == "ModelService"
    assert route["spec"]["parentRefs"][0]["name"] == "edge"
    port = names.GRPC_PORT if kind == "grpcroute" else names.HTTP_PORT
    assert {ref["port"] for ref in route["spec"]["rules"][0]["backendRefs"]} == {port}
    return {ref["name"]: ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]}


def both_weights(cluster: Any, namespace: str, name: str) -> dict[str, int] | None:
    """The HTTPRoute's weights, after checking that the GRPCRoute's are the same."""
    http = route_weights(cluster, namespace, name)
    assert route_weights(cluster, namespace, name, "grpcroute") == http
    return http


@pytest.mark.cluster
def test_the_route_follows_the_canary_on_the_api_server(cluster: Any, operator_kubeconfig: pathlib.Path,
                                                        namespace: str) -> None:
    import kubernetes

    from modelship.kube.client import KubeClient

    # The scenario starts without the Gateway API; another test of this session may have installed it.
    for absent in (ROUTE_CRD, GRPC_CRD):
        cluster.kubectl("delete", "crd", absent, "--ignore-not-found", "--wait=true")
    crds = standard_crds(progress=print)
    name, key = "routed", (namespace, "routed")
    verdicts: dict[tuple[str, str], tuple[str, int, Verdict]] = {}
    clock = Clock()

    def apply(body_spec: dict[str, Any], annotations: dict[str, str] | None = None) -> None:
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if annotations:
            meta["annotations"] = annotations
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps({
            "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService", "metadata": meta, "spec": body_spec}))

    async def scenario() -> None:
        kube = KubeClient(kubernetes.config.new_client_from_config(config_file=str(operator_kubeconfig)))
        store = Store()
        reconciler = Reconciler(kube=kube, store=store, clock=clock, canary_verdict=verdicts.get)

        async def reconcile() -> dict[str, Any]:
            await prime(kube, store, [namespace])
            await reconciler.reconcile(key)
            await prime(kube, store, [namespace])
            return copy.deepcopy(store.msvc(key) or {})

        async def until(check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
            last: dict[str, Any] = {}
            for _ in range(120):  # the controller-manager creates pods at its own pace on a loaded machine
                last = await reconcile()
                if check(last):
                    return last
                await asyncio.sleep(1)
            raise AssertionError(f"{what}: last status {json.dumps(last.get('status'), indent=1)[:3000]}")

        def canary(body: dict[str, Any]) -> dict[str, Any]:
            return (body.get("status") or {}).get("canary") or {}

        def stable_labeled_pods() -> int:
            return sum(1 for p in store.pods(key)
                       if (p["metadata"].get("labels") or {}).get(names.TRACK_LABEL) == names.STABLE_TRACK)

        try:
            # 1. First rollout, no Gateway API: stable's pods get track=stable, the per-track Services exist.
            apply(spec(gateway_ref=GATEWAY_REF))
            await reconcile()
            deployment = json.loads(cluster.kubectl("-n", namespace, "get", "deployment", name, "-o", "json").stdout)
            assert deployment["spec"]["template"]["metadata"]["labels"][names.TRACK_LABEL] == "stable"
            for service, track in (("routed-stable", "stable"), ("routed-canary", "canary")):
                svc = json.loads(cluster.kubectl("-n", namespace, "get", "service", service, "-o", "json").stdout)
                assert svc["spec"]["selector"][names.TRACK_LABEL] == track
            await until(lambda b: stable_labeled_pods() == 2, "stable's two pods carry track=stable")

            # 2. A change starts a canary: without the CRD no route, the replica ratio splits, status says why.
            apply(spec(pre_stop=5, gateway_ref=GATEWAY_REF))
            body = await reconcile()
            route = canary(body).get("route") or {}
            assert canary(body)["phase"] == "Progressing" and canary(body)["step"] == 1, canary(body)
            assert route.get("traffic") == "replicas", route
            assert f"no CRD {ROUTE_CRD}" in route["message"], route
            grpc = canary(body).get("grpcRoute") or {}
            assert grpc.get("traffic") == "replicas" and f"no CRD {GRPC_CRD}" in grpc["message"], grpc
            assert route_weights(cluster, namespace, name) is None
            assert canary(body)["canaryReplicas"] == 1  # 1 of 3 pods: the replica ratio's nearest to 20 %
            events = cluster.kubectl("-n", namespace, "get", "events", "--field-selector",
                                     "reason=CanaryRouteNotUsed", "-o", "json").stdout
            assert json.loads(events)["items"], "no CanaryRouteNotUsed Event"

            # 3. The Gateway API's CRDs appear, all but GRPCRoute's: the next reconcile creates the
            # HTTPRoute at the step's weight; gRPC is still split by the replica ratio, and status says so.
            assert any(crd.name.endswith("_grpcroutes.yaml") for crd in crds)  # in v1.4.0's standard channel
            for crd in crds:
                if not crd.name.endswith("_grpcroutes.yaml"):
                    cluster.kubectl("apply", "--server-side", "-f", str(crd))
            cluster.wait_established(ROUTE_CRD)
            body = await reconcile()
            assert route_weights(cluster, namespace, name) == {"routed-stable": 80, "routed-canary": 20}
            route = canary(body)["route"]
            assert route["traffic"] == "route", route
            assert route["message"] == "HTTPRoute routed on Gateway gateways/edge: routed-stable 80%, routed-canary 20%"
            grpc = canary(body)["grpcRoute"]
            assert grpc["traffic"] == "replicas" and f"no CRD {GRPC_CRD}" in grpc["message"], grpc

            # 3b. GRPCRoute's CRD too: the GRPCRoute, with the same weights to the gRPC ports.
            for crd in crds:
                if crd.name.endswith("_grpcroutes.yaml"):
                    cluster.kubectl("apply", "--server-side", "-f", str(crd))
            cluster.wait_established(GRPC_CRD)
            body = await reconcile()
            assert both_weights(cluster, namespace, name) == {"routed-stable": 80, "routed-canary": 20}
            grpc_route = json.loads(cluster.kubectl("-n", namespace, "get", "grpcroute", name, "-o", "json").stdout)
            assert [m["method"]["service"] for m in grpc_route["spec"]["rules"][0]["matches"]] == [
                "inference.GRPCInferenceService", "modelship.monitoring.v1.Monitoring"]
            assert canary(body)["grpcRoute"]["message"] == \
                "GRPCRoute routed on Gateway gateways/edge: routed-stable 80%, routed-canary 20%"
            revision = canary(body)["revision"]

            # 4. Step 1 passes and its pause is over: step 2, 50 %.
            verdicts[key] = (revision, 0, Verdict(PASSED, "all good"))
            clock.advance(6)
            body = await reconcile()
            assert canary(body)["step"] == 2, canary(body)
            assert both_weights(cluster, namespace, name) == {"routed-stable": 50, "routed-canary": 50}

            # 5. Step 2 fails: rolled back, the route sends everything to stable again.
            verdicts[key] = (revision, 1, Verdict(FAILED, "p95 latency 900 ms > SLO 100 ms", "latency_slo"))
            body = await reconcile()
            assert canary(body)["phase"] == "RolledBack", canary(body)
            assert both_weights(cluster, namespace, name) == {"routed-stable": 100, "routed-canary": 0}
            assert canary(body)["route"]["backends"] == [{"name": "routed-stable", "weight": 100},
                                                         {"name": "routed-canary", "weight": 0}]

            # 6. Another change: a new canary at 20 %; an SRE aborts it: stable 100 again.
            apply(spec(pre_stop=7, gateway_ref=GATEWAY_REF))
            body = await reconcile()
            assert canary(body)["phase"] == "Progressing" and canary(body)["revision"] != revision
            assert both_weights(cluster, namespace, name) == {"routed-stable": 80, "routed-canary": 20}
            apply(spec(pre_stop=7, gateway_ref=GATEWAY_REF), annotations={"modelship.dev/canary": "abort"})
            body = await reconcile()
            assert canary(body)["phase"] == "Aborted", canary(body)
            assert both_weights(cluster, namespace, name) == {"routed-stable": 100, "routed-canary": 0}

            # 7. Back to a rolling update: the route and the per-track Services go.
            apply(spec(pre_stop=7, strategy="RollingUpdate"), annotations={})
            await reconcile()
            assert route_weights(cluster, namespace, name) is None
            assert route_weights(cluster, namespace, name, "grpcroute") is None
            for service in ("routed-stable", "routed-canary"):
                assert cluster.kubectl("-n", namespace, "get", "service", service, check=False).returncode != 0
        finally:
            kube.close()

    asyncio.run(scenario())


@pytest.mark.cluster
@pytest.mark.parametrize(("ref", "message"), [
    ({"name": "Edge_GW"}, "spec.rollout.canary.gatewayRef.name must be a Gateway name (a DNS-1123 subdomain: "
                          "lowercase letters, digits, - and .), got Edge_GW"),
    ({"name": "edge", "namespace": "gw.example"},
     "spec.rollout.canary.gatewayRef.namespace must be a namespace name (a DNS-1123 label: lowercase letters, "
     "digits and -), got gw.example"),
    ({"namespace": "gw"}, "spec.rollout.canary.gatewayRef.name: Required value"),
])
def test_the_api_server_refuses_a_bad_gateway_ref_naming_the_field(cluster: Any, crd: None, namespace: str,
                                                                    ref: dict[str, Any], message: str) -> None:
    result = cluster.kubectl("apply", "-f", "-", check=False, input=json.dumps({
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService",
        "metadata": {"name": "bad-ref", "namespace": namespace}, "spec": spec(gateway_ref=ref)}))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
