"""The monitoring loop against the real API server: scrape, decide, and the conditions, status
and Events the reconciler writes from it.

The serving pod runs on kwok's fake nodes (no process behind it), so the operator's cache entry
of that pod has its IP pointed at 127.0.0.1, where a real prometheus_client HTTP server exports
the monitoring series of the contract (contracts.py, "monitoring"). That exporter stands in for
modelship-server's monitoring half (built on another branch; tests/e2e/test_monitoring_journey.py
runs the real one on the local cluster): here the test sets the values, so each decision the
operator makes (drift, quality, capture drops, no write while scores wobble) is checked on
purpose. Everything after the scrape is the real path: the parse, the decision, the reconciler's
status patch and its Events.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from modelship import contracts
from modelship.autoscale.monitoring import Monitor
from modelship.controller.reconcile import Reconciler
from modelship.controller.main import prime
from modelship.kube.cache import Store
from modelship.kube.client import KubeClient

pytestmark = pytest.mark.cluster

NS = "monitoring-loop"
NAME = "watched"
MODEL = "churn"
KEY = (NS, NAME)


async def wait_for_ready_pod(kube: KubeClient, store: Store, timeout: float = 120) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        await prime(kube, store, [NS])
        for pod in store.pods(KEY):
            if any(cond.get("type") == "Ready" and cond.get("status") == "True"
                   for cond in (pod.get("status") or {}).get("conditions") or []):
                return pod
        await asyncio.sleep(1)
    raise AssertionError(f"no ready pod of {NS}/{NAME} in {timeout} s: {store.pods(KEY)}")


class Exporter:
    """The contract's monitoring series on a real HTTP metrics endpoint, values set by the test."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.score = Gauge(contracts.DRIFT_SCORE_METRIC, "drift", ["model", "tensor", "test"], registry=r)
        self.window = Gauge(contracts.DRIFT_WINDOW_METRIC, "window", ["model", "tensor"], registry=r)
        self.reference = Gauge(contracts.DRIFT_REFERENCE_METRIC, "reference", ["model"], registry=r)
        self.quality = Gauge(contracts.QUALITY_METRIC, "quality", ["model", "metric"], registry=r)
        self.labels = Gauge(contracts.QUALITY_LABELS_METRIC, "labels", ["model"], registry=r)
        self.capture = Counter(contracts.CAPTURE_METRIC, "capture", ["model", "outcome"], registry=r)
        self.reference.labels(model=MODEL).set(0)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server, self.thread = start_http_server(self.port, addr="127.0.0.1", registry=r)

    def drift(self, tensor: str, psi: float, ks: float, window: float = 100) -> None:
        self.score.labels(model=MODEL, tensor=tensor, test="psi").set(psi)
        self.score.labels(model=MODEL, tensor=tensor, test="ks").set(ks)
        self.window.labels(model=MODEL, tensor=tensor).set(window)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def modelservice() -> dict[str, Any]:
    return {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "model": {"uri": "https://models.example/churn.onnx", "sha256": "ab" * 32, "name": MODEL},
            "resources": {"cpu": "100m", "memory": "128Mi"},
            "monitoring": {"enabled": True, "window": 100, "reference": {"firstRequests": 200},
                           "quality": {"metric": "accuracy", "minimum": 0.8, "minLabels": 50},
                           "capture": {"sink": "emptyDir"}},
        },
    }


def events(cluster: Any) -> list[tuple[str, str, str]]:
    out = cluster.kubectl("-n", NS, "get", "events", "-o", "json").stdout
    return [(e["type"], e["reason"], e["message"]) for e in json.loads(out)["items"]]


def condition(store: Store, kind: str) -> dict[str, Any]:
    return next(c for c in store.msvc(KEY)["status"]["conditions"] if c["type"] == kind)


def test_monitoring_loop_turns_the_conditions_through_the_reconciler(cluster, kube) -> None:
    cluster.kubectl("create", "namespace", NS, check=False)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(modelservice()))
    exporter = Exporter()

    async def scenario() -> None:
        store = Store()
        await prime(kube, store, [NS])
        woken: list[Any] = []
        monitor = Monitor(store=store, wake=woken.append, scrape_port=exporter.port)
        reconciler = Reconciler(kube=kube, store=store, extra_status=lambda k, m, u: monitor.status_for(k, m))
        try:
            await steps(store, monitor, reconciler)
        finally:
            await monitor.stop()

    async def steps(store: Store, monitor: Monitor, reconciler: Reconciler) -> None:
        await reconciler.reconcile(KEY)  # the Deployment (with the monitoring flags) and the first status
        await prime(kube, store, [NS])
        assert condition(store, "DataDrift")["reason"] == "NotMeasured"
        pod = await wait_for_ready_pod(kube, store)
        served = {**pod, "status": {**pod["status"], "podIP": "127.0.0.1"}}

        async def tick() -> None:
            await prime(kube, store, [NS])
            for other in store.pods(KEY):
                store.remove("Pod", other)
            store.upsert("Pod", served)
            await monitor.step(KEY)
            await reconciler.reconcile(KEY)
            await prime(kube, store, [NS])
            for other in store.pods(KEY):
                store.remove("Pod", other)
            store.upsert("Pod", served)

        deployment = json.loads(cluster.kubectl("-n", NS, "get", "deployment", NAME, "-o", "json").stdout)
        command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
        assert "--monitoring" in command and "--monitoring-reference-size" in command, command

        await tick()
        drift = condition(store, "DataDrift")
        assert (drift["status"], drift["reason"]) == ("Unknown", "ReferenceNotReady"), drift

        exporter.reference.labels(model=MODEL).set(200)
        for tensor in ("age", "income", "tenure"):
            exporter.drift(tensor, psi=0.03, ks=0.05)
        await tick()
        drift = condition(store, "DataDrift")
        assert (drift["status"], drift["reason"]) == ("False", "NoDrift"), drift
        status = store.msvc(KEY)["status"]["monitoring"]
        assert status["referenceReadyPods"] == "1/1" and len(status["drift"]) == 3, status

        # scores wobbling under steady traffic: no status write, no API call at all
        exporter.drift("age", psi=0.05, ks=0.06)
        calls = dict(kube.calls)
        await monitor.step(KEY)
        await reconciler.reconcile(KEY)
        assert kube.calls == calls, "a wobble of the scores must not write"

        exporter.drift("income", psi=0.9, ks=0.4)
        await tick()
        drift = condition(store, "DataDrift")
        assert (drift["status"], drift["reason"]) == ("True", "DriftDetected"), drift
        assert "income" in drift["message"] and "age" not in drift["message"], drift
        top = store.msvc(KEY)["status"]["monitoring"]["drift"][0]
        assert top["tensor"] == "income" and top["drifted"] and top["psi"] == 0.9 and top["pValue"] < 1e-6, top
        assert any(t == "Warning" and r == "DriftDetected" and "income" in msg for t, r, msg in events(cluster))

        exporter.quality.labels(model=MODEL, metric="accuracy").set(0.3)
        exporter.labels.labels(model=MODEL).set(60)
        await tick()
        quality = condition(store, "QualityDegraded")
        assert (quality["status"], quality["reason"]) == ("True", "BelowMinimum"), quality
        assert store.msvc(KEY)["status"]["monitoring"]["quality"] == {"metric": "accuracy", "value": 0.3, "labels": 50}
        exporter.quality.labels(model=MODEL, metric="accuracy").set(0.95)
        await tick()
        quality = condition(store, "QualityDegraded")
        assert (quality["status"], quality["reason"]) == ("False", "WithinBound"), quality

        exporter.capture.labels(model=MODEL, outcome="written").inc(10)
        await tick()
        assert condition(store, "CaptureDropping")["reason"] == "Writing"
        exporter.capture.labels(model=MODEL, outcome="dropped").inc(3)
        await tick()
        capture = condition(store, "CaptureDropping")
        assert (capture["status"], capture["reason"]) == ("True", "RecordsDropped"), capture
        exporter.capture.labels(model=MODEL, outcome="written").inc(10)
        await tick()
        assert condition(store, "CaptureDropping")["status"] == "False"
        assert store.msvc(KEY)["status"]["monitoring"]["capture"] == {"sink": "emptyDir", "written": 20, "dropped": 2}

    try:
        asyncio.run(scenario())
    finally:
        exporter.close()
        cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)
