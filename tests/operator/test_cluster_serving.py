"""The operator on the real local control plane (kube-apiserver, scheduler, controller
manager; kwok plays the kubelets, so pods of any image become Running and Ready)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pytest

from kube_helpers import (
    OperatorProcess, apply, children, condition, get, is_ready, resource_versions, wait_for,
)
from modelship.autoscale.monitoring import DEFAULT_INTERVAL_SECONDS as MONITOR_INTERVAL_S
from msvc_samples import EXAMPLES, SHA, example

pytestmark = pytest.mark.cluster


def _msvc(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    return get(cluster, "msvc", "-n", namespace, name)


def _events(cluster: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    items = get(cluster, "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")["items"]
    return sorted(items, key=lambda e: (e.get("firstTimestamp") or "", e["metadata"]["name"]))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_each_example_becomes_ready_with_owned_children(cluster: Any, operator: OperatorProcess, namespace: str,
                                                        path: Any) -> None:
    manifest = example(path.name)
    name = manifest["metadata"]["name"]
    apply(cluster, manifest, namespace)
    cluster.kubectl("wait", "--for=condition=Ready", f"msvc/{name}", "-n", namespace, "--timeout=90s", timeout=100)
    msvc = _msvc(cluster, namespace, name)
    assert is_ready(msvc), msvc["status"]
    assert condition(msvc, "Progressing")["status"] == "False"
    assert condition(msvc, "Degraded")["status"] == "False"
    status = msvc["status"]
    assert status["endpoints"] == {"http": f"http://{name}.{namespace}.svc:8000", "grpc": f"{name}.{namespace}.svc:8001"}
    assert status["replicaSummary"] == f"{status['readyReplicas']}/{status['readyReplicas']}"
    owned = children(cluster, namespace, name)
    expected = {"deployments", "services", "configmaps", "poddisruptionbudgets"}
    if manifest["spec"].get("networkPolicy", {}).get("enabled"):
        expected.add("networkpolicies")
    assert {k for k, v in owned.items() if v} == expected
    for kind, items in owned.items():
        assert len(items) == (1 if kind in expected else 0), kind
        for item in items:
            refs = item["metadata"]["ownerReferences"]
            assert refs == [{"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService", "name": name,
                             "uid": msvc["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
            full = get(cluster, kind, "-n", namespace, item["metadata"]["name"], "--show-managed-fields")
            managers = {m["manager"] for m in full["metadata"]["managedFields"] if m["operation"] == "Apply"}
            assert managers == {"modelship"}, (kind, managers)
    reasons = [e["reason"] for e in _events(cluster, namespace, name)]
    assert "Available" in reasons, reasons


def test_a_spec_change_rolls_the_deployment_and_goes_progressing_then_ready(
        cluster: Any, operator: OperatorProcess, namespace: str) -> None:
    manifest = example("cpu-onnxruntime.yaml")
    apply(cluster, manifest, namespace)
    wait_for(lambda: is_ready(_msvc(cluster, namespace, "resnet50-cpu")), timeout=90, what="first Ready")
    before = get(cluster, "deployment", "-n", namespace, "resnet50-cpu")
    template_before = before["spec"]["template"]

    manifest["spec"]["batching"]["maxBatchSize"] = 32
    with StatusRecorder(cluster, namespace, "resnet50-cpu") as recorder:
        apply(cluster, manifest, namespace)
        msvc = wait_for(lambda: (m := _msvc(cluster, namespace, "resnet50-cpu"))["metadata"]["generation"] == 2
                        and is_ready(m) and m, timeout=90, what="Ready at generation 2")
    assert msvc["status"]["observedGeneration"] == 2
    after = get(cluster, "deployment", "-n", namespace, "resnet50-cpu")
    assert after["spec"]["template"] != template_before
    assert after["metadata"]["uid"] == before["metadata"]["uid"], "rolled in place, not replaced"
    config = get(cluster, "configmap", "-n", namespace, "resnet50-cpu-model-config")
    assert "max_batch_size: 32" in config["data"]["config.pbtxt"]
    replicasets = get(cluster, "replicasets", "-n", namespace, "-l", "modelship.dev/modelservice=resnet50-cpu")["items"]
    assert len(replicasets) == 2 and sorted(rs["spec"]["replicas"] for rs in replicasets) == [0, 2]

    # Every status the API server stored for generation 2, in order: Progressing, then Ready.
    seen = [(ready, progressing) for gen, ready, progressing in recorder.states if gen == 2]
    assert seen[0] == ("False", "True"), recorder.states
    assert seen[-1] == ("True", "False"), recorder.states
    reasons = [e["reason"] for e in _events(cluster, namespace, "resnet50-cpu")]
    assert reasons.count("RolloutInProgress") >= 2 and reasons.count("Available") >= 2, reasons


class StatusRecorder:
    """Watches one ModelService and records (observedGeneration, Ready, Progressing) of each
    version the API server stores, in order (a watch sees every version)."""

    def __init__(self, cluster: Any, namespace: str, name: str) -> None:
        import kubernetes

        self._api = kubernetes.client.CustomObjectsApi(kubernetes.config.new_client_from_config(str(cluster.kubeconfig)))
        self._namespace, self._name = namespace, name
        self.states: list[tuple[int, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()

    def _run(self) -> None:
        import kubernetes

        start = self._api.list_namespaced_custom_object("modelship.dev", "v1alpha1", self._namespace, "modelservices",
                                                       field_selector=f"metadata.name={self._name}")
        version = start["metadata"]["resourceVersion"]
        self._started.set()
        watch = kubernetes.watch.Watch()
        while not self._stop.is_set():
            for event in watch.stream(self._api.list_namespaced_custom_object, "modelship.dev", "v1alpha1",
                                      self._namespace, "modelservices", field_selector=f"metadata.name={self._name}",
                                      resource_version=version, timeout_seconds=2):
                obj = event["object"]
                version = obj["metadata"]["resourceVersion"]
                ready, progressing = condition(obj, "Ready"), condition(obj, "Progressing")
                if ready and progressing:
                    state = (ready.get("observedGeneration"), ready["status"], progressing["status"])
                    if not self.states or self.states[-1] != state:
                        self.states.append(state)

    def __enter__(self) -> StatusRecorder:
        self._thread.start()
        self._started.wait(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)
        self._stop.set()
        self._thread.join(timeout=10)


def test_model_name_is_immutable(cluster: Any, operator: OperatorProcess, namespace: str) -> None:
    manifest = example("cpu-onnxruntime.yaml")
    apply(cluster, manifest, namespace)
    manifest["spec"]["model"]["name"] = "renamed"
    result = cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0
    assert "spec.model.name" in result.stderr and "immutable" in result.stderr


def test_gpu_shortage_is_reported_and_heals_when_a_gpu_node_arrives(
        cluster: Any, operator: OperatorProcess, namespace: str) -> None:
    from modelship.devcluster.nodes import NodeShape

    product = "NVIDIA-H100-80GB-HBM3"
    manifest = {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": "llm"},
        "spec": {"model": {"uri": "https://models.example.com/llm.onnx", "sha256": SHA}, "runtime": "triton",
                 "resources": {"gpu": {"count": 1, "product": product}}},
    }
    apply(cluster, manifest, namespace)

    def short() -> dict[str, Any] | None:
        ready = condition(_msvc(cluster, namespace, "llm"), "Ready")
        return ready if ready and ready["reason"] == "InsufficientGPU" else None

    ready = wait_for(short, timeout=60, what="Ready=False reason InsufficientGPU")
    assert ready["status"] == "False"
    assert f"no node with nvidia.com/gpu.product={product} has 1 nvidia.com/gpu free" in ready["message"]
    warnings = [e for e in _events(cluster, namespace, "llm") if e["type"] == "Warning"]
    assert any(e["reason"] == "InsufficientGPU" for e in warnings)

    node = f"gpu-h100-{uuid.uuid4().hex[:6]}"
    cluster.add_node(NodeShape(node, cpu="32", memory="256Gi", gpus=1, gpu_product=product, gpu_memory_mib=81559))
    try:
        wait_for(lambda: is_ready(_msvc(cluster, namespace, "llm")), timeout=120, what="Ready after the node arrived")
        pods = get(cluster, "pods", "-n", namespace, "-l", "modelship.dev/modelservice=llm")["items"]
        assert [p["spec"]["nodeName"] for p in pods] == [node]
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=60s", check=False)
        cluster.kubectl("delete", "node", node, check=False)


def test_deleting_the_modelservice_leaves_no_child(cluster: Any, operator: OperatorProcess, namespace: str) -> None:
    apply(cluster, example("cpu-onnxruntime.yaml"), namespace)
    wait_for(lambda: is_ready(_msvc(cluster, namespace, "resnet50-cpu")), timeout=90, what="Ready")
    cluster.kubectl("delete", "msvc", "-n", namespace, "resnet50-cpu", "--wait=true", "--timeout=30s")
    left = lambda: {k: len(v) for k, v in children(cluster, namespace, "resnet50-cpu").items() if v} or None  # noqa: E731
    wait_for(lambda: left() is None, timeout=60, what="the garbage collector to remove every child")
    assert not get(cluster, "pods", "-n", namespace, "-l", "modelship.dev/modelservice=resnet50-cpu")["items"] or \
        wait_for(lambda: not get(cluster, "pods", "-n", namespace, "-l",
                                 "modelship.dev/modelservice=resnet50-cpu")["items"], timeout=60, what="pods gone")


def test_turning_the_network_policy_off_removes_it(cluster: Any, operator: OperatorProcess, namespace: str) -> None:
    manifest = example("cpu-onnxruntime.yaml")
    apply(cluster, manifest, namespace)
    wait_for(lambda: children(cluster, namespace, "resnet50-cpu")["networkpolicies"], timeout=60, what="NetworkPolicy")
    manifest["spec"]["networkPolicy"]["enabled"] = False
    apply(cluster, manifest, namespace)
    wait_for(lambda: not children(cluster, namespace, "resnet50-cpu")["networkpolicies"], timeout=60,
             what="NetworkPolicy removed")


def test_after_convergence_sixty_idle_seconds_cause_zero_writes(
        cluster: Any, operator: OperatorProcess, namespace: str) -> None:
    names = []
    for path in EXAMPLES:
        manifest = example(path.name)
        names.append(manifest["metadata"]["name"])
        apply(cluster, manifest, namespace)
    for name in names:
        wait_for(lambda: is_ready(_msvc(cluster, namespace, name)), timeout=90, what=f"{name} Ready")
    # Converged: no write for longer than the slowest loop's tick. Ready is not the end: the
    # monitor's first look at the ready pods (status.monitoring.referenceReadyPods 0/0 -> 0/2)
    # lands up to one monitoring interval after it.
    quiet_s = MONITOR_INTERVAL_S + 2
    before, unchanged_since, deadline = resource_versions(cluster, namespace), time.monotonic(), time.monotonic() + 120
    while time.monotonic() - unchanged_since < quiet_s:
        assert time.monotonic() < deadline, f"still writing {quiet_s} s after Ready, 120 s on"
        time.sleep(1)
        now = resource_versions(cluster, namespace)
        if now != before:
            before, unchanged_since = now, time.monotonic()
    assert len(before) >= 3 + 3 * 4
    audit_size = cluster.audit_log.stat().st_size
    time.sleep(60)
    after = resource_versions(cluster, namespace)
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)}
    with open(cluster.audit_log, "rb") as f:
        f.seek(audit_size)
        writes = [json.loads(line) for line in f if line.strip()]
    # Writes by the operator's ServiceAccount in this namespace (earlier tests' namespaces may
    # still be terminating, and the operator rightly reports on what happens there).
    ours = [w for w in writes if "modelship" in w.get("user", {}).get("username", "")
            and (w.get("objectRef") or {}).get("namespace") == namespace]
    assert ours == [], [(w["verb"], w.get("requestURI")) for w in ours]


def test_the_operator_leaves_replicas_to_an_autoscaler(cluster: Any, operator: OperatorProcess, namespace: str) -> None:
    """With autoscaling on, another field manager (an HPA, KEDA, the builtin autoscaler) owns
    Deployment.spec.replicas; the operator neither resets it nor reports it as drift."""
    manifest = {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": "scaled"},
        "spec": {"model": {"uri": "https://models.example.com/m.onnx", "sha256": SHA}, "replicas": 1,
                 "resources": {"cpu": "10m", "memory": "32Mi"},
                 "autoscaling": {"enabled": True, "engine": "hpa", "minReplicas": 1, "maxReplicas": 5}},
    }
    apply(cluster, manifest, namespace)
    wait_for(lambda: is_ready(_msvc(cluster, namespace, "scaled")), timeout=90, what="Ready")
    cluster.kubectl("scale", "deployment/scaled", "-n", namespace, "--replicas=3")
    msvc = wait_for(lambda: (m := _msvc(cluster, namespace, "scaled"))["status"].get("replicaSummary") == "3/3"
                    and is_ready(m) and m, timeout=90, what="3/3 Ready after the autoscaler scaled")
    assert msvc["status"]["readyReplicas"] == 3
    # a spec change re-applies the Deployment, and still leaves the replicas alone
    manifest["spec"]["batching"] = {"maxBatchSize": 4}
    apply(cluster, manifest, namespace)
    wait_for(lambda: (m := _msvc(cluster, namespace, "scaled"))["metadata"]["generation"] == 2 and is_ready(m),
             timeout=90, what="Ready at generation 2")
    assert get(cluster, "deployment", "-n", namespace, "scaled")["spec"]["replicas"] == 3


def test_a_uri_the_operator_cannot_use_is_reported_and_nothing_is_created(
        cluster: Any, operator: OperatorProcess, namespace: str) -> None:
    """The CRD's CEL rule checks the URI's shape; the operator's parser is stricter (a path of
    only slashes names no file). Such a spec gets Ready=False InvalidModelURI, and no children."""
    manifest = {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": "nofile"},
        "spec": {"model": {"uri": "https://models.example.com//", "sha256": SHA}},
    }
    apply(cluster, manifest, namespace)

    def reported() -> dict[str, Any] | None:
        ready = condition(_msvc(cluster, namespace, "nofile"), "Ready")
        return ready if ready and ready["reason"] == "InvalidModelURI" else None

    ready = wait_for(reported, timeout=60, what="Ready=False InvalidModelURI")
    assert ready["status"] == "False" and "spec.model.uri has no file path" in ready["message"]
    assert not any(children(cluster, namespace, "nofile").values())


def test_without_an_autoscaler_the_spec_owns_replicas(cluster: Any, operator: OperatorProcess, namespace: str) -> None:
    manifest = {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": "fixed"},
        "spec": {"model": {"uri": "https://models.example.com/m.onnx", "sha256": SHA}, "replicas": 2,
                 "resources": {"cpu": "10m", "memory": "32Mi"}},
    }
    apply(cluster, manifest, namespace)
    wait_for(lambda: is_ready(_msvc(cluster, namespace, "fixed")), timeout=90, what="Ready")
    cluster.kubectl("scale", "deployment/fixed", "-n", namespace, "--replicas=4")
    wait_for(lambda: get(cluster, "deployment", "-n", namespace, "fixed")["spec"]["replicas"] == 2, timeout=60,
             what="the operator to restore spec.replicas")
    wait_for(lambda: (m := _msvc(cluster, namespace, "fixed"))["status"].get("replicaSummary") == "2/2" and is_ready(m),
             timeout=90, what="2/2 Ready")
