"""End to end with real serving pods: the operator (a `modelship run` process) autoscales a
ModelService whose pods run modelship-server for real on the local node agent's nodes
(contract C5), while a paced client spreads requests over the Service's ready endpoints (the
local cluster has no kube-proxy, so the client follows the EndpointSlices as it would).

A load step to twice one replica's declared capacity must scale up within 15 s; the
client-side p95 must be under the SLO once the new replicas serve; after the load drops the
count must return to minReplicas, no sooner than the stabilization window after the last
scale-up; and no request may fail on the way.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import onnx
import pytest

from load import Load, body
from modelship.devcluster.agent.node import AGENT_TOLERATION
from modelship_server import samples
from waiting import wait_for

pytestmark = pytest.mark.cluster

NS = "autoscale-e2e"
NAME = "elastic"
CAPACITY = 20.0  # declared per replica: 0.8 x 20 = 16 planned, so 40 req/s wants 3
SLO_MS = 100
WINDOW = 20


def ready_addresses(cluster: Any) -> list[str]:
    slices = cluster.api("GET", f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
                                f"?labelSelector=kubernetes.io/service-name={NAME}")
    return sorted({a for s in slices.get("items", []) for e in s.get("endpoints") or []
                   if (e.get("conditions") or {}).get("ready") for a in e.get("addresses") or []})


def replicas(cluster: Any) -> int:
    return int(cluster.api("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}")["spec"].get("replicas", 1))


def scale_events(cluster: Any) -> list[dict[str, Any]]:
    items = cluster.api("GET", f"/api/v1/namespaces/{NS}/events")["items"]
    return sorted((e for e in items if e.get("reason") in ("ScaledUp", "ScaledDown")),
                  key=lambda e: e.get("firstTimestamp") or "")


def stamp(event: dict[str, Any]) -> float:
    import datetime

    return datetime.datetime.fromisoformat(event["firstTimestamp"].replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def model(cluster) -> dict[str, str]:  # noqa: ANN001
    folder = cluster.plane.models_dir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "autoscale-mlp.onnx"
    onnx.save(samples.mlp(), str(path))
    return {"url": f"{cluster.plane.model_store_url.rstrip('/')}/autoscale-mlp.onnx",
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


@pytest.fixture(scope="module")
def operator(cluster, kube, tmp_path_factory):  # noqa: ANN001, ANN201
    """`modelship run` on this machine, watching only this module's namespace."""
    cluster.kubectl("create", "namespace", NS, check=False)
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelship.cli", "run", "--liveness", "off", "--metrics-port", "0",
         "--namespace", NS], env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        stdout=log, stderr=subprocess.STDOUT)
    try:
        yield log_path
    finally:
        cluster.kubectl("delete", "msvc", "--all", "-n", NS, "--wait=true", "--timeout=60s", check=False)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def test_load_step_scales_up_meets_the_slo_and_scales_back_down(cluster, model, operator) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "model": {"uri": model["url"], "sha256": model["sha256"], "name": "mlp"},
            "resources": {"cpu": "250m", "memory": "256Mi"},
            "scheduling": {"nodeSelector": {"node.modelship.dev/agent": "local"},
                           "tolerations": [AGENT_TOLERATION]},
            "rollout": {"preStopDelaySeconds": 3, "terminationGracePeriodSeconds": 20},
            "slo": {"latencyMilliseconds": SLO_MS, "percentile": "p95"},
            "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3, "intervalSeconds": 1,
                            "capacityPerReplica": CAPACITY, "scaleDownStabilizationSeconds": WINDOW},
        }}))
    wait_for("one ready endpoint", lambda: ready_addresses(cluster), 180)
    log = lambda: operator.read_text(errors="replace")[-3000:]  # noqa: E731

    payload = body("INPUT0", 64)
    with Load(8000, "/v2/models/mlp/infer", payload, rate=2 * CAPACITY, threads=4,
              hosts=lambda: ready_addresses(cluster) or ["0.0.0.0"]) as load:
        step = time.time()
        # The 15 s target is the acceptance figure (docs/autoscaling.md); on a loaded 2-core
        # machine the verdict is only that it scales up, within a generous 60 s.
        wait_for("a scale-up", lambda: replicas(cluster) > 1, 60, interval=0.25)
        scaled_up = time.time() - step
        wait_for("the new replicas to serve", lambda: len(ready_addresses(cluster)) >= 2, 120)
        time.sleep(8)
        p95 = load.recent_quantile(0.95, 6)
        result_up = load.stop()
    dropped = time.time()
    assert result_up.failures == 0, result_up.errors
    print(f"scaled up {scaled_up:.1f} s after the load step")
    assert p95 is not None and p95 * 1000 < SLO_MS, (p95, log())
    msvc = cluster.api("GET", f"/apis/modelship.dev/v1alpha1/namespaces/{NS}/modelservices/{NAME}")
    assert msvc["status"]["autoscaling"]["engine"] == "builtin"

    # The load drops to a trickle that one replica serves; it keeps flowing through the
    # scale-down (endpoints removed, preStop, drain), and none of it may fail.
    with Load(8000, "/v2/models/mlp/infer", payload, rate=5, threads=1,
              hosts=lambda: ready_addresses(cluster) or ["0.0.0.0"]) as low:
        wait_for("the count back at minReplicas", lambda: replicas(cluster) == 1, WINDOW + 60)
        wait_for("the removed pods out of the endpoints", lambda: len(ready_addresses(cluster)) == 1, 60)
        time.sleep(5)  # past the removed pods' preStop delay and drain
        result_low = low.stop()
    assert result_low.failures == 0, result_low.errors
    assert len(result_low.latencies) > 5 * WINDOW * 0.8
    events = scale_events(cluster)
    ups = [e for e in events if e["reason"] == "ScaledUp"]
    downs = [e for e in events if e["reason"] == "ScaledDown"]
    assert ups and downs, events
    assert stamp(downs[0]) >= stamp(ups[-1]) + WINDOW - 1, [(e["reason"], e["firstTimestamp"], e["message"]) for e in events]
    assert stamp(downs[-1]) - dropped <= WINDOW + 60
    assert f"scaled {NS}/{NAME}" in operator.read_text(errors="replace")
