"""Specs the API server must refuse, each with the field its message must name.

Shared by the unit test (pydantic refuses them the same way, for `modelship render`) and the
cluster test (kube-apiserver refuses them through the CRD's schema and CEL rules).
"""

from __future__ import annotations

import copy
from typing import Any

SHA = "0123456789abcdef" * 4
VALID: dict[str, Any] = {"model": {"uri": "https://models.example.com/m.onnx", "sha256": SHA}}


def _with(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(VALID)
    for dotted, value in changes.items():
        node = spec
        parts = dotted.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return spec


# (id, spec, field the message must name, words the message must contain)
INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    ("uri-scheme", _with(model__uri="ftp://h/m.onnx"), "spec.model.uri", "must be https://host/path"),
    ("uri-no-path", _with(model__uri="https://models.example.com"), "spec.model.uri", "https://host/path"),
    ("sha256-short", _with(model__sha256="abc"), "spec.model.sha256", "64 hexadecimal characters"),
    ("sha256-not-hex", _with(model__sha256="z" * 64), "spec.model.sha256", "64 hexadecimal characters"),
    ("no-model", {"runtime": "triton"}, "spec.model", "Required"),
    ("runtime-unknown", _with(runtime="tensorflow"), "spec.runtime", "onnxruntime"),
    ("autoscaling-bounds", _with(autoscaling={"minReplicas": 5, "maxReplicas": 2}),
     "spec.autoscaling.minReplicas", "must not exceed spec.autoscaling.maxReplicas"),
    ("triton-settings-on-onnxruntime", _with(triton={"instanceCount": 2}), "spec.triton", "applies only to runtime triton"),
    ("onnxruntime-settings-on-triton", _with(runtime="triton", onnxruntime={"intraOpThreads": 2}),
     "spec.onnxruntime", "applies only to runtime onnxruntime"),
    ("tensorrt-without-gpu", _with(runtime="triton", triton={"tensorrt": True}), "spec.triton.tensorrt", "needs a GPU"),
    ("onnxruntime-tensorrt-without-gpu", _with(onnxruntime={"tensorrt": True}), "spec.onnxruntime.tensorrt",
     "needs a GPU"),
    ("mig-without-count", _with(resources={"gpu": {"migProfile": "1g.10gb"}}), "spec.resources.gpu.migProfile",
     "count of at least 1"),
    ("mig-profile-format", _with(resources={"gpu": {"count": 1, "migProfile": "big"}}), "spec.resources.gpu.migProfile",
     "must look like 1g.10gb"),
    ("product-without-count", _with(resources={"gpu": {"product": "NVIDIA-L4"}}), "spec.resources.gpu.product",
     "count of at least 1"),
    ("gpu-count-too-high", _with(resources={"gpu": {"count": 17}}), "spec.resources.gpu.count", "16"),
    ("cpu-not-a-quantity", _with(resources={"cpu": "lots"}), "spec.resources.cpu", ""),
    ("preferred-batch-above-max", _with(batching={"maxBatchSize": 8, "preferredBatchSizes": [4, 16]}),
     "spec.batching.preferredBatchSizes", "at most spec.batching.maxBatchSize"),
    ("grace-not-above-prestop", _with(rollout={"preStopDelaySeconds": 30, "terminationGracePeriodSeconds": 30}),
     "spec.rollout.terminationGracePeriodSeconds", "must exceed spec.rollout.preStopDelaySeconds"),
    ("canary-weight-100", _with(rollout={"strategy": "Canary", "canary": {"steps": [{"weight": 100}]}}),
     "spec.rollout.canary.steps", "99"),
    ("canary-strategy", _with(rollout={"strategy": "BlueGreen"}), "spec.rollout.strategy", "Canary"),
    ("builtin-autoscaling-without-slo", _with(autoscaling={"enabled": True}), "spec.slo", "required"),
    ("replicas-negative", _with(replicas=-1), "spec.replicas", "0"),
    ("pull-policy", _with(images={"pullPolicy": "Sometimes"}), "spec.images.pullPolicy", "IfNotPresent"),
    ("cosine-bound-above-one", _with(optimization={"accuracy": {"metric": "cosine", "mean": 1.5}}),
     "spec.optimization.accuracy.mean", "between 0 and 1"),
    ("worst-stricter-than-mean", _with(optimization={"accuracy": {"metric": "maxAbs", "mean": 0.1, "worst": 0.01}}),
     "spec.optimization.accuracy.worst", "must not be stricter than"),
    ("failure-policy", _with(optimization={"failurePolicy": "Retry"}), "spec.optimization.failurePolicy",
     "FallbackToBaseline"),
    ("dataset-uri-scheme", _with(optimization={"dataset": {"uri": "ftp://h/val.npz", "sha256": SHA}}),
     "spec.optimization.dataset.uri", "must be https://host/path"),
    ("dataset-uri-no-path", _with(optimization={"dataset": {"uri": "s3://bucket-1", "sha256": SHA}}),
     "spec.optimization.dataset.uri", "s3://bucket/key"),
    ("dataset-sha256-short", _with(optimization={"dataset": {"uri": "https://h/val.npz", "sha256": "abc"}}),
     "spec.optimization.dataset.sha256", "64 hexadecimal characters"),
    ("inputs-value-and-range", _with(model__inputs=[{"name": "sr", "value": 16000, "range": [0, 1]}]),
     "spec.model.inputs[sr]", "value and range exclude each other"),
    ("inputs-nothing-declared", _with(model__inputs=[{"name": "x"}]), "spec.model.inputs[x]", "declares nothing"),
    ("inputs-range-reversed", _with(model__inputs=[{"name": "ids", "range": [10, 1]}]), "spec.model.inputs[ids].range",
     "low < high"),
    ("inputs-range-empty", _with(model__inputs=[{"name": "ids", "range": [3, 3]}]), "spec.model.inputs[ids].range",
     "low < high"),
    ("inputs-min-above-shape", _with(model__inputs=[{"name": "x", "shape": [1, 3, 48, 160],
                                                     "minShape": [1, 3, 48, 200]}]),
     "spec.model.inputs[x].minShape", "must be <= shape in every dimension"),
    ("inputs-max-rank", _with(model__inputs=[{"name": "x", "shape": [1, 3, 48, 160], "maxShape": [1, 3, 48]}]),
     "spec.model.inputs[x].maxShape", "dimensions"),
    ("inputs-min-above-max", _with(model__inputs=[{"name": "x", "minShape": [1, 3, 48, 900],
                                                   "maxShape": [8, 3, 48, 800]}]),
     "spec.model.inputs[x].minShape", "be <= maxShape in every dimension"),
    ("inputs-twice", _with(model__inputs=[{"name": "x", "value": 1}, {"name": "x", "value": 2}]),
     "spec.model.inputs", ""),
    ("inputs-zero-dim", _with(model__inputs=[{"name": "x", "shape": [1, 0]}]), "spec.model.inputs[0].shape[1]", ""),
    ("dataset-sha256-missing", _with(optimization={"dataset": {"uri": "https://h/val.npz"}}),
     "spec.optimization.dataset.sha256", "Required"),
    # -- spec.auth and spec.tls (docs/security.md) --
    ("auth-without-a-source", _with(auth={"enabled": True}), "spec.auth",
     "needs spec.auth.serviceAccounts or spec.auth.apiKeys"),
    ("auth-on-triton", _with(runtime="triton", auth={"enabled": True, "apiKeys": {"secretRef": {"name": "k"}}}),
     "spec.auth", "applies only to runtime onnxruntime"),
    ("tls-on-triton", _with(runtime="triton", tls={"secretRef": {"name": "t"}}), "spec.tls",
     "applies only to runtime onnxruntime"),
    ("tls-without-secret", _with(tls={}), "spec.tls.secretRef", "Required"),
    ("auth-allowed-not-namespaced", _with(auth={"enabled": True, "serviceAccounts": {"allowed": ["caller"]}}),
     "spec.auth.serviceAccounts.allowed[0]", ""),
    ("monitoring-on-triton", _with(runtime="triton", monitoring={"enabled": True}), "spec.monitoring",
     "needs runtime onnxruntime"),
    ("monitoring-reference-without-dataset", _with(monitoring={"enabled": True, "reference": {"fromDataset": True}}),
     "spec.monitoring.reference.fromDataset", "needs spec.optimization.dataset"),
    ("monitoring-quality-without-bound", _with(monitoring={"quality": {"metric": "accuracy"}}),
     "spec.monitoring.quality", "needs minimum"),
    ("monitoring-quality-minimum-for-rmse", _with(monitoring={"quality": {"metric": "rmse", "minimum": 0.5}}),
     "spec.monitoring.quality", "needs maximum"),
    ("monitoring-quality-metric", _with(monitoring={"quality": {"metric": "auc", "minimum": 0.5}}),
     "spec.monitoring.quality.metric", "accuracy"),
    ("monitoring-capture-scheme", _with(monitoring={"capture": {"sink": "ftp://host/records"}}),
     "spec.monitoring.capture.sink", ""),
    ("monitoring-capture-leaves-claim", _with(monitoring={"capture": {"sink": "pvc://records/../other"}}),
     "spec.monitoring.capture.sink", "must stay inside its claim"),
    ("monitoring-window-too-small", _with(monitoring={"window": 5}), "spec.monitoring.window", "100"),
    # spec.tracing (docs/tracing.md)
    ("tracing-grpc-on-triton", _with(runtime="triton", tracing={"enabled": True, "protocol": "grpc"}),
     "spec.tracing.protocol", "must be http/protobuf for runtime triton"),
    ("tracing-ratio-above-one", _with(tracing={"enabled": True, "samplingRatio": 1.5}), "spec.tracing.samplingRatio", ""),
    ("tracing-protocol", _with(tracing={"protocol": "thrift"}), "spec.tracing.protocol", "grpc"),
    ("tracing-endpoint-spaces", _with(tracing={"endpoint": "otel collector:4317"}), "spec.tracing.endpoint", ""),
]


def manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": name}, "spec": spec}
