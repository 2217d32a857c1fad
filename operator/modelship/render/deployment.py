"""The Deployment that serves the model: an init step that fetches and verifies the model (and a second
one that rebuilds the optimize Job's chosen variant from it, when there is one, after a step that
fetches and verifies the dataset the variant was calibrated on, when it was; and a last one,
`fit-config`, that fits config.pbtxt's batching to that file), then either modelship's server
(runtime onnxruntime) or NVIDIA Triton (runtime triton). The pod parts it shares with the optimize
Job live in `pod`.

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

import hashlib
import json
from typing import Any

from modelship.api.v1alpha1 import ModelService
from modelship.contracts import TENSORRT_CACHE_PATH, TENSORRT_CACHE_VOLUME
from modelship.render import monitoring, names, pod
from modelship.render.artifact import ModelArtifact
from modelship.render.model_config import batching_mode, tensorrt_choice
from modelship.render.pod import MODEL_REPOSITORY
from modelship.render.security import server_security
from modelship.render.tracing import tracing_flags

# With TensorRT on, the server builds its engines before it reports live: up to 20 minutes
# (2 s x 600) instead of 5, enough for a BERT-base-sized model's fp16 engines on one GPU.
TENSORRT_STARTUP_FAILURES = 600
TENSORRT_CACHE_SIZE_LIMIT = "4Gi"
APPLY_VARIANT = "apply-variant"
FIT_CONFIG = "fit-config"
TRITON_WARMUP = "triton-warmup"


def render_deployment(msvc: ModelService, *, artifact: ModelArtifact, config_hash: str) -> dict[str, Any]:
    spec = msvc.spec
    name = msvc.metadata.name
    labels = names.labels(name, spec.runtime)
    model_dir = f"{MODEL_REPOSITORY}/{spec.model.name}"

    volumes = pod.base_volumes(msvc)
    volumes.insert(1, {"name": "model-config", "configMap": {"name": names.model_config(name)}})
    init = [pod.fetch_container(msvc, uri=artifact.uri, sha256=artifact.sha256,
                                config_copy=f"{model_dir}/config.pbtxt")]
    if artifact.dataset is not None:  # only a calibrated variant's rebuild reads it
        init.append(pod.fetch_dataset_container(msvc, uri=artifact.dataset.uri, sha256=artifact.dataset.sha256,
                                                dest=artifact.dataset.path))
        volumes += pod.dataset_volumes(msvc, artifact.dataset.uri)
    init += monitoring.fetch_dataset(msvc, artifact)  # the reference's dataset, unless fetched above
    volumes += monitoring.volumes(msvc, artifact)
    if artifact.apply_args:
        init.append(apply_variant_container(msvc, artifact))
    mode = batching_mode(spec)
    if mode is not None:
        init.append(fit_config_container(msvc, mode))
    if monitoring.reference_dataset(msvc):  # after apply-variant: checked against the file that serves
        init.append(monitoring.build_reference_container(msvc, artifact))
    if spec.runtime == "triton" and spec.model.inputs:  # last: its dims follow the fitted batching
        init.append(triton_warmup_container(msvc))

    server = _server_container(msvc)
    server["volumeMounts"] = [
        {"name": "model-repository", "mountPath": MODEL_REPOSITORY, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        *monitoring.server_mounts(msvc),
    ]
    sec = server_security(msvc)  # spec.auth and spec.tls (docs/security.md)
    server["command"] += sec.args
    server["volumeMounts"] += sec.mounts
    volumes += sec.volumes
    if sec.probe_scheme != "HTTP":  # left out otherwise: services without TLS render as before
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            server[kind]["httpGet"]["scheme"] = sec.probe_scheme
    if env_from := monitoring.server_env_from(msvc):
        server["envFrom"] = env_from
    if env := monitoring.server_env(msvc):
        server["env"] = env
    if spec.runtime == "triton":
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}})
        server["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
    if tensorrt_choice(spec, artifact.tensorrt).precision is not None:
        # Engines are built when the model loads (minutes for a large model): an emptyDir keeps
        # them across container restarts of this pod (not across pods: each node's GPU builds its own).
        volumes.append({"name": TENSORRT_CACHE_VOLUME, "emptyDir": {"sizeLimit": TENSORRT_CACHE_SIZE_LIMIT}})
        server["volumeMounts"].append({"name": TENSORRT_CACHE_VOLUME, "mountPath": TENSORRT_CACHE_PATH})
        server["startupProbe"] = _probe("/v2/health/live", period=2, failures=TENSORRT_STARTUP_FAILURES)

    pod_spec = pod.base_pod_spec(msvc)
    if sec.service_account is not None:
        pod_spec["serviceAccountName"] = sec.service_account
    pod_spec.update({
        "terminationGracePeriodSeconds": spec.rollout.termination_grace_period_seconds,
        "initContainers": init,
        "containers": [server],
        "volumes": volumes,
    })

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
                "labels": {**labels, **_track_label(msvc)},
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
        "metadata": {
            "name": names.deployment(name), "namespace": msvc.metadata.namespace, "labels": labels,
            "annotations": {names.VARIANT_ANNOTATION: artifact.variant,
                            names.TEMPLATE_HASH_ANNOTATION: template_hash(deployment_spec["template"])},
        },
        "spec": deployment_spec,
    }


def _track_label(msvc: ModelService) -> dict[str, str]:
    """Stable's pods carry `track: stable` only where a Canary has a gatewayRef: its HTTPRoute
    needs a Service of stable's pods alone. Elsewhere none, so a RollingUpdate service's pods
    never restart over it (an operator upgrade renders their template as before)."""
    rollout = msvc.spec.rollout
    if rollout.strategy == "Canary" and rollout.canary_settings.gateway_ref is not None:
        return {names.TRACK_LABEL: names.STABLE_TRACK}
    return {}


def template_hash(template: dict[str, Any]) -> str:
    """The pod template's revision: a change here is a new version of what serves (a canary's
    unit); a change of replicas or of the rollout's knobs is not, and neither is the track label
    (which track a pod belongs to says nothing of what it serves: adding `track: stable` rolls
    stable's pods directly, it needs no canary)."""
    template = json.loads(json.dumps(template))
    template["metadata"].get("labels", {}).pop(names.TRACK_LABEL, None)
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def apply_variant_container(msvc: ModelService, artifact: ModelArtifact) -> dict[str, Any]:
    """The init step after fetch-model that rebuilds the chosen variant from the verified
    original and checks its sha256 (contract C2); it replaces model.onnx atomically. Same
    resources as the server: building a variant can take what serving takes, and an init
    step's requests do not add to the pod's."""
    model_dir = f"{MODEL_REPOSITORY}/{msvc.spec.model.name}/1"
    mounts = [
        {"name": "model-repository", "mountPath": MODEL_REPOSITORY},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if artifact.dataset is not None:
        mounts.append(pod.dataset_mount())
    return {
        "name": APPLY_VARIANT,
        "image": msvc.spec.images.server,
        "imagePullPolicy": msvc.spec.images.pull_policy,
        "command": ["modelship", "optimize"],
        "args": [f"--model={model_dir}/model.onnx", f"--output={model_dir}",
                 f"--termination-log={pod.TERMINATION_LOG}", *artifact.apply_args],
        "resources": pod.resources(msvc),
        "securityContext": pod.container_security(read_only_root=True),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }


def triton_warmup_container(msvc: ModelService) -> dict[str, Any]:
    """The init step that gives Triton a `model_warmup` in the declared inputs' shapes: it needs
    each input's data type, which only the model file says (modelship_server/triton_warmup.py)."""
    return {
        "name": TRITON_WARMUP,
        "image": msvc.spec.images.server,
        "imagePullPolicy": msvc.spec.images.pull_policy,
        "command": ["python", "-m", "modelship_server.triton_warmup"],
        "args": [f"--model-dir={MODEL_REPOSITORY}/{msvc.spec.model.name}"],
        "resources": pod.resources(msvc),  # it reads the whole model file, as serving does
        "securityContext": pod.container_security(read_only_root=True),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "model-repository", "mountPath": MODEL_REPOSITORY},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }


def fit_config_container(msvc: ModelService, mode: str) -> dict[str, Any]:
    """The init step that fits config.pbtxt's batching to the model file about to be served
    (after apply-variant, so the variant's file), for either runtime: `auto` turns batching off
    for a model that cannot batch, `required` refuses one (see model_config.batching_mode).
    Its one-line outcome, in the termination message, is how the status learns why batching
    is off. It opens the model in ONNX Runtime (graph optimizations off), so it gets the
    server's resources, like apply-variant."""
    model_dir = f"{MODEL_REPOSITORY}/{msvc.spec.model.name}"
    return {
        "name": FIT_CONFIG,
        "image": msvc.spec.images.server,
        "imagePullPolicy": msvc.spec.images.pull_policy,
        "command": ["python", "-m", "modelship_server.fit_config"],
        "args": [f"--config={model_dir}/config.pbtxt", f"--model={model_dir}/1/model.onnx",
                 f"--batching={mode}", f"--termination-log={pod.TERMINATION_LOG}"],
        "resources": pod.resources(msvc),
        "securityContext": pod.container_security(read_only_root=True),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "model-repository", "mountPath": MODEL_REPOSITORY},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
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
            "--termination-log", pod.TERMINATION_LOG,  # why a model failed to load, for the status
            *monitoring.server_args(msvc),
        ]
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
        "resources": pod.resources(msvc),
        "startupProbe": _probe("/v2/health/live", period=2, failures=150),  # up to 5 min to load
        "livenessProbe": _probe("/v2/health/live", period=10, failures=3),
        "readinessProbe": _probe("/v2/health/ready", period=5, failures=2),
        # Triton's NGC image writes outside /tmp; modelship's server does not.
        "securityContext": pod.container_security(read_only_root=spec.runtime != "triton"),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    trace_flags, trace_env = tracing_flags(msvc)
    if trace_flags:
        command += trace_flags
        container["env"] = [*container.get("env", []), *trace_env]
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
