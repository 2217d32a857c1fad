"""spec.tracing on the local cluster, for real: the operator renders it, the agent runs the pod,
and the real modelship-server in it sends the spans of a tritonclient request to a real OTLP
receiver (tests/server/otlp_receiver.py) on this machine's loopback.

The agent's pods are local processes, so the receiver on 127.0.0.1 is reachable from the pod as
a collector sidecar would be. What this proves beyond the unit tests: the flags and the
environment the operator renders start the server with tracing on, the downward API's pod name
reaches the spans' resource, and the caller's trace context survives the whole path.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from kube_helpers import OperatorProcess, apply, condition, get, wait_for
from modelship.devcluster.agent.node import AGENT_TOLERATION
from modelship_server import samples
from server.otlp_receiver import GrpcReceiver

pytestmark = pytest.mark.cluster

AGENT_NODES = {"node.modelship.dev/agent": "local"}


def test_a_traced_modelservice_sends_its_spans_to_the_collector(cluster: Any, operator: OperatorProcess,
                                                                namespace: str) -> None:
    import onnx

    path = cluster.plane.models_dir / namespace / "traced.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(samples.mlp(), str(path))
    uri = cluster.plane.model_store_url + f"{namespace}/traced.onnx"
    receiver = GrpcReceiver()
    try:
        manifest = {
            "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": "traced"},
            "spec": {
                "model": {"uri": uri, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "name": "mlp"},
                "replicas": 1,
                "resources": {"cpu": "250m", "memory": "1Gi"},
                "scheduling": {"nodeSelector": AGENT_NODES, "tolerations": [AGENT_TOLERATION]},
                "rollout": {"preStopDelaySeconds": 1, "terminationGracePeriodSeconds": 10},
                "tracing": {"enabled": True, "endpoint": receiver.endpoint, "samplingRatio": 0},
            },
        }
        apply(cluster, manifest, namespace)
        wait_for(lambda: (c := condition(get(cluster, "msvc", "-n", namespace, "traced"), "Ready")) is not None
                 and c["status"] == "True", timeout=240, what="the traced ModelService Ready")
        pod = get(cluster, "pods", "-n", namespace, "-l", "modelship.dev/modelservice=traced")["items"][0]
        trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
        client = grpcclient.InferenceServerClient(f"{pod['status']['podIP']}:8001")
        try:
            x = np.ones((1, 64), np.float32)
            inp = grpcclient.InferInput("INPUT0", [1, 64], "FP32")
            inp.set_data_from_numpy(x)
            client.infer("mlp", [inp], headers={"traceparent": f"00-{trace_id}-{caller}-01"})
            client.infer("mlp", [inp])  # ratio 0: a root request is not traced
        finally:
            client.close()

        def spans():
            got = {s.name: s for s in receiver.spans(trace_id)}
            return got if {"decode", "queue", "compute", "encode", "batch"} <= set(got) else None

        got = wait_for(spans, timeout=60, what=f"the request's spans in trace {trace_id}")
        root = got["inference.GRPCInferenceService/ModelInfer"]
        assert root.parent_span_id == caller
        assert root.resource["service.name"] == "traced"
        assert root.resource["k8s.namespace.name"] == namespace
        assert root.resource["k8s.pod.name"] == pod["metadata"]["name"], "the downward API's pod name, expanded"
        assert {s.trace_id for s in receiver.spans()} == {trace_id}, "the untraced request sent nothing"
    finally:
        receiver.stop()
