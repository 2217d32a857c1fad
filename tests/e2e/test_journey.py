"""The whole journey on the local cluster, for real: apply, optimize, roll out, serve, update, delete.

The operator runs as a pod of its Helm chart, the optimize Job runs `modelship optimize` and the
serving pods run `modelship-server`, all as local processes started by the cluster's node agent,
so every step below is the real code path, not kwok's fake pods. The tests in this module run in
order and share one ModelService, whose optimize Job calibrates and gates on a published .npz
(spec.optimization.dataset).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from modelship_server import samples
from chart_install import AGENT_NODES, AGENT_TOLERATIONS, operator_from_chart
from traffic import Traffic, processes_with_env, ready_addresses
from waiting import wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "e2e"
OPERATOR_NAMESPACE = "modelship-e2e"
NAME = "journey"
MSVC_PATH = f"/apis/modelship.dev/v1alpha1/namespaces/{NAMESPACE}/modelservices/{NAME}"


def condition(msvc: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in (msvc.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)


@pytest.fixture(scope="module")
def model(cluster) -> dict[str, Any]:  # noqa: ANN001
    """A generated MLP published on the cluster's model store."""
    folder = cluster.plane.state_dir / "models"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "journey-mlp.onnx"
    onnx.save(samples.mlp((128, 256, 256, 10)), str(path))
    store = cluster.plane.read_state()["model_store_url"].rstrip("/")
    return {"path": path, "url": f"{store}/journey-mlp.onnx",
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


@pytest.fixture(scope="module")
def dataset(cluster, model) -> dict[str, Any]:  # noqa: ANN001
    """Calibration and validation inputs for the MLP, an .npz published next to it: the journey's
    optimize Job runs on these instead of generated ones (spec.optimization.dataset). On the
    journey's own service, not a second one: another real optimize Job would add ~40 s."""
    path = model["path"].parent / "journey-mlp-inputs.npz"
    rng = np.random.default_rng(5)
    with open(path, "wb") as f:
        np.savez(f, INPUT0=rng.standard_normal((32, 128)).astype(np.float32))
    store = cluster.plane.read_state()["model_store_url"].rstrip("/")
    return {"path": path, "url": f"{store}/{path.name}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


@pytest.fixture(scope="module")
def operator_pod(cluster):  # noqa: ANN001, ANN201
    """The operator installed from its chart, watching only this module's namespace."""
    with operator_from_chart(cluster, release="modelship-e2e", namespace=NAMESPACE,
                             operator_namespace=OPERATOR_NAMESPACE, delete_timeout="60s"):
        yield


@pytest.fixture(scope="module")
def service(cluster, model, dataset, operator_pod) -> dict[str, Any]:  # noqa: ANN001
    manifest = {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "model": {"uri": model["url"], "sha256": model["sha256"], "name": "mlp"},
            "replicas": 1,
            "resources": {"cpu": "1", "memory": "1Gi"},
            "scheduling": {"nodeSelector": AGENT_NODES, "tolerations": AGENT_TOLERATIONS},
            "optimization": {"enabled": True, "dataset": {"uri": dataset["url"], "sha256": dataset["sha256"]}},
            "slo": {"latencyMilliseconds": 50, "percentile": "p95"},
            "rollout": {"preStopDelaySeconds": 2, "terminationGracePeriodSeconds": 15},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    started = time.monotonic()
    msvc = wait_for("the ModelService to be Ready", lambda: _ready(cluster), timeout=420, interval=1)
    return {"manifest": manifest, "ready_seconds": time.monotonic() - started, "first": msvc}


def _ready(cluster) -> dict[str, Any] | None:  # noqa: ANN001
    msvc = cluster.api("GET", MSVC_PATH)
    ready = condition(msvc, "Ready")
    generation = msvc["metadata"]["generation"]
    if ready and ready["status"] == "True" and (msvc.get("status") or {}).get("observedGeneration") == generation:
        return msvc
    return None


def _job_pod(cluster) -> tuple[dict[str, Any], dict[str, Any]]:  # noqa: ANN001
    """The optimize Job's finished pod, and its own word: the termination message."""
    pods = cluster.api("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=batch.kubernetes.io/job-name")
    for pod in pods.get("items", []):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated") or {}
            if cs["name"] == "optimize" and terminated.get("exitCode") == 0:
                return pod, json.loads(terminated["message"])
    raise AssertionError(f"no finished optimize pod in {NAMESPACE}: {json.dumps(pods)[:2000]}")


def test_optimized_and_serving(cluster, model, dataset, service, tmp_path):  # noqa: ANN001
    msvc = service["first"]
    job_pod, summary = _job_pod(cluster)
    # the Job fetched the published .npz (sha256 verified) and the optimizer ran on it: the full
    # report, left in the finished pod's model repository (an emptyDir: a folder of the node agent)
    volumes = cluster.plane.agent_dir / "pods" / job_pod["metadata"]["uid"] / "volumes"
    report = json.loads((volumes / "model-repository" / "mlp" / "optimized" / "report.json").read_text())
    assert report["input_source"] == "dataset /dataset/dataset.npz", report["input_source"]
    assert (volumes / "dataset" / "dataset.npz").read_bytes() == dataset["path"].read_bytes()
    fetched = {s["name"]: s for s in job_pod["status"]["initContainerStatuses"]}["fetch-dataset"]
    assert "sha256 verified" in fetched["state"]["terminated"]["message"]
    # the Job ran the real optimizer: every candidate was built, gated and timed
    assert summary["schema"] == "modelship.dev/optimize-report/v1"
    assert len(summary["candidates"]) >= 5 and summary["capacity"]["requests_per_second"] > 0
    status = msvc["status"]
    optimization = status["optimization"]
    assert optimization["outcome"] == summary["outcome"] and optimization["sha256"] == summary["sha256"]
    # what the gate judged on reaches status, so an SRE can tell real data from generated inputs
    assert optimization["inputs"] == summary["inputs"] == report["input_source"]
    assert optimization["gate"] == summary["gate"] == "cosine mean>=0.99 worst>=0.98"
    assert status["variant"] == summary["chosen"]
    optimized = condition(msvc, "Optimized")
    expected = {"optimized": ("True", "Succeeded"), "baseline": ("False", "NoFasterVariant"),
                "accuracy_gate_failed": ("False", "AccuracyGateFailed")}[summary["outcome"]]
    assert (optimized["status"], optimized["reason"]) == expected, optimized

    # serving pods fetch the dataset only when the chosen variant's rebuild reads it (calibrated)
    deployment = cluster.api("GET", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{NAME}")
    init = [c["name"] for c in deployment["spec"]["template"]["spec"]["initContainers"]]
    calibrated = "--dataset" in summary["apply_args"]
    assert ("fetch-dataset" in init) == calibrated, (init, summary["apply_args"])

    # what the pods serve is the chosen variant: rebuild it here from the recorded recipe
    served_file = model["path"]
    if summary["outcome"] == "optimized":
        out = tmp_path / "variant"
        original_copy = tmp_path / "original.onnx"
        original_copy.write_bytes(model["path"].read_bytes())
        apply_args = [str(dataset["path"]) if a == "/dataset/dataset.npz" else a for a in summary["apply_args"]]
        rebuilt = subprocess.run([sys.executable, "-m", "modelship.cli", "optimize", "--model", str(original_copy),
                                  "--output", str(out), *apply_args], capture_output=True, text=True,
                                 timeout=300)
        assert rebuilt.returncode == 0, rebuilt.stderr
        served_file = out / "model.onnx"
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 128)).astype(np.float32)
    variant = ort.InferenceSession(str(served_file), providers=["CPUExecutionProvider"]).run(None, {"INPUT0": x})[0]
    original = ort.InferenceSession(str(model["path"]), providers=["CPUExecutionProvider"]).run(None, {"INPUT0": x})[0]
    addresses = ready_addresses(cluster.api, NAMESPACE, NAME)
    assert len(addresses) == 1
    client = httpclient.InferenceServerClient(f"{addresses[0]}:8000")
    try:
        request = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        served = client.infer("mlp", [request]).as_numpy("OUTPUT0")
    finally:
        client.close()
    np.testing.assert_allclose(served, variant, rtol=1e-4, atol=1e-5)
    cosine = (served * original).sum(1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(original, axis=1))
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.98  # the default gate
    print(f"apply -> Ready in {service['ready_seconds']:.1f}s; chosen {summary['chosen']} "
          f"({summary['outcome']}, speedup {summary['speedup']}, calibrated on the dataset: {calibrated})")


def test_spec_change_rolls_out_under_load_without_failed_requests(cluster, service):  # noqa: ANN001
    before = set(ready_addresses(cluster.api, NAMESPACE, NAME))
    feed = {"INPUT0": np.ones((1, 128), np.float32)}
    with Traffic(cluster.api, NAMESPACE, NAME, "mlp", feed, clients=2) as traffic:
        time.sleep(2)
        cluster.kubectl("patch", "msvc", NAME, "-n", NAMESPACE, "--type=merge",
                        "-p", json.dumps({"spec": {"rollout": {"preStopDelaySeconds": 3}}}))
        wait_for("the new generation to be Ready", lambda: _ready(cluster), timeout=240, interval=1)
        after = wait_for("the old pod to leave the endpoints",
                         lambda: (a := set(ready_addresses(cluster.api, NAMESPACE, NAME))) and not (a & before) and a,
                         timeout=120)
        time.sleep(2)
    assert traffic.failed == 0, traffic.errors
    assert traffic.ok > 50 and before & traffic.seen and after & traffic.seen  # both generations served
    deployment = cluster.api("GET", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{NAME}")
    pre_stop = deployment["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]
    assert pre_stop["sleep"]["seconds"] == 3


def test_delete_stops_every_process_and_leaves_no_object(cluster, service):  # noqa: ANN001
    pods = cluster.api("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]
    addresses = {p["status"]["podIP"] for p in pods if (p.get("status") or {}).get("podIP")}
    assert addresses and processes_with_env("MODELSHIP_LISTEN_ADDRESS", addresses)
    cluster.kubectl("delete", "msvc", NAME, "-n", NAMESPACE, "--wait=true", "--timeout=60s")

    def nothing_left() -> bool:
        for path in (f"/api/v1/namespaces/{NAMESPACE}/pods", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments",
                     f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", f"/api/v1/namespaces/{NAMESPACE}/services",
                     f"/api/v1/namespaces/{NAMESPACE}/configmaps?labelSelector=app.kubernetes.io/managed-by=modelship",
                     f"/apis/policy/v1/namespaces/{NAMESPACE}/poddisruptionbudgets"):
            if cluster.api("GET", path).get("items"):
                return False
        return not processes_with_env("MODELSHIP_LISTEN_ADDRESS", addresses)

    wait_for("every object and process of the service to be gone", nothing_left, timeout=120, interval=1)


def _problem_service(cluster, name: str, model_entry: dict[str, Any], **spec: Any) -> None:  # noqa: ANN001
    manifest = {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"model": model_entry, "replicas": 1, "resources": {"cpu": "250m", "memory": "512Mi"},
                 "scheduling": {"nodeSelector": AGENT_NODES, "tolerations": AGENT_TOLERATIONS}, **spec},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def _not_ready_because(cluster, name: str, reason: str, timeout: float = 120) -> dict[str, Any]:  # noqa: ANN001
    def seen() -> dict[str, Any] | None:
        msvc = cluster.api("GET", f"/apis/modelship.dev/v1alpha1/namespaces/{NAMESPACE}/modelservices/{name}")
        ready = condition(msvc, "Ready")
        return ready if ready and ready["status"] == "False" and ready["reason"] == reason else None

    return wait_for(f"{name}: Ready=False with reason {reason}", seen, timeout=timeout)


@pytest.mark.parametrize("case", ["unknown-image", "missing-model", "secrets-in-the-uri", "corrupt-model"])
def test_bad_input_shows_in_the_conditions_the_way_a_kubelet_reports_it(cluster, model, operator_pod, case):  # noqa: ANN001
    """What the agent reports for real (a pull it cannot do, a fetch that fails, a server that
    exits at once) reaches the ModelService's Ready condition with a reason that names it."""
    name = f"bad-{case}"
    entry = {"uri": model["url"], "sha256": model["sha256"], "name": "mlp"}
    try:
        if case == "unknown-image":
            _problem_service(cluster, name, entry, images={"server": "registry.example/other-server:1"})
            ready = _not_ready_because(cluster, name, "ImagePullFailed")
            assert "registry.example/other-server:1" in ready["message"]
        elif case == "missing-model":
            _problem_service(cluster, name, {**entry, "uri": model["url"].replace("journey-mlp", "absent")})
            ready = _not_ready_because(cluster, name, "ModelNotFound")
            assert "absent.onnx" in ready["message"] or "404" in ready["message"], ready
        elif case == "secrets-in-the-uri":  # userinfo and a presigned query: named in status only redacted
            password, signature = "pw-e2e-secret", "sig-e2e-secret"
            uri = (model["url"].replace("http://", f"http://user:{password}@").replace("journey-mlp", "absent")
                   + f"?X-Amz-Signature={signature}")
            _problem_service(cluster, name, {**entry, "uri": uri})
            ready = _not_ready_because(cluster, name, "ModelNotFound")
            assert "http://REDACTED@" in ready["message"] and "absent.onnx?REDACTED" in ready["message"], ready
            msvc = cluster.api("GET", f"/apis/modelship.dev/v1alpha1/namespaces/{NAMESPACE}/modelservices/{name}")
            events_path = f"/api/v1/namespaces/{NAMESPACE}/events?fieldSelector=involvedObject.name={name}"
            events = wait_for("the ModelNotFound Event", lambda: (e := cluster.api("GET", events_path)) and any(
                i["reason"] == "ModelNotFound" for i in e["items"]) and e, timeout=30)
            pods = cluster.api("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=modelship.dev/modelservice={name}")
            logs = [path.read_text(errors="replace") for pod in pods["items"] for path in
                    (cluster.plane.agent_dir / "pods" / pod["metadata"]["uid"] / "containers" / "fetch-model").glob("*.log")]
            assert logs and any("REDACTED" in log for log in logs), "the fetch step's own log was read"
            for text in (json.dumps(msvc["status"]), json.dumps(events), json.dumps([p["status"] for p in pods["items"]]),
                         *logs):
                assert password not in text and signature not in text, text[:2000]
        else:  # bytes that match their digest but are no ONNX model: the server exits, again and again,
            # saying why
            bad = model["path"].parent / "corrupt.onnx"
            bad.write_bytes(b"this is not an onnx model\n" * 100)
            digest = hashlib.sha256(bad.read_bytes()).hexdigest()
            _problem_service(cluster, name, {**entry, "uri": model["url"].replace("journey-mlp", "corrupt"),
                                             "sha256": digest})
            # the server's own termination line names the failure, more precise than CrashLoop
            ready = _not_ready_because(cluster, name, "ModelLoadFailed", timeout=180)
            assert "ONNX Runtime cannot load the model" in ready["message"], ready
            pods = cluster.api("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=modelship.dev/modelservice={name}")
            restarts = [cs["restartCount"] for p in pods["items"] for cs in p["status"].get("containerStatuses") or []]
            assert restarts and max(restarts) >= 1, pods
    finally:
        cluster.kubectl("delete", "msvc", name, "-n", NAMESPACE, "--wait=true", "--timeout=90s", check=False)
