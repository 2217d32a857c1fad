"""The builtin autoscaler's loop against the real API server, with a real modelship-server under load.

The serving pods run on kwok's fake nodes (no process behind them), so the operator's cache
entry of the one pod has its IP pointed at a real modelship-server process on this machine:
the cache is the loop's only view of pods, so everything after it (scrape, decision, the
scale subresource, the Event, the status through the reconciler) is the real path.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from load import Load, body
from modelship.autoscale.loop import Autoscaler
from modelship.controller.main import prime
from modelship.controller.reconcile import Reconciler
from modelship.kube.cache import Store
from modelship.kube.client import KubeClient
from modelship_server import samples
from test_signals import CONFIG, MODEL

pytestmark = pytest.mark.cluster

NS = "autoscale-loop"
NAME = "scaled"
KEY = (NS, NAME)


@pytest.fixture(scope="module")
def server(module_server_factory, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    samples.write_model(repo, MODEL, samples.slow(size=128, rows=64, repeats=4), CONFIG)
    return module_server_factory(repo)


def modelservice() -> dict[str, Any]:
    return {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "model": {"uri": "https://models.example/slow.onnx", "sha256": "ab" * 32, "name": MODEL},
            "resources": {"cpu": "100m", "memory": "128Mi"},
            "slo": {"latencyMilliseconds": 100, "percentile": "p95"},
            # 25 req/s per replica at 80 % target: 20 planned per replica, so 40 req/s wants 2.
            "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4, "intervalSeconds": 1,
                            "capacityPerReplica": 25, "scaleDownStabilizationSeconds": 4},
        },
    }


async def wait_for_ready_pod(kube: KubeClient, store: Store, timeout: float = 60) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        await prime(kube, store, [NS])
        for pod in store.pods(KEY):
            if any(cond.get("type") == "Ready" and cond.get("status") == "True"
                   for cond in (pod.get("status") or {}).get("conditions") or []):
                return pod
        await asyncio.sleep(1)
    raise AssertionError(f"no ready pod of {NS}/{NAME} in {timeout} s: {store.pods(KEY)}")


def deployment_replicas(cluster: Any) -> int:
    out = cluster.kubectl("-n", NS, "get", "deployment", NAME, "-o", "json").stdout
    return int(json.loads(out)["spec"]["replicas"])


def events(cluster: Any, reason: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("-n", NS, "get", "events", "-o", "json").stdout
    return [e for e in json.loads(out)["items"] if e.get("reason") == reason]


def test_loop_scales_through_the_scale_subresource_and_reports_through_the_reconciler(cluster, kube, server) -> None:
    cluster.kubectl("create", "namespace", NS, check=False)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(modelservice()))

    async def scenario() -> None:
        store = Store()
        await prime(kube, store, [NS])
        woken: list[Any] = []
        autoscaler = Autoscaler(kube=kube, store=store, wake=woken.append, scrape_port=server.metrics_port)
        try:
            await steps(store, autoscaler, woken)
        finally:
            await autoscaler.stop()

    async def steps(store: Store, autoscaler: Autoscaler, woken: list[Any]) -> None:
        reconciler = Reconciler(kube=kube, store=store, extra_status=autoscaler.status_for)
        await reconciler.reconcile(KEY)  # creates the Deployment (no .spec.replicas: autoscaled)
        await prime(kube, store, [NS])  # the cache keeps only new objects from our own writes
        status = store.msvc(KEY)["status"]
        assert status["autoscaling"]["reason"] == "waiting for the first measurement"
        assert status["autoscaling"]["capacitySource"] == "spec"
        pod = await wait_for_ready_pod(kube, store)
        served = {**pod, "status": {**pod["status"], "podIP": "127.0.0.1"}}

        async def refresh() -> None:
            """Re-read the cluster; the cache keeps one pod, the one pointed at the real server
            (kwok's other pods have nothing behind them; as missing pods they would be
            extrapolated from this one)."""
            await prime(kube, store, [NS])
            for other in store.pods(KEY):
                store.remove("Pod", other)
            store.upsert("Pod", served)

        await refresh()

        # 30 req/s against 25 x 0.8 = 20 per replica wants 2 replicas for any measurement from
        # 20 to 40 req/s; at 40 a measured 40.3 (seen on a loaded machine) wanted 3.
        with Load(server.http_port, f"/v2/models/{MODEL}/infer", body("x", 128), rate=30.0):
            for _ in range(6):
                await autoscaler.step(KEY)
                if autoscaler.views[KEY].desired == 2:
                    break
                await asyncio.sleep(1)
        view = autoscaler.views[KEY]
        assert (view.desired, view.current) == (2, 2), view
        assert deployment_replicas(cluster) == 2
        assert KEY in woken
        up = events(cluster, "ScaledUp")
        assert len(up) == 1 and up[0]["message"].startswith("1 -> 2 replicas: scale up 1->2"), up

        await refresh()
        await reconciler.reconcile(KEY)
        await refresh()
        written = store.msvc(KEY)
        scaled = written["status"]["autoscaling"]
        assert scaled["engine"] == "builtin" and scaled["desiredReplicas"] == 2
        assert scaled["observedRequestsPerSecond"] == pytest.approx(30, rel=0.3)
        assert scaled["lastScaleTime"].endswith("Z")
        assert written["status"]["latency"]["percentile"] == "p95"
        assert written["status"]["latency"]["targetMilliseconds"] == 100
        limited = next(c for c in written["status"]["conditions"] if c["type"] == "ScalingLimited")
        assert (limited["status"], limited["reason"]) == ("False", "WithinLimits")
        assert written["metadata"]["generation"] == 1  # the user's spec was never written
        assert written["spec"]["replicas"] == 1  # the CRD's default, not the autoscaler's 2

        calls = dict(kube.calls)
        await reconciler.reconcile(KEY)
        assert kube.calls == calls, "a reconcile with nothing new must make no API call"

        # The load stops: after the 4 s window (plus a tick for the rate to fall to 0) it scales down.
        deadline = time.time() + 20
        while time.time() < deadline and autoscaler.views[KEY].current != 1:
            await autoscaler.step(KEY)
            await asyncio.sleep(1)
        assert autoscaler.views[KEY].current == 1, autoscaler.views[KEY]
        assert deployment_replicas(cluster) == 1
        down = events(cluster, "ScaledDown")
        assert len(down) == 1 and "after the 4 s window" in down[0]["message"], down

    asyncio.run(scenario())
