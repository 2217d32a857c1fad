"""The operator's own metrics: names and values after a decision, and a real `modelship run`
serving them on --metrics-port while it reconciles."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelship.autoscale.decision import PodSignals, Policy, Snapshot, State, decide
from modelship.controller.metrics import OperatorMetrics

NAMES = {
    "modelship_operator_reconcile_duration_seconds", "modelship_operator_reconcile_errors",
    "modelship_operator_scaling_decisions", "modelship_operator_observed_latency_seconds",
    "modelship_operator_slo_latency_seconds", "modelship_operator_observed_requests_per_second",
    "modelship_operator_desired_replicas", "modelship_operator_max_replicas",
    "modelship_operator_capacity_per_replica",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_decision_metrics_are_served_with_their_labels() -> None:
    metrics = OperatorMetrics()
    port = free_port()
    server = metrics.serve(port, addr="127.0.0.1")
    try:
        policy = Policy(slo_seconds=0.05, percentile="p95", capacity_per_replica=100, min_replicas=1, max_replicas=6)
        pods = tuple(PodSignals(f"p{i}", True, 0.0, 99.0, requests_per_second=150) for i in range(2))
        decision = decide(Snapshot(pods, {"p95": 0.03}, 500), policy, current=2, state=State(), now=100.0)
        metrics.observe_decision(("ns", "svc"), decision, policy)
        metrics.reconcile_duration.observe(0.004)
        families = scrape(port)
        assert set(families) >= NAMES, NAMES - set(families)
        decisions = [s for s in families["modelship_operator_scaling_decisions"] if s.name.endswith("_total")]
        assert [(s.labels["direction"], s.labels["reason"], s.value) for s in decisions] == [("up", "load", 1.0)]
        latency = families["modelship_operator_observed_latency_seconds"][0]
        assert latency.labels == {"namespace": "ns", "modelservice": "svc", "percentile": "p95"}
        assert latency.value == pytest.approx(0.03)
        assert families["modelship_operator_desired_replicas"][0].value == 4  # 300 / 80 -> 4
        metrics.forget(("ns", "svc"))
        assert not scrape(port)["modelship_operator_desired_replicas"]  # a deleted service leaves no series
    finally:
        server[0].shutdown()


def test_a_taken_port_costs_the_metrics_not_the_operator(caplog) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert OperatorMetrics().serve(busy.getsockname()[1], addr="127.0.0.1") is None
    assert "cannot serve metrics" in caplog.text and "--metrics-port" in caplog.text


@pytest.mark.cluster
def test_modelship_run_serves_reconcile_metrics(cluster, kube, tmp_path) -> None:
    namespace = "autoscale-metrics"
    cluster.kubectl("create", "namespace", namespace, check=False)
    port = free_port()
    log = open(tmp_path / "operator.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelship.cli", "run", "--liveness", "off", "--metrics-port", str(port),
         "--namespace", namespace], env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        stdout=log, stderr=subprocess.STDOUT)
    try:
        cluster.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService",
            "metadata": {"name": "counted", "namespace": namespace},
            "spec": {"model": {"uri": "https://models.example/m.onnx", "sha256": "ef" * 32},
                     "resources": {"cpu": "100m", "memory": "128Mi"}}}))
        deadline = time.time() + 60
        count = 0.0
        while time.time() < deadline:
            try:
                families = scrape(port)
                count = next(s.value for s in families["modelship_operator_reconcile_duration_seconds"]
                             if s.name.endswith("_count"))
                if count >= 1:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "operator.log").read_text()
            time.sleep(0.5)
        assert count >= 1, (tmp_path / "operator.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
