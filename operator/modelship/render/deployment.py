"""The Deployment that serves the model: an init step that fetches and verifies the model,
then either modelship's server (runtime onnxruntime) or NVIDIA Triton (runtime triton).

Choices, and why:
- maxUnavailable 0 with a surge: a rollout never lowers serving capacity.
- preStop sleep + a longer grace period: endpoints controllers and kube-proxy take seconds to
  drop a terminating pod; it keeps serving until they have. The native `sleep` action needs
  no shell in the image.
- startup, liveness and readiness probes on the KServe v2 health endpoints, so a pod is in
  the Service only once the model is loaded.
- the "restricted" Pod Security Standard: non-root, no privilege escalation, all
  capabilities dropped, RuntimeDefault seccomp; the API token is not mounted.
- no CPU limit: CFS throttling shows up as tail latency; memory and GPUs are limited.
- `.spec.replicas` is left out when an autoscaler owns it, so server-side apply never
  resets what the autoscaler set.
"""

from __future__ import annotations

from typing import Any

from modelship.api.v1alpha1 import ModelService
from modelship.render import names
from modelship.render.artifact import ModelArtifact
from modelship.modeluri import parse as parse_uri

MODEL_REPOSITORY = "/models"
CONFIG_MOUNT = "/etc/modelship/model-config"
PVC_MOUNT = "/mnt/model-source"
RUN_AS = 1000  # the non-root user of both modelship's server image and NGC's Triton image


def render_deployment(msvc: ModelService, *, artifact: ModelArtifact, config_hash: str) -> dict[str, Any]:
    spec = msvc.spec
    name = msvc.metadata.name
    labels = names.labels(name, spec.runtime)
    model_dir = f"{MODEL_REPOSITORY}/{spec.model.name}"
    source = parse_uri(artifact.uri)

    volumes: list[dict[str, Any]] = [
        {"name": "model-repository", "emptyDir": {}},
        {"name": "model-config", "configMap": {"name": names.model_config(name)}},
        {"name": "tmp", "emptyDir": {}},
    ]
    fetch_mounts = [
        {"name": "model-repository", "mountPath": MODEL_REPOSITORY},
        {"name": "model-config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if source.scheme == "pvc":
        volumes.append(
            {"name": "model-source", "persistentVolumeClaim": {"claimName": source.location, "readOnly": True}}
        )
        fetch_mounts.append({"name": "model-source", "mountPath": PVC_MOUNT, "readOnly": True})

    fetch = {
        "name": "fetch-model",
        "image": spec.images.server,
        "imagePullPolicy": spec.images.pull_policy,
        "command": ["python", "-m", "modelship.fetch"],
        "args": [
            f"--uri={artifact.uri}",
            f"--sha256={artifact.sha256}",
            f"--dest={model_dir}/1/model.onnx",
            f"--pvc-mount={PVC_MOUNT}",
            f"--copy={CONFIG_MOUNT}/config.pbtxt:{model_dir}/config.pbtxt",
        ],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": _container_security(read_only_root=True),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": fetch_mounts,
    }
    if spec.model.credentials is not None:
        fetch["envFrom"] = [{"secretRef": {"name": spec.model.credentials.secret_name}}]

    server = _server_container(msvc)
    server["volumeMounts"] = [
        {"name": "model-repository", "mountPath": MODEL_REPOSITORY, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if spec.runtime == "triton":
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}})
        server["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})

    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": spec.rollout.termination_grace_period_seconds,
        "initContainers": [fetch],
        "containers": [server],
        "volumes": volumes,
    }
    pod_spec.update(_scheduling(msvc))
    if spec.images.pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in spec.images.pull_secrets]

    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": names.selector(name)},
        "revisionHistoryLimit": 3,
        "progressDeadlineSeconds": spec.rollout.progress_deadline_seconds,
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": spec.rollout.max_surge},
        },
        "template": {
            "metadata": {
                "labels": labels,
                "annotations": {names.CONFIG_HASH_ANNOTATION: config_hash},
            },
            "spec": pod_spec,
        },
    }
    if not spec.autoscaler_owns_replicas:
        deployment_spec["replicas"] = spec.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": names.deployment(name), "namespace": msvc.metadata.namespace, "labels": labels},
        "spec": deployment_spec,
    }


def _server_container(msvc: ModelService) -> dict[str, Any]:
    spec = msvc.spec
    if spec.runtime == "triton":
        image = spec.images.triton
        command = [
            "tritonserver",
            f"--model-repository={MODEL_REPOSITORY}",
            f"--http-port={names.HTTP_PORT}",
            f"--grpc-port={names.GRPC_PORT}",
            f"--metrics-port={names.METRICS_PORT}",
            "--model-control-mode=none",
            "--exit-on-error=true",
        ]
    else:
        image = spec.images.server
        command = [
            "modelship-server",
            "--model-repository", MODEL_REPOSITORY,
            "--http-port", str(names.HTTP_PORT),
            "--grpc-port", str(names.GRPC_PORT),
            "--metrics-port", str(names.METRICS_PORT),
        ]
    requests: dict[str, Any] = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
    limits: dict[str, Any] = {"memory": spec.resources.memory}
    gpu = spec.resources.gpu
    if gpu.resource_name:
        requests[gpu.resource_name] = gpu.count
        limits[gpu.resource_name] = gpu.count
    container: dict[str, Any] = {
        "name": "server",
        "image": image,
        "imagePullPolicy": spec.images.pull_policy,
        "command": command,
        "ports": [
            {"name": "http", "containerPort": names.HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": names.GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": names.METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": {"requests": requests, "limits": limits},
        "startupProbe": _probe("/v2/health/live", period=2, failures=150),  # up to 5 min to load
        "livenessProbe": _probe("/v2/health/live", period=10, failures=3),
        "readinessProbe": _probe("/v2/health/ready", period=5, failures=2),
        # Triton's NGC image writes outside /tmp; modelship's server does not.
        "securityContext": _container_security(read_only_root=spec.runtime != "triton"),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.rollout.pre_stop_delay_seconds > 0:
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": spec.rollout.pre_stop_delay_seconds}}}
    return container


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _container_security(*, read_only_root: bool) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": read_only_root,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _scheduling(msvc: ModelService) -> dict[str, Any]:
    """nodeSelector, tolerations, affinity and priority; GPU services also pin the product
    and tolerate the usual `nvidia.com/gpu` taint of GPU nodes."""
    spec = msvc.spec
    out: dict[str, Any] = {}
    node_selector = dict(spec.scheduling.node_selector or {})
    tolerations = [t.wire() for t in spec.scheduling.tolerations or []]
    gpu = spec.resources.gpu
    if gpu.count > 0:
        if gpu.product:
            node_selector["nvidia.com/gpu.product"] = gpu.product
        gpu_toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        if gpu_toleration not in tolerations:
            tolerations.append(gpu_toleration)
    if node_selector:
        out["nodeSelector"] = node_selector
    if tolerations:
        out["tolerations"] = tolerations
    if spec.scheduling.affinity:
        out["affinity"] = spec.scheduling.affinity
    if spec.scheduling.priority_class_name:
        out["priorityClassName"] = spec.scheduling.priority_class_name
    return out
