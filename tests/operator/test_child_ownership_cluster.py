"""The ownership guard on the real API server: an object that has a child's name but is not this
ModelService's (a user's Service, Deployment or HTTPRoute, or another ModelService's child, as
`foo-canary`'s Deployment and `foo`'s canary) is never applied over. It is left as it was, status
says Degraded=True/ChildNameConflict naming its kind, name and owner, an Event says it once, and
every other child keeps reconciling. Once the name is free, the child is created and the
condition clears.

The reconciler runs in-process with the chart's ServiceAccount token (the chart's RBAC is proven
too), as in test_canary_route_cluster.py. No kubelet runs: pods stay Pending, which is enough here.
"""

from __future__ import annotations

import asyncio
import copy
import json
import pathlib
from typing import Any

import pytest

from modelship.controller.main import prime
from modelship.controller.reconcile import Reconciler
from modelship.devcluster.gatewayapi import standard_crds
from modelship.kube.cache import Store
from modelship.status.ownership import CHILD_NAME_CONFLICT

ROUTE_CRD = "httproutes.gateway.networking.k8s.io"


def spec(pre_stop: int = 10, *, strategy: str = "RollingUpdate", gateway: bool = False) -> dict[str, Any]:
    canary: dict[str, Any] = {"steps": [{"weight": 20, "pauseSeconds": 5}]}
    if gateway:
        canary["gatewayRef"] = {"name": "edge"}
    return {
        "model": {"uri": "https://models.example/m.onnx", "sha256": "cd" * 32, "name": "m"},
        "resources": {"cpu": "100m", "memory": "128Mi"},
        "replicas": 2,
        "rollout": {"strategy": strategy, "preStopDelaySeconds": pre_stop, "canary": canary},
    }


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


class Harness:
    def __init__(self, cluster: Any, kubeconfig: pathlib.Path, namespace: str, kube_class: type | None = None) -> None:
        import kubernetes

        from modelship.kube.client import KubeClient

        self.cluster, self.namespace = cluster, namespace
        self.kube = (kube_class or KubeClient)(kubernetes.config.new_client_from_config(config_file=str(kubeconfig)))
        self.store = Store()
        self.reconciler = Reconciler(kube=self.kube, store=self.store)

    def apply_msvc(self, name: str, body_spec: dict[str, Any], annotations: dict[str, str] | None = None) -> None:
        meta: dict[str, Any] = {"name": name, "namespace": self.namespace, "annotations": annotations or {}}
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps({
            "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService", "metadata": meta, "spec": body_spec}))

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj["metadata"]["namespace"] = self.namespace
        self.cluster.kubectl("create", "-f", "-", input=json.dumps(obj))
        return self.get(obj["kind"], obj["metadata"]["name"])

    def get(self, kind: str, name: str) -> dict[str, Any]:
        got = self.cluster.kubectl("-n", self.namespace, "get", kind, name, "-o", "json", check=False)
        return json.loads(got.stdout) if got.returncode == 0 else {}

    async def reconcile(self, name: str) -> dict[str, Any]:
        key = (self.namespace, name)
        await prime(self.kube, self.store, [self.namespace])
        await self.reconciler.reconcile(key)
        await prime(self.kube, self.store, [self.namespace])
        return copy.deepcopy(self.store.msvc(key) or {})

    def events(self, name: str) -> list[dict[str, Any]]:
        out = self.cluster.kubectl("-n", self.namespace, "get", "events", "--field-selector",
                                   f"reason={CHILD_NAME_CONFLICT},involvedObject.name={name}", "-o", "json").stdout
        return list(json.loads(out)["items"])


def untouched(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Same resourceVersion, and no ownerReference or field manager of the operator's."""
    meta = after.get("metadata") or {}
    return (meta.get("resourceVersion") == before["metadata"]["resourceVersion"] and not meta.get("ownerReferences")
            and all(m.get("manager") != "modelship" for m in meta.get("managedFields") or []))


USER_SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "clash", "labels": {"team": "web"}},
                "spec": {"selector": {"app": "web"}, "ports": [{"name": "web", "port": 80}]}}
USER_DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "taken", "labels": {"team": "web"}},
    "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
             "template": {"metadata": {"labels": {"app": "web"}},
                          "spec": {"containers": [{"name": "web", "image": "registry.example/web:1"}]}}}}


@pytest.mark.cluster
def test_a_users_service_and_deployment_with_a_childs_name_are_left_untouched(
        cluster: Any, operator_kubeconfig: pathlib.Path, namespace: str) -> None:
    h = Harness(cluster, operator_kubeconfig, namespace)

    async def scenario() -> None:
        try:
            # A user's Service named like the ModelService: not applied over; the rest reconciles.
            service = h.create(copy.deepcopy(USER_SERVICE))
            h.apply_msvc("clash", spec())
            body = await h.reconcile("clash")
            assert untouched(service, h.get("service", "clash")), h.get("service", "clash")
            assert h.get("deployment", "clash")["metadata"]["ownerReferences"][0]["name"] == "clash"
            assert h.get("configmap", "clash-model-config")
            degraded, ready = condition(body, "Degraded"), condition(body, "Ready")
            assert degraded["status"] == "True" and degraded["reason"] == CHILD_NAME_CONFLICT, degraded
            assert "Service clash exists and is not owned by this ModelService" in degraded["message"], degraded
            assert "it has no owner" in degraded["message"], degraded
            assert ready["status"] == "False" and ready["reason"] == CHILD_NAME_CONFLICT, ready  # its Service
            await h.reconcile("clash")  # still there: one Event, not one per reconcile
            assert untouched(service, h.get("service", "clash"))
            assert len(h.events("clash")) == 1, h.events("clash")

            # The user deletes theirs: the next reconcile creates the ModelService's and the condition clears.
            cluster.kubectl("-n", namespace, "delete", "service", "clash")
            body = await h.reconcile("clash")
            ours = h.get("service", "clash")
            assert ours["metadata"]["ownerReferences"][0]["kind"] == "ModelService", ours
            assert condition(body, "Degraded").get("reason") != CHILD_NAME_CONFLICT, condition(body, "Degraded")

            # A user's Deployment named like the ModelService: untouched, Ready=False naming it.
            deployment = h.create(copy.deepcopy(USER_DEPLOYMENT))
            h.apply_msvc("taken", spec())
            body = await h.reconcile("taken")
            assert untouched(deployment, h.get("deployment", "taken"))
            assert h.get("deployment", "taken")["spec"]["template"]["spec"]["containers"][0]["image"] == \
                "registry.example/web:1"
            assert h.get("service", "taken")["metadata"]["ownerReferences"][0]["name"] == "taken"
            ready = condition(body, "Ready")
            assert ready["status"] == "False" and ready["reason"] == CHILD_NAME_CONFLICT, ready
            assert "Deployment taken exists" in ready["message"], ready
        finally:
            h.kube.close()

    asyncio.run(scenario())


@pytest.mark.cluster
def test_foo_and_foo_canary_never_take_each_others_deployment(
        cluster: Any, operator_kubeconfig: pathlib.Path, namespace: str) -> None:
    h = Harness(cluster, operator_kubeconfig, namespace)

    async def owner(kind: str, name: str) -> str | None:
        refs = h.get(kind, name).get("metadata", {}).get("ownerReferences") or []
        return refs[0]["name"] if refs else None

    async def scenario() -> None:
        try:
            # foo's canary runs (Deployment and ConfigMap foo-canary*), then ModelService foo-canary arrives.
            h.apply_msvc("foo", spec(strategy="Canary"))
            await h.reconcile("foo")
            h.apply_msvc("foo", spec(pre_stop=5, strategy="Canary"))
            body = await h.reconcile("foo")
            assert body["status"]["canary"]["phase"] == "Progressing", body["status"].get("canary")
            assert await owner("deployment", "foo-canary") == "foo"
            theirs = h.get("deployment", "foo-canary")
            h.apply_msvc("foo-canary", spec())
            body = await h.reconcile("foo-canary")
            after = h.get("deployment", "foo-canary")
            assert after["metadata"]["resourceVersion"] == theirs["metadata"]["resourceVersion"]
            assert await owner("deployment", "foo-canary") == "foo"
            assert await owner("configmap", "foo-canary-model-config") == "foo"
            assert await owner("service", "foo-canary") == "foo-canary"  # no clash there: created
            ready = condition(body, "Ready")
            assert ready["status"] == "False" and ready["reason"] == CHILD_NAME_CONFLICT, ready
            assert "Deployment foo-canary exists and is not owned by this ModelService (controlled by " \
                   "ModelService foo (uid" in ready["message"], ready
            assert "ConfigMap foo-canary-model-config" in ready["message"], ready
            foo = await h.reconcile("foo")  # foo is not hurt
            assert condition(foo, "Degraded").get("reason") != CHILD_NAME_CONFLICT

            # foo goes back to rolling updates (its canary's Deployment and ConfigMap go): foo-canary gets
            # the names; then foo's next canary finds them taken and says so, and leaves them as they are.
            h.apply_msvc("foo", spec(pre_stop=5))
            await h.reconcile("foo")
            assert await owner("deployment", "foo-canary") != "foo"
            for _ in range(60):  # the deletion is background; the garbage collector takes the ReplicaSet
                body = await h.reconcile("foo-canary")
                if await owner("deployment", "foo-canary") == "foo-canary":
                    break
                await asyncio.sleep(1)
            assert await owner("deployment", "foo-canary") == "foo-canary"
            assert condition(body, "Degraded").get("reason") != CHILD_NAME_CONFLICT, condition(body, "Degraded")
            mine = h.get("deployment", "foo-canary")
            h.apply_msvc("foo", spec(pre_stop=5, strategy="Canary"))
            await h.reconcile("foo")
            h.apply_msvc("foo", spec(pre_stop=7, strategy="Canary"))
            foo = await h.reconcile("foo")
            assert foo["status"]["canary"]["phase"] == "Progressing", foo["status"]["canary"]
            degraded = condition(foo, "Degraded")
            assert degraded["status"] == "True" and degraded["reason"] == CHILD_NAME_CONFLICT, degraded
            assert "controlled by ModelService foo-canary" in degraded["message"], degraded
            assert h.get("deployment", "foo-canary")["metadata"]["resourceVersion"] == mine["metadata"]["resourceVersion"]
            assert [e["message"] for e in h.events("foo")], "no ChildNameConflict Event for foo"
        finally:
            h.kube.close()

    asyncio.run(scenario())


@pytest.mark.cluster
def test_a_users_httproute_with_the_routes_name_is_left_untouched(
        cluster: Any, operator_kubeconfig: pathlib.Path, namespace: str) -> None:
    for crd in standard_crds(progress=print):  # idempotent: test_canary_route_cluster.py may have done it
        cluster.kubectl("apply", "--server-side", "-f", str(crd))
    cluster.wait_established(ROUTE_CRD)
    h = Harness(cluster, operator_kubeconfig, namespace)

    async def scenario() -> None:
        try:
            route = h.create({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "web"},
                "spec": {"parentRefs": [{"name": "public"}],
                         "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}})
            h.apply_msvc("web", spec(strategy="Canary", gateway=True))
            body = await h.reconcile("web")
            assert untouched(route, h.get("httproute", "web")), h.get("httproute", "web")
            assert h.get("grpcroute", "web")["metadata"]["ownerReferences"][0]["name"] == "web"  # not in the way
            assert h.get("service", "web-stable")["metadata"]["ownerReferences"][0]["name"] == "web"
            degraded = condition(body, "Degraded")
            assert degraded["status"] == "True" and degraded["reason"] == CHILD_NAME_CONFLICT, degraded
            assert "HTTPRoute web exists and is not owned by this ModelService" in degraded["message"], degraded
            assert condition(body, "Ready").get("reason") != CHILD_NAME_CONFLICT  # the model serves all the same
            assert len(h.events("web")) == 1
        finally:
            h.kube.close()

    asyncio.run(scenario())


@pytest.mark.cluster
def test_an_object_made_between_the_read_and_the_apply_is_not_taken_over(
        cluster: Any, operator_kubeconfig: pathlib.Path, namespace: str) -> None:
    """The window between the operator's ownership read and its apply, made to happen every time:
    the user's Service is created on the real API server right after the operator's read found
    none. The apply carries what the read saw (no object yet), so the API server refuses it (409)
    and the object is read and judged again instead of being taken over by the forced apply."""
    from modelship.kube.client import KubeClient

    made: dict[str, Any] = {}
    user_service = copy.deepcopy(USER_SERVICE)
    user_service["metadata"]["name"] = "racy"

    class RacingKube(KubeClient):  # the real client; only the moment of the user's create is chosen
        async def get(self, path: str) -> dict[str, Any]:
            try:
                return await super().get(path)
            finally:
                if path.endswith("/services/racy") and not made:
                    made.update(h.create(copy.deepcopy(user_service)))

    h = Harness(cluster, operator_kubeconfig, namespace, kube_class=RacingKube)

    async def scenario() -> None:
        try:
            h.apply_msvc("racy", spec())
            body = await h.reconcile("racy")
            assert made, "the Service was never read: the race did not happen"
            assert untouched(made, h.get("service", "racy")), h.get("service", "racy")
            degraded = condition(body, "Degraded")
            assert degraded["status"] == "True" and degraded["reason"] == CHILD_NAME_CONFLICT, degraded
            assert "Service racy exists and is not owned by this ModelService" in degraded["message"], degraded
            assert h.get("deployment", "racy")["metadata"]["ownerReferences"][0]["name"] == "racy"
        finally:
            h.kube.close()

    asyncio.run(scenario())
