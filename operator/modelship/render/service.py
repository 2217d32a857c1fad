"""The Service in front of the pods: HTTP 8000, gRPC 8001, metrics 8002 (Triton's ports)."""

from __future__ import annotations

from typing import Any

from modelship.api.v1alpha1 import ModelService
from modelship.render import names


def render_service(msvc: ModelService) -> dict[str, Any]:
    name = msvc.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": names.service(name),
            "namespace": msvc.metadata.namespace,
            "labels": names.labels(name, msvc.spec.runtime),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": names.selector(name),
            "ports": [
                {"name": "http", "port": names.HTTP_PORT, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"},
                {"name": "grpc", "port": names.GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
                {"name": "metrics", "port": names.METRICS_PORT, "targetPort": "metrics", "protocol": "TCP", "appProtocol": "http"},
            ],
        },
    }
