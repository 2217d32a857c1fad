"""Render: spec in, the exact objects out. Pure, so plain table tests."""

from __future__ import annotations

from typing import Any

import pytest

from modelship.api.v1alpha1 import ModelService
from modelship.render import desired_hash, names, render_children
from msvc_samples import SHA, body, example


def _render(b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in render_children(ModelService.from_body(b)).objects}


def _pod(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return objs["Deployment"]["spec"]["template"]["spec"]


def assert_restricted(pod: dict[str, Any]) -> None:
    """The checks of the "restricted" Pod Security Standard (v1.35) that a pod spec decides."""
    psc = pod.get("securityContext", {})
    assert psc.get("seccompProfile", {}).get("type") in ("RuntimeDefault", "Localhost")
    for volume in pod.get("volumes", []):
        allowed = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
        assert set(volume) - {"name"} <= allowed, volume
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    for container in pod["containers"] + pod.get("initContainers", []):
        sc = container.get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False, container["name"]
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], container["name"]
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, container["name"]
        assert not sc.get("privileged"), container["name"]
        assert sc.get("runAsUser", psc.get("runAsUser")) != 0
        for port in container.get("ports", []):
            assert "hostPort" not in port


def test_cpu_onnxruntime_example_renders_the_server_with_probes_and_safe_rollouts() -> None:
    b = example("cpu-onnxruntime.yaml")
    b["metadata"].update(uid="u1", namespace="ml")
    objs = _render(b)
    assert sorted(objs) == ["ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "Service"]
    dep = objs["Deployment"]
    assert dep["metadata"]["name"] == "resnet50-cpu" and dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}}
    pod = _pod(objs)
    server = pod["containers"][0]
    assert server["image"] == "ghcr.io/modelship/modelship-server:0.1.0"
    assert server["command"] == [
        "modelship-server", "--model-repository", "/models",
        "--http-port", "8000", "--grpc-port", "8001", "--metrics-port", "8002",
        "--termination-log", "/dev/termination-log",
    ]
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert server["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert server["lifecycle"] == {"preStop": {"sleep": {"seconds": 10}}}
    assert pod["terminationGracePeriodSeconds"] == 45
    assert server["resources"] == {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}
    fetch = pod["initContainers"][0]
    assert fetch["command"] == ["python", "-m", "modelship.fetch"]
    assert f"--sha256={b['spec']['model']['sha256']}" in fetch["args"]
    assert "--dest=/models/resnet50/1/model.onnx" in fetch["args"]
    # the fetch refuses more than one .onnx file can hold; the repository's emptyDir is bounded
    assert "--max-bytes=2147483648" in fetch["args"]
    assert {"name": "model-repository", "emptyDir": {"sizeLimit": "8Gi"}} in pod["volumes"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert_restricted(pod)


def test_every_child_has_a_fixed_name_labels_and_a_controller_owner_reference() -> None:
    objs = _render(body("svc", spec={"model": {"uri": "https://h/m.onnx", "sha256": SHA}, "networkPolicy": {"enabled": True}}))
    for kind, obj in objs.items():
        meta = obj["metadata"]
        assert meta["namespace"] == "ns"
        assert meta["name"] == ("svc-model-config" if kind == "ConfigMap" else "svc")
        assert meta["labels"][names.SERVICE_LABEL] == "svc"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "modelship"
        assert meta["ownerReferences"] == [{
            "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService", "name": "svc",
            "uid": "uid-1", "controller": True, "blockOwnerDeletion": True,
        }]
        assert meta["annotations"][names.DESIRED_HASH_ANNOTATION] == desired_hash(obj)


def test_service_exposes_http_grpc_and_metrics() -> None:
    svc = _render(body())["Service"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
        ("http", 8000, "http"), ("grpc", 8001, "grpc"), ("metrics", 8002, "metrics"),
    ]
    assert svc["spec"]["selector"] == {names.SERVICE_LABEL: "svc"}


def test_gpu_triton_example_requests_gpus_pins_the_product_and_tolerates_the_gpu_taint() -> None:
    objs = _render(example("gpu-triton.yaml"))
    pod = _pod(objs)
    server = pod["containers"][0]
    assert server["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert server["command"][0] == "tritonserver" and "--model-repository=/models" in server["command"]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"} in pod["tolerations"]
    assert "replicas" not in objs["Deployment"]["spec"], "autoscaling is on: the autoscaler owns replicas"
    assert pod["initContainers"][0]["envFrom"] == [{"secretRef": {"name": "model-store"}}]
    assert_restricted(pod)


def test_mig_example_requests_the_mig_profile_resource() -> None:
    pod = _pod(_render(example("mig-triton.yaml")))
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/mig-1g.10gb"] == 1 and "nvidia.com/gpu" not in limits
    assert "model-source" not in {v["name"] for v in pod["volumes"]}


def test_a_pvc_uri_mounts_the_claim_read_only_into_the_fetch_step_only() -> None:
    pod = _pod(_render(body(spec={"model": {"uri": "pvc://model-store/distilbert/model.onnx", "sha256": SHA}})))
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-source"] == {"name": "model-source", "persistentVolumeClaim": {"claimName": "model-store", "readOnly": True}}
    fetch, server = pod["initContainers"][0], pod["containers"][0]
    assert "--uri=pvc://model-store/distilbert/model.onnx" in fetch["args"]
    assert {"name": "model-source", "mountPath": "/mnt/model-source", "readOnly": True} in fetch["volumeMounts"]
    assert "model-source" not in {m["name"] for m in server["volumeMounts"]}


def test_network_policy_is_absent_unless_enabled_and_listed_for_removal() -> None:
    rendered = render_children(ModelService.from_body(body()))
    assert "NetworkPolicy" not in {o["kind"] for o in rendered.objects}
    # (the per-track Services of a Canary's gatewayRef are listed too: they go if an earlier spec had them)
    assert [(r.kind, r.name) for r in rendered.absent] == [
        ("NetworkPolicy", "svc"), ("Service", "svc-stable"), ("Service", "svc-canary")]


def test_network_policy_defaults_to_same_namespace_for_serving_and_anyone_for_metrics() -> None:
    spec = {"model": {"uri": "https://h/m.onnx", "sha256": SHA}, "networkPolicy": {
        "enabled": True, "allowMetricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]}}
    np = _render(body(spec=spec))["NetworkPolicy"]
    serving, metrics = np["spec"]["ingress"]
    assert serving["from"] == [{"podSelector": {}}]
    assert [p["port"] for p in serving["ports"]] == [8000, 8001]
    assert metrics == {"ports": [{"protocol": "TCP", "port": 8002}],
                       "from": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]}


def test_pdb_never_blocks_drains_on_unhealthy_pods() -> None:
    pdb = _render(body())["PodDisruptionBudget"]
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": {names.SERVICE_LABEL: "svc"}},
                           "unhealthyPodEvictionPolicy": "AlwaysAllow"}


def test_render_is_deterministic_and_hashes_follow_the_spec() -> None:
    first, second = _render(body()), _render(body())
    assert first == second
    changed = body()
    changed["spec"]["batching"] = {"maxBatchSize": 32}
    third = _render(changed)
    # a batching change changes config.pbtxt, hence the pod template: the pods roll
    assert third["ConfigMap"]["data"] != first["ConfigMap"]["data"]
    key = names.CONFIG_HASH_ANNOTATION
    assert _pod_annotations(third)[key] != _pod_annotations(first)[key]
    assert third["Deployment"]["metadata"]["annotations"] != first["Deployment"]["metadata"]["annotations"]
    assert third["Service"] == first["Service"]


def _pod_annotations(objs: dict[str, dict[str, Any]]) -> dict[str, str]:
    return objs["Deployment"]["spec"]["template"]["metadata"]["annotations"]


@pytest.mark.parametrize(("pre_stop", "expect"), [(0, None), (5, {"preStop": {"sleep": {"seconds": 5}}})])
def test_pre_stop_delay(pre_stop: int, expect: Any) -> None:
    spec = {"model": {"uri": "https://h/m.onnx", "sha256": SHA}, "rollout": {"preStopDelaySeconds": pre_stop}}
    assert _pod(_render(body(spec=spec)))["containers"][0].get("lifecycle") == expect


def test_without_uid_there_is_no_owner_reference() -> None:
    objs = _render(body(uid=None))
    assert all("ownerReferences" not in o["metadata"] for o in objs.values())
