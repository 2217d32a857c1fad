"""Ready means it answers, and batching follows the model, on the local cluster for real.

The operator runs as a process (tests/operator/conftest.py); the ModelServices select the
cluster's agent nodes, so their pods run the real init steps (`fetch-model`, `fit-config`) and
the real `modelship-server` as local processes, fetching from the cluster's model store. What
reaches the status is what the kubelet-like agent recorded from those processes: termination
messages and exit codes, not values written by the test.
"""

from __future__ import annotations

import hashlib
import shutil
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

import corpus
from kube_helpers import OperatorProcess, apply, condition, get, wait_for
from modelship.devcluster.agent.node import AGENT_TOLERATION
from modelship_server import samples

pytestmark = pytest.mark.cluster

AGENT_NODES = {"node.modelship.dev/agent": "local"}


def _publish(cluster: Any, namespace: str, filename: str, write) -> tuple[str, str]:  # noqa: ANN001
    """Put a model file on the cluster's model store; its URI and sha256."""
    path = cluster.plane.models_dir / namespace / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path)
    return cluster.plane.model_store_url + f"{namespace}/{filename}", hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(name: str, uri: str, sha256: str, model: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": name},
        "spec": {
            "model": {"uri": uri, "sha256": sha256, "name": model},
            "replicas": 1,
            "resources": {"cpu": "250m", "memory": "1Gi"},
            "scheduling": {"nodeSelector": AGENT_NODES, "tolerations": [AGENT_TOLERATION]},
            "rollout": {"preStopDelaySeconds": 1, "terminationGracePeriodSeconds": 10},
            **spec,
        },
    }


def _ready_with(cluster: Any, namespace: str, name: str, status: str, reason: str) -> dict[str, Any] | None:
    msvc = get(cluster, "msvc", "-n", namespace, name)
    ready = condition(msvc, "Ready")
    return msvc if ready and (ready["status"], ready["reason"]) == (status, reason) else None


def test_a_model_that_cannot_answer_its_warm_up_is_ready_false_with_the_reason(
        cluster: Any, operator: OperatorProcess, namespace: str) -> None:
    uri, sha = _publish(cluster, namespace, "broken.onnx", lambda p: onnx.save(samples.never_answers(), str(p)))
    apply(cluster, _manifest("broken", uri, sha, "broken"), namespace)
    msvc = wait_for(lambda: _ready_with(cluster, namespace, "broken", "False", "WarmupFailed"), timeout=180,
                    what="Ready=False/WarmupFailed")
    message = condition(msvc, "Ready")["message"]
    assert "the server could not load the model" in message
    assert "warm-up inference failed on generated inputs (x [1, 4]" in message
    assert "indices element out of data bounds" in message
    assert condition(msvc, "Degraded")["reason"] == "WarmupFailed"
    pods = get(cluster, "pods", "-n", namespace, "-l", "modelship.dev/modelservice=broken")["items"]
    assert pods and all(not c.get("ready") for p in pods for c in p["status"].get("containerStatuses") or [])


def _det(path) -> None:  # noqa: ANN001
    shutil.copyfile(corpus.MODELS["ddddocr-det"].path(), path)


def test_a_model_that_cannot_batch_serves_with_batching_off_and_the_status_says_why(
        cluster: Any, operator: OperatorProcess, namespace: str) -> None:
    """ddddocr's detector (from its PyPI wheel) takes a fixed batch of 1: the spec's default
    batching (max_batch_size 8) is turned off in the pod, and the model serves."""
    uri, sha = _publish(cluster, namespace, "det.onnx", _det)
    apply(cluster, _manifest("det", uri, sha, "det"), namespace)
    msvc = wait_for(lambda: _ready_with(cluster, namespace, "det", "True", "Available"), timeout=180,
                    what="Ready=True")
    msvc = wait_for(lambda: (m := get(cluster, "msvc", "-n", namespace, "det"))["status"].get("batching") and m,
                    timeout=60, what="status.batching")
    batching = msvc["status"]["batching"]
    assert batching["maxBatchSize"] == 0 and batching["reason"] == "ModelNotBatchable"
    assert batching["message"].startswith("input 'images' has dims [1, 3, 416, 416]: its first dimension is fixed "
                                          "at 1, not a variable batch dimension; max_batch_size 8 -> 0")
    configmap = get(cluster, "configmap", "-n", namespace, "det-model-config")
    assert "max_batch_size: 8" in configmap["data"]["config.pbtxt"], "the render does not know the model"

    pod = get(cluster, "pods", "-n", namespace, "-l", "modelship.dev/modelservice=det")["items"][0]
    client = httpclient.InferenceServerClient(f"{pod['status']['podIP']}:8000")
    try:
        served = client.get_model_config("det")
        assert served.get("max_batch_size", 0) == 0 and "dynamic_batching" not in served
        feeds = corpus.MODELS["ddddocr-det"].sample(batch=1, seed=2)
        tensor = httpclient.InferInput("images", list(feeds["images"].shape), "FP32")
        tensor.set_data_from_numpy(feeds["images"])
        got = client.infer("det", [tensor])
    finally:
        client.close()
    session = ort.InferenceSession(str(corpus.MODELS["ddddocr-det"].path()), providers=["CPUExecutionProvider"])
    want = session.run(None, feeds)[0]
    np.testing.assert_allclose(got.as_numpy(session.get_outputs()[0].name), want, rtol=1e-4, atol=1e-4)


def test_batching_set_explicitly_against_the_model_is_refused_with_the_reason(
        cluster: Any, operator: OperatorProcess, namespace: str) -> None:
    uri, sha = _publish(cluster, namespace, "det.onnx", _det)
    apply(cluster, _manifest("det-batched", uri, sha, "det", batching={"maxBatchSize": 4}), namespace)
    msvc = wait_for(lambda: _ready_with(cluster, namespace, "det-batched", "False", "BatchingNotSupported"),
                    timeout=180, what="Ready=False/BatchingNotSupported")
    message = condition(msvc, "Ready")["message"]
    assert "spec.batching asks the server to batch up to 4 requests, but the model cannot batch: input 'images' " \
           "has dims [1, 3, 416, 416]" in message
    assert "Set spec.batching.enabled: false" in message
    assert not msvc["status"].get("batching"), "refused, not turned off"
