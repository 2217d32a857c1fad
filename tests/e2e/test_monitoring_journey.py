"""Monitoring on the local cluster, for real: the operator from its chart, a serving pod running
modelship-server with spec.monitoring, and the conditions the operator derives from the pod's
metrics (issue 15's acceptance).

One ModelService, a three-input classifier (`age`, `income`, `tenure`, [batch, 2] each ->
`scores` [batch, 3]) with the reference frozen from each pod's first requests. In order:
- a stationary stream (the reference's distribution) leaves DataDrift False;
- `income` shifted by 3 sigma turns DataDrift True, naming `income` (and not the others);
- labels that disagree with the predictions turn QualityDegraded True (accuracy below 0.8),
  and labels that agree turn it back to False.
And a second one with spec.optimization.dataset: its pods profile the dataset in the
build-reference init step, so the reference is ready before any request, and a shifted `tenure`
turns DataDrift True against it.

It needs the server half of monitoring (modelship_server.monitoring: the flags, the drift and
quality series, POST /v2/models/{m}/feedback); without it the module skips, naming what is
missing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import urllib.request
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from chart_install import AGENT_NODES, AGENT_TOLERATIONS, operator_from_chart
from traffic import ready_addresses
from waiting import wait_for

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(importlib.util.find_spec("modelship_server.monitoring") is None,
                       reason="needs the server half of monitoring (modelship_server.monitoring, branch mons)"),
]

NAMESPACE = "monitoring-e2e"
OPERATOR_NAMESPACE = "modelship-monitoring-e2e"
NAME = "churn"
MODEL = "churn"
INPUTS = ("age", "income", "tenure")
# Windows of 500 against a reference of 1000: PSI's sampling noise on a stationary stream stays far
# below the 0.2 threshold (with windows of 100, stationary features reached PSI 0.4 here).
WINDOW = 500
REFERENCE = 1000


def classifier() -> onnx.ModelProto:
    """Three [batch, 2] float inputs, concatenated, times a fixed [6, 3] matrix: class scores."""
    rng = np.random.default_rng(11)
    weights = numpy_helper.from_array(rng.standard_normal((6, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Concat", list(INPUTS), ["x"], axis=1), helper.make_node("MatMul", ["x", "w"], ["scores"])],
        "churn",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 2]) for n in INPUTS],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])],
        initializer=[weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def msvc_path(name: str) -> str:
    return f"/apis/modelship.dev/v1alpha1/namespaces/{NAMESPACE}/modelservices/{name}"


def condition(msvc: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in (msvc.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)


@pytest.fixture(scope="module")
def operator(cluster):  # noqa: ANN001, ANN201
    with operator_from_chart(cluster, release="modelship-monitoring", namespace=NAMESPACE,
                             operator_namespace=OPERATOR_NAMESPACE, delete_timeout="90s"):
        yield


def publish(cluster, filename: str, data: bytes) -> tuple[str, str]:  # noqa: ANN001
    """A file on the cluster's model store: (its URL, its sha256)."""
    folder = cluster.plane.state_dir / "models"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / filename).write_bytes(data)
    store = cluster.plane.read_state()["model_store_url"].rstrip("/")
    return f"{store}/{filename}", hashlib.sha256(data).hexdigest()


def deploy(cluster, name: str, **spec: Any) -> str:  # noqa: ANN001
    """Apply the classifier as ModelService `name` with `spec` added; its pod's address once Ready."""
    uri, sha256 = publish(cluster, "monitoring-churn.onnx", classifier().SerializeToString())
    manifest = {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"uri": uri, "sha256": sha256, "name": MODEL},
            "replicas": 1, "resources": {"cpu": "500m", "memory": "1Gi"},
            "batching": {"enabled": False},
            "scheduling": {"nodeSelector": AGENT_NODES, "tolerations": AGENT_TOLERATIONS},
            "rollout": {"preStopDelaySeconds": 1, "terminationGracePeriodSeconds": 10},
            **spec,
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def ready() -> dict[str, Any] | None:
        msvc = cluster.api("GET", msvc_path(name))
        ready_ = condition(msvc, "Ready")
        return msvc if ready_ and ready_["status"] == "True" else None

    wait_for(f"{name} to be Ready", ready, timeout=600, interval=2)
    [pod] = ready_addresses(cluster.api, NAMESPACE, name)
    return pod


@pytest.fixture(scope="module")
def address(cluster, operator) -> str:  # noqa: ANN001
    """The serving pod of a ModelService whose reference is each pod's first requests."""
    return deploy(cluster, NAME, monitoring={
        "enabled": True, "window": WINDOW, "reference": {"firstRequests": REFERENCE},
        "drift": {"top": 12},  # income[0..1] and the outputs it moves (scores[i], scores.class)
        "quality": {"metric": "accuracy", "minimum": 0.8, "minLabels": 50}})


def _post(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - a pod on loopback's cluster
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def send(address: str, rng: np.random.Generator, count: int, *, shift: dict[str, float] | None = None,
         tag: str = "r") -> dict[str, int]:
    """`count` single-row requests with ids `{tag}-{i}`; returns id -> predicted class."""
    predicted = {}
    for i in range(count):
        rid = f"{tag}-{i}"
        inputs = []
        for name in INPUTS:
            row = rng.standard_normal(2) + (shift or {}).get(name, 0.0)
            inputs.append({"name": name, "shape": [1, 2], "datatype": "FP32", "data": row.tolist()})
        status, answer = _post(f"http://{address}:8000/v2/models/{MODEL}/infer", {"id": rid, "inputs": inputs})
        assert status == 200, answer
        assert answer.get("id") == rid, answer
        [scores] = [o for o in answer["outputs"] if o["name"] == "scores"]
        predicted[rid] = int(np.argmax(scores["data"]))
    return predicted


def feedback(address: str, predicted: dict[str, int], *, correct: bool) -> None:
    """One POST with every label: the prediction's class, or the next one (always wrong)."""
    items = [{"id": rid, "label": cls if correct else (cls + 1) % 3} for rid, cls in predicted.items()]
    status, answer = _post(f"http://{address}:8000/v2/models/{MODEL}/feedback", items)
    assert status == 200 and answer.get("joined") == len(items), answer


def wait_condition(cluster, kind: str, status: str, timeout: float = 120, name: str = NAME,  # noqa: ANN001
                   reason: str | None = None) -> dict[str, Any]:
    seen: list[Any] = []

    def check() -> dict[str, Any] | None:
        msvc = cluster.api("GET", msvc_path(name))
        found = condition(msvc, kind)
        seen.append((found, (msvc.get("status") or {}).get("monitoring")))
        wanted = found and found["status"] == status and (reason is None or found["reason"] == reason)
        return {"condition": found, "msvc": msvc} if wanted else None

    try:
        return wait_for(f"{kind}={status}", check, timeout=timeout, interval=2)
    except AssertionError:
        raise AssertionError(f"{kind} never turned {status} {reason or ''}; last seen: {seen[-1] if seen else None}") from None


def test_a_stationary_stream_leaves_data_drift_false(cluster, address) -> None:  # noqa: ANN001
    rng = np.random.default_rng(1)
    send(address, rng, REFERENCE + 2 * WINDOW, tag="stationary")
    found = wait_condition(cluster, "DataDrift", "False")
    assert found["condition"]["reason"] == "NoDrift", found["condition"]
    monitoring = found["msvc"]["status"]["monitoring"]
    assert monitoring["referenceReadyPods"] == "1/1", monitoring
    assert monitoring["reference"] == f"first {REFERENCE} sampled requests of each pod", monitoring
    assert not any(entry["drifted"] for entry in monitoring["drift"]), monitoring


def test_a_shifted_input_turns_data_drift_true_naming_it(cluster, address) -> None:  # noqa: ANN001
    rng = np.random.default_rng(2)
    send(address, rng, 2 * WINDOW, shift={"income": 3.0}, tag="shifted")
    found = wait_condition(cluster, "DataDrift", "True")
    drift = found["condition"]
    assert drift["reason"] == "DriftDetected" and "income" in drift["message"], drift
    assert "age[" not in drift["message"] and "tenure[" not in drift["message"], drift
    listed = found["msvc"]["status"]["monitoring"]["drift"]
    assert any(e["tensor"].startswith("income") and e["drifted"] and e["psi"] >= 0.2 for e in listed), listed
    assert not any(e["tensor"].startswith(("age", "tenure")) and e["drifted"] for e in listed), listed
    events = cluster.api("GET", f"/api/v1/namespaces/{NAMESPACE}/events?fieldSelector=involvedObject.name={NAME}")
    assert any(e["reason"] == "DriftDetected" and e["type"] == "Warning" for e in events["items"]), \
        [(e["reason"], e["type"]) for e in events["items"]]


def test_bad_labels_turn_quality_degraded_true_and_good_labels_turn_it_back(cluster, address) -> None:  # noqa: ANN001
    rng = np.random.default_rng(3)
    wrong = send(address, rng, 100, tag="wrong")
    feedback(address, wrong, correct=False)
    found = wait_condition(cluster, "QualityDegraded", "True")
    assert found["condition"]["reason"] == "BelowMinimum", found["condition"]
    quality = found["msvc"]["status"]["monitoring"]["quality"]
    assert quality["metric"] == "accuracy" and quality["value"] < 0.8, quality

    right = send(address, rng, 2 * WINDOW, tag="right")
    feedback(address, right, correct=True)
    found = wait_condition(cluster, "QualityDegraded", "False")
    assert found["condition"]["reason"] == "WithinBound", found["condition"]
    assert found["msvc"]["status"]["monitoring"]["quality"]["value"] >= 0.8


def test_a_dataset_reference_is_profiled_in_the_pod_and_drift_measured_against_it(cluster, operator) -> None:  # noqa: ANN001
    """spec.optimization.dataset set: the pod's build-reference step profiles it (the default,
    reference.fromDataset), so the reference is ready before any request and a shifted
    `tenure` is measured against the dataset, not against the first requests."""
    rng = np.random.default_rng(7)
    buffer = io.BytesIO()
    np.savez(buffer, **{n: rng.standard_normal((2000, 2)).astype(np.float32) for n in INPUTS})
    uri, sha256 = publish(cluster, "monitoring-churn-reference.npz", buffer.getvalue())
    name = "churn-dataset"
    pod = deploy(cluster, name, optimization={"dataset": {"uri": uri, "sha256": sha256}},
                 monitoring={"enabled": True, "window": WINDOW, "drift": {"top": 12}})
    # the reference is there before any request: waiting for a window, not for a reference
    found = wait_condition(cluster, "DataDrift", "Unknown", name=name, reason="WindowNotFull")
    monitoring = found["msvc"]["status"]["monitoring"]
    assert monitoring["reference"] == f"dataset {uri}", monitoring
    assert monitoring["referenceReadyPods"] == "1/1", monitoring
    send(pod, np.random.default_rng(8), 2 * WINDOW, shift={"tenure": 3.0}, tag="dataset-shifted")
    drift = wait_condition(cluster, "DataDrift", "True", name=name)["condition"]
    assert "tenure[" in drift["message"] and "age[" not in drift["message"] and "income[" not in drift["message"], drift
